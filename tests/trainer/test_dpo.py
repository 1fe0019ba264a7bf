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


def test_dpo_with_an_sft_weight_trains_on_both_losses(tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(20))
    manifest = dpo_manifest("lora")
    manifest["spec"]["dpo"] = {"beta": 0.1, "sftWeight": 0.5}
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    _check(result, 3)
    args = captured["trainer"].args
    assert list(args.loss_type) == ["sigmoid", "sft"] and list(args.loss_weights) == [1.0, 0.5]


def test_the_held_out_preference_metrics_of_a_dpo_on_an_sft_adapter_are_against_that_adapter(
        tiny_model: Path, tmp_path: Path) -> None:
    """TRL trains a DPO that continues an SFT adapter against a frozen copy of that adapter, and so
    are preference.accuracy/margin measured: a DPO that barely moves (1 step at lr 1e-12) has no margin
    over its reference, though SFT on the chosen answers moved them far from the base's."""
    pairs = preference_records(40)
    sft = run(make_config(sft_manifest("lora", maxSteps=6, learningRate=2e-2), model=tiny_model,
                          dataset=write_jsonl(tmp_path / "train.jsonl",
                                              [{"instruction": r["prompt"], "output": r["chosen"]} for r in pairs]),
                          output=tmp_path / "sft"), log=lambda _: None)
    assert sft.outcome == "succeeded", sft.message
    manifest = dpo_manifest("lora", maxSteps=1, learningRate=1e-12)
    manifest["spec"]["dataset"]["validationSplit"] = 0.2
    manifest["spec"]["evaluation"] = {"gates": [{"metric": "preference.margin", "op": ">", "threshold": -100.0}]}
    config = make_config(manifest, model=tiny_model, dataset=write_jsonl(tmp_path / "prefs.jsonl", pairs),
                         output=tmp_path / "dpo", adapter=Path(sft.artifact))
    result = run(config, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    assert result.details["evaluation"]["preference"]["pairs"] == result.data.validation > 0
    assert abs(result.metrics["preference.margin"]) < 1e-4, result.metrics
    # against the base (adapters disabled) the same pairs are far apart: SFT raised the chosen answers
    assert result.metrics["eval.loss"] < result.metrics["eval.loss_base"] - 0.1, result.metrics


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


@pytest.mark.parametrize("tuning", ["lora", "qlora"])
def test_dpo_with_an_explicit_reference_model(tiny_model: Path, tmp_path: Path, tuning: str) -> None:
    """referenceModel: base loads a second, frozen copy (base + the SFT adapter) as the reference:
    the policy has one adapter only, the reference never changes, and TRL uses that reference."""
    sft = run(make_config(sft_manifest(tuning), model=tiny_model,
                          dataset=write_jsonl(tmp_path / "train.jsonl", instruction_records(40)),
                          output=tmp_path / "sft"), log=lambda _: None)
    assert sft.outcome == "succeeded", sft.message
    manifest = dpo_manifest(tuning)
    manifest["spec"]["dpo"]["referenceModel"] = "base"
    config = make_config(manifest, model=tiny_model, dataset=write_jsonl(tmp_path / "prefs.jsonl", preference_records(20)),
                         output=tmp_path / "dpo", adapter=Path(sft.artifact))
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    _check(result, 3)
    model, trainer = captured["model"], captured["trainer"]
    assert set(model.peft_config) == {"default"}  # no implicit "ref" copy inside the policy
    ref = trainer.ref_model
    assert ref is not None and ref is not model
    assert not any(p.requires_grad for p in ref.parameters())
    sft_weights = load_file(str(Path(sft.artifact) / "adapter_model.safetensors"))
    ref_lora = {n: p for n, p in ref.named_parameters() if "lora_B" in n}
    assert ref_lora and all(p.abs().sum() > 0 for p in ref_lora.values())  # the SFT adapter, loaded
    # the policy starts equal to its reference (both base + SFT adapter), so the first sigmoid loss is log 2;
    # a reference without the adapter (the bare base) would give another value
    assert abs(result.details["trainLog"][0]["loss"] - math.log(2)) < 1e-3
    # the reference still holds the SFT adapter's weights after training; the policy moved away from them
    for key, value in sft_weights.items():
        if "lora_B" in key:
            [match] = [p for n, p in ref_lora.items() if n.replace(".default", "").endswith(key.removeprefix("base_model.model."))]
            assert torch.equal(match.detach().float(), value.float())
    after = load_file(str(Path(result.artifact) / "adapter_model.safetensors"))
    assert any(not torch.equal(sft_weights[k].float(), after[k].float()) for k in sft_weights)


def test_dpo_from_the_base_with_an_explicit_reference_model(tiny_model: Path, tmp_path: Path) -> None:
    manifest = dpo_manifest("lora")
    manifest["spec"]["dpo"]["referenceModel"] = "base"
    config = make_config(manifest, model=tiny_model, dataset=write_jsonl(tmp_path / "prefs.jsonl", preference_records(20)),
                         output=tmp_path / "out")
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    _check(result, 3)
    ref = captured["trainer"].ref_model
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    assert not any("lora" in n for n, _ in ref.named_parameters())  # the bare base
    assert abs(result.details["trainLog"][0]["loss"] - math.log(2)) < 1e-3  # a new adapter starts as the base
