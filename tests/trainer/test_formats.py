"""Dataset formats and options: chat data with the template's {% generation %} marks trains on the
assistant turns only (with gradient checkpointing); prompt-completion with packing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import instruction_records, make_config, sft_manifest, write_jsonl

from kubetune_trainer.run import run

pytestmark = pytest.mark.trainer


def _chat(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "you are a triage nurse."},
                          {"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["output"]}]} for r in instruction_records(n)]


def _prompt_completion(n: int) -> list[dict]:
    return [{"prompt": r["instruction"] + "\n", "completion": r["output"]} for r in instruction_records(n)]


@pytest.mark.parametrize(("fmt", "records", "training"), [
    ("chat", _chat(30), {"gradientCheckpointing": True}),
    ("prompt-completion", _prompt_completion(30), {"packing": True}),
])
def test_formats(fmt: str, records: list[dict], training: dict, tiny_model: Path, tmp_path: Path) -> None:
    manifest = sft_manifest("lora", **training)
    manifest["spec"]["dataset"]["format"] = fmt
    config = make_config(manifest, model=tiny_model, dataset=write_jsonl(tmp_path / "d.jsonl", records),
                         output=tmp_path / "out")
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    assert all(math.isfinite(h["loss"]) for h in result.details["trainLog"])
    args = captured["trainer"].args
    if fmt == "chat":
        assert args.assistant_only_loss and args.activation_checkpointing
        ds = captured["trainer"].train_dataset
        labels = ds[0]["labels"]  # TRL folds the template's assistant mask into the labels
        trained = sum(1 for t in labels if t != -100)
        assert 0 < trained < len(labels) // 2, "loss on the assistant turn only"
    else:
        assert args.packing and args.completion_only_loss
