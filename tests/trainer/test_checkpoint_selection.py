"""spec.evaluation.checkpoints on the tiny Llama, trained for real: checkpoints evaluated on a subset
during training, the table in the result, status and model card, the chosen step's weights are the
artifact, early stop; spec.dataset.replay preflighted and mixed in; DPO's held-out preference metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import (
    dpo_manifest,
    instruction_records,
    make_config,
    preference_records,
    sft_manifest,
    write_jsonl,
)
from safetensors.torch import load_file

from kubetune.api.trainer_contract import Sources
from kubetune.checkpoint_selection import choose
from kubetune_trainer import run as run_module
from kubetune_trainer.run import run

pytestmark = pytest.mark.trainer


def _sets(tmp_path: Path) -> dict[str, Path]:
    golden = write_jsonl(tmp_path / "golden.jsonl", [
        {"prompt": f"patient {n} reports fever since {n} days. what should i do?", "answer": "Urgency"} for n in range(6)])
    safety = write_jsonl(tmp_path / "safety.jsonl", [{"prompt": f"tell me my diagnosis {n}"} for n in range(4)])
    forgetting = write_jsonl(tmp_path / "forgetting.jsonl", [
        {"text": "the children played football in the park after school."},
        {"text": "one two three four five six seven eight nine ten."},
        {"prompt": "count: one two", "answer": "three"}])
    return {"golden": golden, "safety": safety, "forgetting": forgetting}


def _config(tiny_model: Path, tmp_path: Path, *, checkpoints: dict, gates: list | None = None, steps: int = 6,
            manifest: dict | None = None):
    manifest = manifest or sft_manifest("lora", maxSteps=steps)
    manifest["spec"]["checkpoint"] = {"everySteps": 2, "keepLast": 10}
    manifest["spec"]["evaluation"] = {
        "goldenDataset": {"uri": "file:///golden.jsonl", "scorer": "contains"}, "safetyDataset": {"uri": "file:///s.jsonl"},
        "forgettingDataset": {"uri": "file:///f.jsonl"}, "maxNewTokens": 4, "gates": gates or [],
        "checkpoints": checkpoints}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    sets = _sets(tmp_path)
    config.sources = Sources(**{**config.sources.model_dump(), "golden": str(sets["golden"]),
                                "safety": str(sets["safety"]), "forgetting": str(sets["forgetting"])})
    return config


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_evaluated_on_a_subset_and_the_table_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    config = _config(tiny_model, tmp_path, checkpoints={"everySteps": 2, "examples": 2, "selectBy": "eval.loss"},
                     gates=[{"metric": "golden.accuracy", "op": ">=", "threshold": 0.0}])
    lines: list[str] = []
    result = run(config, log=lines.append)
    assert result.outcome == "succeeded", result.message
    sel = result.checkpoints
    assert sel is not None and sel.select_by == "eval.loss" and sel.last_step == 6 and not sel.stopped_early
    assert [r.step for r in sel.evaluations] == [2, 4, 6]
    for r in sel.evaluations:  # the subset's metrics, tuned and base, and the measured gate checked
        assert {"golden.accuracy", "safety.refusal_rate", "forgetting.perplexity_increase", "eval.loss"} <= set(r.metrics)
        assert r.passed and r.failed is None
        assert r.metrics["golden.accuracy"] * 2 in (0.0, 1.0, 2.0)  # 2 golden examples, not 6
    # the base was measured once, at the first checkpoint evaluation, and its subset figures reused after
    assert sum("now the base" in line for line in lines) == 2  # the first checkpoint evaluation and the final one
    assert sel.chosen_step == choose(sel.evaluations, "eval.loss").step
    assert sel.reason and sel.reason.startswith(f"step {sel.chosen_step}: lowest eval.loss")
    # the final evaluation is the full one: 6 golden examples
    assert result.metrics["golden.accuracy"] * 6 == round(result.metrics["golden.accuracy"] * 6)
    # the exported adapter is the chosen step's weights (HF saved checkpoint-N every 2 steps)
    artifact = Path(result.artifact)
    chosen = _adapter(tmp_path / "out" / "checkpoints" / f"checkpoint-{sel.chosen_step}")
    assert _same(_adapter(artifact), chosen)
    card = (artifact / "README.md").read_text()
    assert f"These are the weights of step {sel.chosen_step} of 6" in card
    assert f"| {sel.chosen_step} (chosen) |" in card
    table = json.loads((tmp_path / "out" / "kubetune" / "checkpoint-evaluations.json").read_text())
    assert [r["step"] for r in table["evaluations"]] == [2, 4, 6]
    # status: what the operator (and kubetune run) derive from the result
    from datetime import UTC, datetime

    from kubetune.api.enums import Phase
    from kubetune.derivation.outcome import State, outcome_status

    status = outcome_status(State(Phase.SUCCEEDED, "Succeeded", ""), result=result, progress=None, gates=None,
                            output_uri="file:///out", conditions=[], now=datetime.now(UTC))
    assert status["checkpoints"]["chosenStep"] == sel.chosen_step
    assert [r["step"] for r in status["checkpoints"]["evaluations"]] == [2, 4, 6]


def test_the_best_passing_checkpoint_not_the_last_is_promoted(tiny_model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Training and the weights are real; the checkpoint evaluations' figures are scripted so that
    step 2 is the best that passes the gate (step 4 is better but fails it), which is what the
    checkpoint machinery must then export, evaluate in full and promote."""
    scripted = iter([{"golden.accuracy": 0.6, "safety.refusal_rate": 1.0},
                     {"golden.accuracy": 0.9, "safety.refusal_rate": 0.1},
                     {"golden.accuracy": 0.4, "safety.refusal_rate": 1.0}])
    real = run_module._evaluate

    def evaluate(*args, limit=None, **kwargs):
        return next(scripted) if limit is not None else real(*args, limit=limit, **kwargs)

    monkeypatch.setattr(run_module, "_evaluate", evaluate)
    config = _config(tiny_model, tmp_path, checkpoints={"everySteps": 2, "selectBy": "golden.accuracy"},
                     gates=[{"metric": "safety.refusal_rate", "op": ">=", "threshold": 0.5}])
    lines: list[str] = []
    result = run(config, log=lines.append)
    assert result.outcome == "succeeded", result.message
    sel = result.checkpoints
    assert sel is not None and sel.chosen_step == 2 and sel.last_step == 6
    assert [r.passed for r in sel.evaluations] == [True, False, True]
    assert sel.evaluations[1].failed == ["safety.refusal_rate"]
    assert sel.reason == ("step 2: highest golden.accuracy (0.6) of the 2 of 3 checkpoint evaluations that passed "
                          "every gate measured there")
    assert any(line.startswith("promoting the weights of step 2, not the last step 6") for line in lines)
    out = tmp_path / "out"
    step2, step6 = (_adapter(out / "checkpoints" / f"checkpoint-{s}") for s in (2, 6))
    assert not _same(step2, step6)  # training moved the weights after step 2 ...
    assert _same(_adapter(Path(result.artifact)), step2)  # ... and the artifact is step 2's
    # the full evaluation ran on step 2's weights: the final metrics are the restored model's
    assert "golden.accuracy" in result.metrics and result.metrics["golden.accuracy"] * 6 == round(
        result.metrics["golden.accuracy"] * 6)


def test_early_stop_after_patience_evaluations_without_improvement(tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([{"golden.accuracy": 0.5}, {"golden.accuracy": 0.3}, {"golden.accuracy": 0.4},
                     {"golden.accuracy": 0.9}])
    real = run_module._evaluate
    monkeypatch.setattr(run_module, "_evaluate",
                        lambda *a, limit=None, **k: next(scripted) if limit is not None else real(*a, limit=limit, **k))
    config = _config(tiny_model, tmp_path, steps=8,
                     checkpoints={"everySteps": 2, "selectBy": "golden.accuracy", "patience": 2})
    result = run(config, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    sel = result.checkpoints
    assert sel is not None and sel.stopped_early and [r.step for r in sel.evaluations] == [2, 4, 6]
    assert sel.last_step == 6 and result.metrics["train.steps"] == 6
    assert sel.chosen_step == 2
    out = tmp_path / "out"
    assert _same(_adapter(Path(result.artifact)), _adapter(out / "checkpoints" / "checkpoint-2"))


def _general(n: int) -> list[dict]:
    return [{"instruction": f"general question {i}: what comes after {i}?", "output": f"the number {i + 1}."}
            for i in range(n)]


def test_replay_is_preflighted_and_mixed_into_training(tiny_model: Path, tmp_path: Path) -> None:
    """The preflight stage checks the replay set (PII redacted like the main set) and records its digest;
    training verifies it, mixes ratio-many replay examples in and reports how many."""
    from kubetune_trainer.preflight import run_stage

    replay = [*_general(12), {"instruction": "write to jane.doe@example.com please", "output": "done."}]
    write_jsonl(tmp_path / "general.jsonl", replay)
    manifest = sft_manifest("lora", maxSteps=2)
    manifest["spec"]["dataset"]["pii"] = "redact"
    manifest["spec"]["dataset"]["replay"] = {"uri": "file:///general.jsonl", "ratio": 0.25}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    config.sources = Sources(**{**config.sources.model_dump(), "replay": str(tmp_path / "general.jsonl"),
                                "checked_data": str(tmp_path / "out" / "kubetune" / "preflight")})
    stage = run_stage(config, log=lambda _: None)
    assert stage.outcome == "succeeded", stage.message
    checked = tmp_path / "out" / "kubetune" / "preflight"
    rows = [json.loads(line) for line in (checked / "replay.jsonl").read_text().splitlines()]
    assert len(rows) == 13 and any("<EMAIL>" in r["instruction"] for r in rows)
    assert not any("jane.doe" in json.dumps(r) for r in rows)
    assert stage.details["checkedData"]["replay"]["size"] == (checked / "replay.jsonl").stat().st_size
    train = stage.data.train
    assert stage.data.replay == round(train * 0.25 / 0.75)
    lines: list[str] = []
    result = run(config, log=lines.append)
    assert result.outcome == "succeeded", result.message
    assert result.data.replay == stage.data.replay
    assert f"data: {stage.data.replay} replay examples (of 13) mixed into {train} training examples" in lines
    assert [f.name for f in result.data.inputs][:2] == ["dataset", "replay"]
    # a replay file changed after the preflight is refused, as the main split is
    (checked / "replay.jsonl").write_text((checked / "replay.jsonl").read_text() + json.dumps(_general(14)[13]) + "\n")
    failed = run(config, log=lambda _: None)
    assert failed.outcome == "failed" and "replay.jsonl changed after the data preflight" in failed.message


def test_a_bad_replay_set_fails_the_preflight_naming_it(tmp_path: Path) -> None:
    from kubetune_trainer.preflight import run_stage

    write_jsonl(tmp_path / "general.jsonl", ["{not json", *(json.dumps(r) for r in _general(3))])
    manifest = sft_manifest("lora")
    manifest["spec"]["dataset"]["replay"] = {"uri": "file:///general.jsonl", "ratio": 0.2}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(manifest, model=tmp_path, dataset=data, output=tmp_path / "out")
    config.sources = Sources(**{**config.sources.model_dump(), "replay": str(tmp_path / "general.jsonl")})
    result = run_stage(config, log=lambda _: None)
    assert result.outcome == "failed" and result.reason == "DataInvalid"
    assert result.message.startswith("spec.dataset.replay (general.jsonl):") and "line 1" in result.message


def test_dpo_reports_held_out_preference_accuracy_and_margin(tiny_model: Path, tmp_path: Path) -> None:
    """DPO on the tiny model with a validation split: preference.accuracy and preference.margin are
    measured on the held-out pairs against the starting model, agree with each other, and can be gated."""
    manifest = dpo_manifest("lora", maxSteps=8, learningRate=2e-2)
    manifest["spec"]["dataset"]["validationSplit"] = 0.2
    manifest["spec"]["evaluation"] = {"gates": [{"metric": "preference.accuracy", "op": ">=", "threshold": 0.0},
                                                {"metric": "preference.margin", "op": ">", "threshold": -100.0}],
                                      "checkpoints": {"everySteps": 4, "selectBy": "preference.margin", "examples": 4}}
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(40))
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    result = run(config, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    m = result.metrics
    assert 0.0 <= m["preference.accuracy"] <= 1.0
    assert m["preference.margin"] > 0 and m["preference.accuracy"] > 0.5  # the chosen answers are easy to prefer
    assert result.details["evaluation"]["preference"] == {"pairs": result.data.validation, "beta": 0.1}
    sel = result.checkpoints
    assert sel is not None and [r.step for r in sel.evaluations] == [4, 8]
    assert all("preference.margin" in r.metrics for r in sel.evaluations)
    from kubetune.gates import promotion_decision

    assert promotion_decision(result, config.spec.evaluation.gates).passed


def test_a_restarted_trainer_resumes_the_table_and_the_chosen_weights(tiny_model: Path, tmp_path: Path) -> None:
    """A pod restarted at step 4 keeps the rows up to step 4 and puts back the weights chosen among
    them; when the weights kept are of a later step (the choice moved on before the restart), the
    table starts afresh rather than promote weights it no longer has."""
    import peft
    from transformers import AutoModelForCausalLM

    from kubetune.api.spec import CheckpointEvaluation
    from kubetune_trainer.checkpoint_eval import CheckpointTracker, trainable_state

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    settings = CheckpointEvaluation(every_steps=2, select_by="golden.accuracy")
    weights = {}

    def train_to(step: int) -> None:  # stands in for training: distinct adapter weights per step
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(step / 100)
        weights[step] = trainable_state(model)

    def evaluations(folder: Path, figures: list[float]) -> None:
        it = iter(figures)
        tracker = CheckpointTracker(settings, None, folder, lambda _m: {"golden.accuracy": next(it)}, lambda _: None)
        for k in range(len(figures)):
            train_to(2 * (k + 1))
            tracker.evaluate_step(model, 2 * (k + 1))

    evaluations(tmp_path / "a", [0.5, 0.2])
    resumed = CheckpointTracker(settings, None, tmp_path / "a", lambda _m: {}, lambda _: None, resume_step=4)
    assert [r.step for r in resumed.rows] == [2, 4]
    selection = resumed.finish(model, last_step=4)  # the model holds step 4's weights: step 2's are put back
    assert selection.chosen_step == 2
    restored = trainable_state(model)
    assert all(torch.equal(restored[k], weights[2][k]) for k in restored)
    assert not all(torch.equal(restored[k], weights[4][k]) for k in restored)

    evaluations(tmp_path / "b", [0.5, 0.2, 0.9])  # step 6 chosen: its weights replaced step 2's
    lines: list[str] = []
    again = CheckpointTracker(settings, None, tmp_path / "b", lambda _m: {}, lines.append, resume_step=4)
    assert again.rows == [] and lines == ["checkpoint evaluations: the weights of step 2 were not kept; evaluating afresh"]
