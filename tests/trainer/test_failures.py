"""Failures end in a classified result: bad data before any model load, NaN ⇒ Diverged, SIGTERM ⇒
Interrupted with a checkpoint, OOM ⇒ OutOfMemory with the planner's estimate, and the
termination message stays within 4 KiB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import instruction_records, make_config, sft_manifest, write_jsonl

from kubetune.api.spec import Checkpoint
from kubetune.api.trainer_contract import EXIT_CODES, PlanSummary, TrainerResult
from kubetune_trainer import modeling
from kubetune_trainer.checkpoints import is_complete
from kubetune_trainer.failures import FAULT_ENV, classify

pytestmark = pytest.mark.trainer


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append("load")
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(modeling, "load_base", refuse)
    monkeypatch.setattr(modeling, "load_tokenizer", refuse)
    return calls


@pytest.mark.parametrize(("lines", "reason"), [
    (["{not json", *map(json.dumps, instruction_records(30))], "DataInvalid"),
    ([json.dumps({"instruction": "x"}), *map(json.dumps, instruction_records(30))], "DataInvalid"),
    (list(map(json.dumps, instruction_records(5))), "InsufficientData"),
])
def test_bad_data_fails_before_any_model_load(lines: list[str], reason: str, tmp_path: Path, run_main,
                                              no_model_load: list[str]) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", lines)
    # the model does not even exist: reaching the load would give ModelUnavailable instead
    config = make_config(sft_manifest("lora"), model=tmp_path / "no-such-model", dataset=data, output=tmp_path / "out")
    rc, result = run_main(config)
    assert result["outcome"] == "failed" and result["reason"] == reason, result["message"]
    assert rc == EXIT_CODES[reason] == 3
    assert not no_model_load
    assert "Traceback" not in result["message"]
    term = json.loads((tmp_path / "out" / "termination-log").read_text())
    assert term["reason"] == reason
    if reason == "DataInvalid":
        assert "line 1" in result["message"]


def test_missing_model_is_model_unavailable(tmp_path: Path, run_main) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(30))
    config = make_config(sft_manifest("lora"), model=tmp_path / "no-such-model", dataset=data, output=tmp_path / "out")
    rc, result = run_main(config)
    assert (result["reason"], rc) == ("ModelUnavailable", 4)
    assert "no-such-model" in result["message"]


def test_nan_loss_is_diverged_and_stops_early(tiny_model: Path, tmp_path: Path, run_main,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "nan_loss@2")
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(sft_manifest("lora", maxSteps=6), model=tiny_model, dataset=data, output=tmp_path / "out")
    config.spec.checkpoint = Checkpoint(every_steps=2, keep_last=5)
    rc, result = run_main(config)
    assert (result["reason"], rc) == ("Diverged", 5), result["message"]
    assert "at step 2" in result["message"] and "learningRate" in result["message"]
    assert result["progress"]["step"] == 2  # stopped at once, not after 6 steps
    assert not (tmp_path / "out" / "checkpoints" / "checkpoint-2").exists(), "no checkpoint of diverged weights"
    assert "artifact" not in result


def test_sigterm_saves_a_checkpoint_and_is_interrupted(tiny_model: Path, tmp_path: Path, run_main,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigterm@3")
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(sft_manifest("lora", maxSteps=8), model=tiny_model, dataset=data, output=tmp_path / "out")
    rc, result = run_main(config)
    assert (result["reason"], rc) == ("Interrupted", 143), result["message"]
    ckpt = tmp_path / "out" / "checkpoints" / "checkpoint-3"
    assert is_complete(ckpt), "a checkpoint is saved before stopping"
    assert "checkpoint-3" in result["message"]


def test_oom_is_classified_with_the_plan(tiny_model: Path, tmp_path: Path, run_main,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "oom@1")
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(sft_manifest("lora"), model=tiny_model, dataset=data, output=tmp_path / "out")
    config.plan = PlanSummary(peak_bytes=30 * 2**30, gpu_memory_bytes=24 * 2**30, fits=False,
                              best_suggestion="batchSize 1 with gradientAccumulationSteps 8")
    rc, result = run_main(config)
    assert (result["reason"], rc) == ("OutOfMemory", 6)
    assert "estimated a peak of 30.0 GiB on a 24.0 GiB GPU" in result["message"]
    assert "batchSize 1" in result["message"]


def test_classify_never_returns_a_traceback() -> None:
    try:
        raise RuntimeError("boom\n  File 'x.py', line 3\nTraceback ...")
    except RuntimeError as e:
        f = classify(e, PlanSummary(), step=7)
    assert f.reason == "TrainerError" and f.message == "RuntimeError at step 7: boom"


def test_termination_message_fits_4kib() -> None:
    result = TrainerResult(outcome="failed", reason="TrainerError", message="x" * 10_000,
                           metrics={f"m{i}": float(i) for i in range(50)},
                           details={"log": ["y" * 100] * 500})
    text = result.termination_message()
    assert len(text.encode()) <= 4096
    parsed = TrainerResult.parse(text)
    assert parsed.reason == "TrainerError" and parsed.metrics["m49"] == 49.0
