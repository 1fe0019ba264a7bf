"""The image's entry point: the console script the Dockerfile names imports and answers --help
without importing torch; a bad config exits 2 with a one-line message."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer
REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    dockerfile = (REPO / "trainer_image" / "Dockerfile").read_text()
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', dockerfile, re.M)
    assert entry and entry.group(1) == "kubetune-trainer"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["kubetune-trainer"].split(":")
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))
    assert "USER 65532" in dockerfile


def test_help_is_instant_and_torch_free() -> None:
    code = ("import sys\nfrom kubetune_trainer.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported for --help'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "kubetune-trainer" in out.stdout
    out = subprocess.run([sys.executable, "-m", "kubetune_trainer", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--config" in out.stdout


def test_bad_config_exits_2(tmp_path: Path) -> None:
    from kubetune_trainer.main import main

    bad = tmp_path / "config.json"
    bad.write_text('{"apiVersion": "kubetune.io/trainer-config/v1"}')
    assert main(["--config", str(bad)]) == 2
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
