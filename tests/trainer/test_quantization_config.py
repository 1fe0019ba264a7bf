"""spec.quantization → the BitsAndBytesConfig the base is loaded with (built by TRL's
get_quantization_config): 4-bit compute runs in float32 on CPU, in the spec's dtype on a GPU."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.trainer

torch = pytest.importorskip("torch")

from kubetune.api.spec import Quantization  # noqa: E402
from kubetune_trainer.modeling import Device, quantization_config  # noqa: E402

CPU = Device("cpu", torch.float32, False, False)
GPU = Device("cuda", torch.bfloat16, True, False)  # only a description: nothing is placed on it


def test_default_4bit_on_cpu_computes_in_float32() -> None:
    q = quantization_config(Quantization(), CPU)  # nf4, double quant, bfloat16 compute
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32


def test_4bit_on_a_gpu_computes_in_the_spec_dtype() -> None:
    q = quantization_config(Quantization(type="fp4", double_quant=False, compute_dtype="float16"), GPU)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float16
    assert quantization_config(Quantization(), GPU).bnb_4bit_compute_dtype == torch.bfloat16


def test_8bit_and_none() -> None:
    q = quantization_config(Quantization(bits=8), CPU)
    assert q.load_in_8bit and not q.load_in_4bit
    assert quantization_config(None, CPU) is None
