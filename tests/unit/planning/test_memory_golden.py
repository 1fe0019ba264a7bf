"""Golden values of the memory model: a small grid of requests whose every term and peak are pinned.

A refactoring of `kubetune.planning.memory` must leave these bit-identical. When the model changes on
purpose, regenerate and review the diff of the JSON:

    PYTHONPATH=operator python tests/unit/planning/test_memory_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.planning import PlanRequest, lookup
from kubetune.planning.memory import estimate

GOLDEN = Path(__file__).with_name("memory_golden.json")

# Each term is non-zero in at least one case (a comment names the terms a case is there for).
CASES: dict[str, dict[str, Any]] = {
    # dequantization buffer, lm_head autocast copy, fp32 residual
    "llama-3-70b qlora sft": {"model": "llama-3-70b"},
    # DDP buckets + NCCL, a second copy of the 4-bit base as DPO reference
    "llama-3.1-8b qlora dpo base-reference 2 GPUs": {
        "model": "llama-3.1-8b",
        "kind": "dpo",
        "dpo_reference": "base",
        "gpus": 2,
    },
    # LLM.int8 storage, 8-bit optimizer, flash attention (no mask), accumulated gradients
    "qwen2.5-7b qlora 8-bit adamw_8bit flash": {
        "model": "qwen2.5-7b",
        "quantization_bits": 8,
        "double_quant": False,
        "optimizer": "adamw_8bit",
        "attention": "flash_attention_2",
        "gradient_accumulation_steps": 4,
        "batch_size": 4,
    },
    # padded batch under eager attention, no checkpointing: mask, per-block activations, adapter copies
    "llama-3.2-1b lora eager padded no-ckpt": {
        "model": "llama-3.2-1b",
        "method": "lora",
        "attention": "eager",
        "batch_size": 4,
        "max_seq_length": 1024,
        "gradient_checkpointing": False,
    },
    # SDPA padding bias, implicit DPO reference, fp16, explicit short targets
    "qwen3-8b lora dpo fp16 q,v": {
        "model": "qwen3-8b",
        "method": "lora",
        "kind": "dpo",
        "compute_dtype": "float16",
        "target_modules": ("q", "v"),
        "batch_size": 2,
    },
    # Gemma 2's soft-capped logits
    "gemma-2-9b lora": {"model": "gemma-2-9b", "method": "lora", "max_seq_length": 4096},
    # full fine-tune on one GPU: autocast copies of every linear, foreach AdamW temporaries (step peak)
    "llama-3.2-3b full adamw_torch": {"model": "llama-3.2-3b", "method": "full", "max_seq_length": 512},
    # fused AdamW: no step temporaries
    "smollm2-1.7b full adamw_torch_fused": {
        "model": "smollm2-1.7b",
        "method": "full",
        "optimizer": "adamw_torch_fused",
        "batch_size": 8,
    },
    # Adafactor in fp32 (no autocast)
    "phi-3-mini full adafactor fp32": {
        "model": "phi-3-mini",
        "method": "full",
        "optimizer": "adafactor",
        "compute_dtype": "float32",
    },
    # FSDP over 2 nodes × 8 GPUs: sharded states, unsharded gathers, sharded DPO reference copy
    "mixtral-8x7b full dpo FSDP 16": {
        "model": "mixtral-8x7b",
        "method": "full",
        "kind": "dpo",
        "gpus": 8,
        "nodes": 2,
    },
    # MoE experts as LoRA targets, paged optimizer, packing
    "mixtral-8x7b qlora paged packing": {
        "model": "mixtral-8x7b",
        "optimizer": "paged_adamw_8bit",
        "packing": True,
        "max_seq_length": 8192,
    },
    # an unknown target (ignored) next to a real one, LoRA dropout 0, bias projections (Qwen2.5)
    "qwen2.5-0.5b lora unknown target": {
        "model": "qwen2.5-0.5b",
        "method": "lora",
        "target_modules": ("down_proj", "nope"),
        "lora_dropout": 0.0,
    },
}


def _result(kwargs: dict[str, Any]) -> dict[str, Any]:
    arch = lookup(kwargs["model"])
    assert arch is not None
    est = estimate(PlanRequest(**kwargs), arch)
    return {
        "peakBytes": est.peak_bytes,
        "peakPhase": est.peak_phase,
        "paramsTotal": est.params_total,
        "paramsTrainable": est.params_trainable,
        "breakdown": dict(est.breakdown),
        "components": dict(est.components),
        "notes": list(est.notes),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_estimate_matches_its_golden_values(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    actual = _result(CASES[name])
    assert actual == golden[name]
    assert list(actual["breakdown"]) == list(golden[name]["breakdown"])  # the order users see


def test_every_term_is_exercised_by_some_case() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(CASES)
    terms = set().union(*(g["components"] for g in golden.values()))
    zero = {t for t in terms if all(g["components"][t] == 0 for g in golden.values())}
    assert not zero, zero


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps({name: _result(kwargs) for name, kwargs in CASES.items()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
