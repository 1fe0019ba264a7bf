"""Guard against the bitsandbytes CPU inference repack (the "bnb CPU trap").

On CPUs with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit.forward`` repacks its 4-bit weight into an
inference-only layout the first time it runs in eval mode without grad (``model.eval()`` + a no-grad
forward: an evaluation, a generation, a DPO reference pass). The repack is permanent and later
forwards go through ``gemv_4bit``, which has no backward for the base weight path: gradients that
flow *through* the frozen 4-bit layers to earlier LoRA adapters come out silently wrong (a LoRA
gradient was off by half), and adapter merges read the wrong layout.

:func:`guard_bnb_cpu_repack` turns that repack off on every ``Linear4bit`` (and undoes it where it
already happened). Call it after every 4-bit model load. It is a no-op on GPU (the repack only
happens for CPU inputs) and costs some CPU inference speed, never correctness.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_FLAG = "support_avx512bf16_for_cpu"


def _linear4bit_class() -> type | None:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return getattr(bnb.nn, "Linear4bit", None)


def guard_bnb_cpu_repack(model: Any) -> int:
    """Disable the eval-time CPU repack on every ``Linear4bit`` in ``model``; unpack any weight
    already repacked. Returns the number of layers guarded."""
    cls = _linear4bit_class()
    if cls is None:
        return 0
    guarded = 0
    for module in model.modules():
        if not isinstance(module, cls):
            continue
        if not hasattr(module, _FLAG):
            log.warning("bitsandbytes Linear4bit has no %s attribute: the CPU repack guard may be stale "
                        "for this bitsandbytes version", _FLAG)
        setattr(module, _FLAG, False)
        _unpack(module)
        guarded += 1
    return guarded


def _unpack(module: Any) -> None:
    weight: Any = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if weight is None or state is None or not getattr(state, "packing_format_for_cpu", False):
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)


def repacked_layers(model: Any) -> int:
    """How many ``Linear4bit`` weights are in the inference-only CPU layout now (for tests/logs)."""
    cls = _linear4bit_class()
    if cls is None:
        return 0
    count = 0
    for m in model.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        if isinstance(m, cls) and getattr(state, "packing_format_for_cpu", False):
            count += 1
    return count


__all__ = ["guard_bnb_cpu_repack", "repacked_layers"]
