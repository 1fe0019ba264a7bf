"""Supervised fine-tuning with TRL's SFTTrainer (qlora / lora / full).

Loss on the completion (assistant turns) only, by default: prompt/completion rows use TRL's
``completion_only_loss``; chat rows use ``assistant_only_loss`` when the chat template marks
assistant turns with ``{% generation %}``. Packing (``training.packing``) packs rows into
``maxSeqLength`` sequences (best-fit, no cross-attention between documents)."""

from __future__ import annotations

from typing import Any

from kubetune_trainer import distributed
from kubetune_trainer.common import Context, adapter_precision, common_args, dataset_from_rows


def build_sft_trainer(ctx: Context, rows: list[dict[str, Any]], *, assistant_only: bool) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **common_args(ctx),
        packing=bool(ctx.spec.training.packing),
        completion_only_loss=None if assistant_only else True,
        assistant_only_loss=assistant_only,
        dataset_num_proc=None,
    )
    trainer = distributed.trainer_class(SFTTrainer)(
        model=ctx.model,
        args=args,
        train_dataset=dataset_from_rows(rows),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
    return adapter_precision(ctx, trainer)


__all__ = ["build_sft_trainer"]
