"""The top-level `kubetune` command routes to each command's own parser."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_check_data_through_the_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = ROOT / "examples" / "quickstart" / "data" / "train.jsonl"
    assert main(["check-data", str(good), "--format", "instruction", "--output", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["examples"] >= 200
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    assert main(["check-data", str(bad), "--format", "instruction", "--min-examples", "1"]) == 1
    assert "line 2" in capsys.readouterr().out


def test_dev_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev"]) == 2
    assert "kubetune dev cluster" in capsys.readouterr().err


def test_dev_cluster_is_the_dev_packages_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With kubetune-devcluster installed, `kubetune dev cluster` runs its CLI (`down` on a folder
    with no cluster is a no-op that says so)."""
    assert main(["dev", "cluster", "down", "--dir", str(tmp_path)]) == 0
    assert f"# no cluster state in {tmp_path.resolve()}" in capsys.readouterr().err


def test_dev_cluster_without_the_dev_package_says_how_to_install_it() -> None:
    """In a process where kubetune_devcluster cannot be imported: exit 1, one line, no traceback."""
    code = textwrap.dedent("""
        import sys

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "kubetune_devcluster":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NotInstalled())
        from kubetune.cli import main
        sys.exit(main())
    """)
    proc = subprocess.run([sys.executable, "-c", code, "dev", "cluster", "up"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "kubetune-devcluster" in proc.stderr and "pip install -e cluster" in proc.stderr


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
