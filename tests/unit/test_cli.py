"""The top-level `kubetune` command routes to each command's own parser."""

import json
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


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
