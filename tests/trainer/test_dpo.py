"""DPO through the entry point: from a base model (new adapter, reference = adapter disabled) and
from an SFT adapter (reference = a frozen copy of that adapter); beta and loss type applied."""

from __future__ import annotations

import math
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

from kubetune_trainer.run import run

pytestmark = pytest.mark.trainer


def _check(result, steps: int) -> None:
    assert result.outcome == "succeeded", result.message
    log = result.details["trainLog"]
    assert [h["step"] for h in log] == list(range(1, steps + 1))
    assert all(math.isfinite(h["loss"]) for h in log)
    assert all("rewards/margins" in h for h in log)


def test_dpo_new_lora_adapter(tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(20))
    manifest = dpo_manifest("lora")
    manifest["spec"]["dpo"] = {"beta": 0.2, "lossType": "ipo"}
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    _check(result, 3)
    args = captured["trainer"].args
    assert args.beta == 0.2 and list(args.loss_type) == ["ipo"] and args.max_length == 64
    weights = load_file(str(Path(result.artifact) / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert "DPO" in (Path(result.artifact) / "README.md").read_text()


def test_dpo_from_an_sft_adapter(tiny_model: Path, tmp_path: Path) -> None:
    sft = run(make_config(sft_manifest("qlora"), model=tiny_model,
                          dataset=write_jsonl(tmp_path / "train.jsonl", instruction_records(40)),
                          output=tmp_path / "sft"), log=lambda _: None)
    assert sft.outcome == "succeeded", sft.message
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(20))
    config = make_config(dpo_manifest("qlora"), model=tiny_model, dataset=data, output=tmp_path / "dpo",
                         adapter=Path(sft.artifact))
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    _check(result, 3)
    model = captured["model"]
    assert set(model.peft_config) == {"default", "ref"}  # the SFT adapter as the implicit reference
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    before = load_file(str(Path(sft.artifact) / "adapter_model.safetensors"))
    after = load_file(str(Path(result.artifact) / "adapter_model.safetensors"))
    assert before.keys() == after.keys(), "only the trained adapter is exported, not the reference copy"
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)
