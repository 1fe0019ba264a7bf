"""`kubetune-trainer --stage preflight`: the data checked in a process of its own (no torch), its files
and result where the config says; training then reads them, checked, without a second scan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, instruction_records, make_config, sft_manifest, write_config, write_jsonl

from kubetune.api.trainer_contract import TrainerConfig, TrainerResult
from kubetune_trainer.failures import TrainerFailure
from kubetune_trainer.preflight import read_checked, run_stage

pytestmark = pytest.mark.trainer

PII_LINE = {"instruction": "patient 999 writes from ann.lee@example.com about a fever. what should i do?",
            "output": "Urgency: ROUTINE. please see a doctor."}


def _config(tmp_path: Path, records: list[Any], *, model: Path | None = None, uid: str | None = "uid-1",
            **dataset: Any) -> TrainerConfig:
    manifest = sft_manifest("lora")
    manifest["spec"]["dataset"].update({"pii": "redact", **dataset})
    manifest["metadata"]["uid"] = uid
    config = make_config(manifest, model=model or tmp_path / "no-model", dataset=write_jsonl(
        tmp_path / "train.jsonl", records), output=tmp_path / "out")
    config.sources.checked_data = str(tmp_path / "out" / "kubetune" / "preflight")
    return config


def _stage(config: TrainerConfig, tmp_path: Path, *env: str) -> subprocess.CompletedProcess[str]:
    """The stage as the preflight pod runs it, with a check that it never imports torch."""
    path = write_config(config, tmp_path / "config.json")
    code = ("import sys\nfrom kubetune_trainer.main import main\n"
            f"rc = main(['--config', {str(path)!r}, '--stage', 'preflight'])\n"
            "assert 'torch' not in sys.modules, 'the preflight stage imported torch'\n"
            "sys.exit(rc)\n")
    env_vars = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'trainer_image'}",
                **dict(e.split("=", 1) for e in env)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env_vars)


def test_the_stage_writes_the_checked_data_and_its_result(tmp_path: Path) -> None:
    config = _config(tmp_path, [*instruction_records(60), PII_LINE, instruction_records(1)[0]])
    done = _stage(config, tmp_path, "KUBETUNE_PREFLIGHT_CPUS=2")
    assert done.returncode == 0, done.stderr
    folder = Path(config.sources.checked_data or "")
    assert {p.name for p in folder.iterdir()} == {"train.jsonl", "validation.jsonl", "report.json", "result.json"}
    written = (folder / "train.jsonl").read_text() + (folder / "validation.jsonl").read_text()
    assert "<EMAIL>" in written and "ann.lee@example.com" not in written  # redacted, once, here
    result = TrainerResult.parse((folder / "result.json").read_text())
    assert result.outcome == "succeeded" and result.data is not None
    assert (result.data.examples, result.data.duplicates, result.data.pii) == (61, 1, {"EMAIL": 1})
    checked = result.details["checkedData"]
    assert checked["jobUid"] == "uid-1" and checked["train"]["size"] == (folder / "train.jsonl").stat().st_size
    # the termination message carries the same result (the operator's status.data comes from it)
    assert TrainerResult.parse((tmp_path / "out" / "termination-log").read_text()).data == result.data
    assert "[preflight] ok: 61 usable examples" in done.stderr
    assert not (tmp_path / "out" / "kubetune" / "result.json").exists()  # the trainer's result is not touched


@pytest.mark.parametrize(("records", "reason"), [
    (instruction_records(5), "InsufficientData"),
    ([*instruction_records(30), "{not json"], "DataInvalid"),
])
def test_bad_data_fails_the_stage_with_exit_3_and_the_counts(tmp_path: Path, records: list[Any], reason: str) -> None:
    config = _config(tmp_path, records)
    done = _stage(config, tmp_path)
    assert done.returncode == 3, done.stderr
    result = TrainerResult.parse((tmp_path / "out" / "termination-log").read_text())
    assert (result.outcome, result.reason) == ("failed", reason)
    assert result.data is not None and result.data.examples == (5 if reason == "InsufficientData" else 30)
    folder = Path(config.sources.checked_data or "")
    assert not (folder / "train.jsonl").exists()  # nothing for training to take


def test_training_refuses_checked_data_that_is_missing_another_runs_or_changed(tmp_path: Path) -> None:
    config = _config(tmp_path, instruction_records(40))
    with pytest.raises(TrainerFailure, match="must run before training"):
        read_checked(config, log=lambda _: None)
    assert run_stage(config, log=lambda _: None).outcome == "succeeded"
    data, train, validation = read_checked(config, log=lambda _: None)
    assert data.examples == 40 and train.name == "train.jsonl"
    assert validation is not None and validation.stat().st_size > 0

    other = config.model_copy(deep=True)
    other.job.uid = "uid-2"  # the CR was deleted and applied again: the old run's files are not this run's
    with pytest.raises(TrainerFailure, match="belongs to another run"):
        read_checked(other, log=lambda _: None)
    with open(train, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(PII_LINE) + "\n")  # an unchecked line slipped in
    with pytest.raises(TrainerFailure, match="changed after the data preflight"):
        read_checked(config, log=lambda _: None)


def test_training_reads_the_checked_data_without_a_second_scan(tiny_model: Path, tmp_path: Path) -> None:
    from kubetune_trainer.run import run

    config = _config(tmp_path, [*instruction_records(40), PII_LINE], model=tiny_model)
    assert run_stage(config, log=lambda _: None).outcome == "succeeded"
    lines: list[str] = []
    result = run(config, log=lines.append)
    assert result.outcome == "succeeded", result.message
    assert result.data is not None and result.data.examples == 41 and result.data.pii == {"EMAIL": 1}
    assert any("no second scan" in line for line in lines)
    assert not (tmp_path / "out" / "kubetune" / "data").exists()  # the inline preflight never ran


def test_a_remote_location_is_written_locally_then_uploaded_result_last(tmp_path: Path, s3_env: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// output (SeaweedFS on loopback): the stage writes to a temporary folder and puts every file
    there, result.json last (a reader that finds it finds the rest); training reads them back."""
    from kubetune_trainer.preflight import read_checked
    from kubetune_trainer.storage import filesystem

    s3_env.make_bucket("preflight")
    fs = filesystem()
    put: list[str] = []
    original = fs.put_file
    monkeypatch.setattr(fs, "put_file", lambda lpath, rpath, **kw: (put.append(rpath), original(lpath, rpath, **kw)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = _config(tmp_path, instruction_records(30))
    config.sources.checked_data = "s3://preflight/out/kubetune/preflight"
    result = run_stage(config, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    assert [p.rsplit("/", 1)[1] for p in put] == ["report.json", "train.jsonl", "validation.jsonl", "result.json"]
    assert TrainerResult.parse(fs.cat_file("preflight/out/kubetune/preflight/result.json").decode()).data == result.data
    assert not list(tmp_path.glob("kubetune-preflight-*"))  # the local copy is gone
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    data, train, _ = read_checked(config, log=lambda _: None)  # training: the bytes checked, no second scan
    assert data == result.data and train.stat().st_size > 0
