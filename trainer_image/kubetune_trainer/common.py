"""What the SFT and DPO trainers share: the run context and the TrainingArguments they both use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.trainer_contract import TrainerConfig
from kubetune.planning.parallelism import Parallelism
from kubetune_trainer import distributed
from kubetune_trainer.modeling import Device, optimizer_name
from kubetune_trainer.reporting import Log


@dataclass
class Context:
    config: TrainerConfig
    spec: FineTuneJobSpec | PreferenceAlignmentSpec  # config.spec (resolved)
    method: str  # qlora | lora | full
    device: Device
    output: Path
    log: Log
    # torch-side objects (transformers / PEFT / TRL classes, imported lazily because they are heavy):
    # a PreTrainedModel or PeftModel, a tokenizer, TrainerCallbacks
    model: Any = None
    tokenizer: Any = None
    ref_model: Any = None
    callbacks: list[Any] = field(default_factory=list)
    report_to: str = "none"  # "mlflow" while spec.tracking's run is open (kubetune_trainer.tracking)

    @property
    def checkpoint_dir(self) -> Path:
        return self.output / "checkpoints"


def parallelism(ctx: Context) -> Parallelism:
    """How the ranks share the model: the planner's decision for the world the config was planned for."""
    return distributed.decision(ctx.method, ctx.config.world_size, bool(ctx.spec.training.gradient_checkpointing))


def common_args(ctx: Context) -> dict[str, Any]:
    """Keyword arguments for SFTConfig / DPOConfig (both TrainingArguments)."""
    t = ctx.spec.training
    gc = bool(t.gradient_checkpointing)
    args: dict[str, Any] = dict(
        output_dir=str(ctx.checkpoint_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=str(t.lr_scheduler),
        warmup_steps=float(t.warmup_ratio),  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        optim=optimizer_name(t.optimizer, ctx.device, ctx.log),
        seed=t.seed,
        data_seed=t.seed,
        max_length=t.max_seq_length,
        activation_checkpointing=gc,
        activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss must reach the divergence check
        save_strategy="steps",
        save_steps=ctx.spec.checkpoint.every_steps,
        save_total_limit=ctx.spec.checkpoint.keep_last,
        eval_strategy="no",
        report_to=ctx.report_to,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=ctx.device.cpu,
        bf16=ctx.device.bf16,
        fp16=ctx.device.fp16,
        dataloader_num_workers=0,
        dataloader_pin_memory=not ctx.device.cpu,
    )
    args.update(distributed.training_args(parallelism(ctx)))
    if t.max_steps:
        args["max_steps"] = t.max_steps
    else:
        args["num_train_epochs"] = float(t.epochs or 1)
    return args


def adapter_precision(ctx: Context, trainer: Any) -> Any:
    """TRL casts QLoRA adapters to bf16 (the QLoRA paper's choice on GPU). On CPU, or when
    quantization.computeDtype is float32, keep them in fp32: CPUs without AVX512-BF16 are slow in
    bf16, and the adapter should compute in the precision it is later loaded in."""
    import torch

    quant = ctx.spec.quantization
    if ctx.method != "qlora" or not (ctx.device.cpu or (quant is not None and str(quant.compute_dtype) == "float32")):
        return trainer
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return trainer


def dataset_from_rows(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows)


__all__ = ["Context", "adapter_precision", "common_args", "dataset_from_rows", "parallelism"]
