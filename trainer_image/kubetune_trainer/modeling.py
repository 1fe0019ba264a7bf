"""Loading the tokenizer and the model for a method: qlora (bitsandbytes 4/8-bit base + LoRA), lora
(16/32-bit base + LoRA) or full. Precision: bf16 on GPUs that have it (fp16 otherwise), fp32 on CPU
(4-bit compute dtype included: bf16 matmuls are slow or unsupported on most CPUs). `pick_device` makes
that choice; the loaders follow `Device.dtype`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.enums import CUDA_ONLY_OPTIMIZERS, Reason
from kubetune.api.spec import LoraConfig as LoraSpec
from kubetune.api.spec import Quantization
from kubetune_trainer.bnb_guard import guard_bnb_cpu_repack
from kubetune_trainer.failures import TrainerFailure, gpu_unavailable, model_unavailable

BNB_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit"}


@dataclass
class Device:
    kind: str  # "cuda" | "cpu"
    dtype: Any  # torch dtype of the compute: a LoRA/QLoRA base loads in it; fp32 makes 4-bit matmuls fp32 too
    bf16: bool
    fp16: bool
    index: int = 0  # the CUDA device of this rank: LOCAL_RANK under torchrun (one device per rank)

    @property
    def cpu(self) -> bool:
        return self.kind == "cpu"


def pick_device(requested: str, *, gpus: int | None = None) -> Device:
    """`cuda` (a GPU job) without a visible GPU fails with GPUUnavailable, naming the `gpus` requested;
    `auto` falls back to CPU."""
    import torch

    cuda = torch.cuda.is_available() and requested != "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise gpu_unavailable(gpus)
    if not cuda:
        return Device("cpu", torch.float32, False, False)
    index = int(os.environ.get("LOCAL_RANK") or 0)  # torchrun: one GPU per rank
    if index >= torch.cuda.device_count():
        raise TrainerFailure(Reason.GPU_UNAVAILABLE, (
            f"the rank with LOCAL_RANK {index} has no GPU of its own: the pod sees {torch.cuda.device_count()} "
            f"and runs a process per GPU of resources.gpus ({gpus})"))
    if torch.cuda.is_bf16_supported():
        return Device("cuda", torch.bfloat16, True, False, index)
    return Device("cuda", torch.float16, False, True, index)


def optimizer_name(spec_optimizer: str | None, device: Device, log: Any) -> str:
    name = str(spec_optimizer or "adamw_torch")
    if name in CUDA_ONLY_OPTIMIZERS and device.cpu:
        log(f"optimizer {name} needs CUDA; using adamw_torch on CPU")
        return "adamw_torch"
    if name in BNB_OPTIMIZERS:
        return BNB_OPTIMIZERS[name]
    return {"adafactor": "adafactor", "adamw_torch": "adamw_torch"}.get(name, name)


def load_tokenizer(path: Path, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), revision=revision)
    except Exception as e:
        raise model_unavailable(f"the tokenizer from {path}", e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quant: Quantization | None, device: Device) -> Any:
    """The BitsAndBytesConfig for `quant` (None without), built by TRL's get_quantization_config; 4-bit
    matmuls compute in its computeDtype, or in fp32 on a device that computes in fp32 (CPU)."""
    import torch
    from trl import ModelConfig, get_quantization_config

    if quant is None:
        return None
    eight = int(quant.bits) == 8
    fp32 = device.dtype == torch.float32
    return get_quantization_config(ModelConfig(
        load_in_8bit=eight, load_in_4bit=not eight, bnb_4bit_quant_type=str(quant.type),
        use_bnb_nested_quant=bool(quant.double_quant),
        dtype="float32" if fp32 else str(quant.compute_dtype)))  # TRL's 4-bit compute dtype


def load_base(path: Path, *, method: str, quant: Quantization | None, device: Device, revision: str | None = None,
              gradient_checkpointing: bool = False) -> Any:
    """The base model, ready for adapters (qlora: 4-bit + prepare_model_for_kbit_training)."""
    import torch
    from transformers import AutoModelForCausalLM

    # full: fp32 master weights (mixed precision on GPU); lora/qlora: the frozen base in the compute dtype
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch.float32 if method == "full" else device.dtype}
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config(quant, device)
        kwargs["device_map"] = {"": device.index if device.kind == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise model_unavailable(f"the model from {path}", e) from e
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        guard_bnb_cpu_repack(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None)
    elif device.kind == "cuda":
        model.to(f"cuda:{device.index}")  # type: ignore[arg-type]
    if gradient_checkpointing and method != "full":
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def lora_config(lora: LoraSpec) -> Any:
    from peft import LoraConfig

    targets = list(lora.target_modules)
    # PEFT annotates lora_alpha as int but scales by lora_alpha / r: spec.lora.alpha may be fractional
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,  # type: ignore[arg-type]
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      bias="none", task_type="CAUSAL_LM")


def add_adapter(model: Any, lora: LoraSpec) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora))


def load_adapter(model: Any, adapter: Path, *, trainable: bool) -> Any:
    """Continue from an existing adapter (TRL's DPOTrainer then copies it into a frozen "ref"
    adapter: the reference is the SFT policy, not the bare base)."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except Exception as e:
        raise model_unavailable(f"the adapter from {adapter}", e) from e
    return peft_model


__all__ = ["Device", "add_adapter", "load_adapter", "load_base", "load_tokenizer", "optimizer_name", "pick_device"]
