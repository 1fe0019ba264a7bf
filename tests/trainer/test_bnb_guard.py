"""The bitsandbytes CPU repack trap (docs: ARCHITECTURE.md): after an eval-mode no-grad forward,
bitsandbytes repacks 4-bit weights for inference on CPUs with AVX512-BF16, and LoRA gradients
computed afterwards are silently wrong. This test fails without kubetune's guard.

This machine may lack AVX512-BF16, so the CPU capability flag bitsandbytes reads is forced on
(``support_avx512bf16_for_cpu``): the repack and the wrong gradients then happen on any CPU, which
also proves the simulation reproduces the trap before checking the guard against it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.trainer


def _qlora(tiny_model: Path):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), quantization_config=q, device_map={"": "cpu"},
                                                 dtype=torch.float32)
    # what an AVX512-BF16 CPU does: bitsandbytes sets this flag from the CPU's capabilities
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # non-zero B, so gradients flow through every adapter
            torch.nn.init.normal_(p, std=0.05)
    return model


def _lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _eval_forward(model, ids: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


def _worst(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(((grads[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref)


def test_guard_keeps_lora_gradients_right_after_an_eval_forward(tiny_model: Path) -> None:
    from kubetune_trainer.bnb_guard import guard_bnb_cpu_repack, repacked_layers

    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = _lora_grads(_qlora(tiny_model), ids)  # never saw an eval forward

    unguarded = _qlora(tiny_model)
    _eval_forward(unguarded, ids)
    assert repacked_layers(unguarded) > 0, "the simulated AVX512-BF16 CPU should repack"
    assert _worst(_lora_grads(unguarded, ids), reference) > 0.1, "without the guard the gradients are wrong"

    guarded = _qlora(tiny_model)
    assert guard_bnb_cpu_repack(guarded) == 14  # 2 layers x 7 linear projections
    _eval_forward(guarded, ids)
    assert repacked_layers(guarded) == 0
    torch.testing.assert_close(_lora_grads(guarded, ids), reference)


def test_guard_undoes_a_repack_that_already_happened(tiny_model: Path) -> None:
    from kubetune_trainer.bnb_guard import guard_bnb_cpu_repack, repacked_layers

    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = _lora_grads(_qlora(tiny_model), ids)
    model = _qlora(tiny_model)
    _eval_forward(model, ids)
    assert repacked_layers(model) > 0
    guard_bnb_cpu_repack(model)
    assert repacked_layers(model) == 0
    # the repack rounded the block scales to bf16, so the round trip is close, not exact
    assert _worst(_lora_grads(model, ids), reference) < 0.01
