"""Preference alignment with TRL's DPOTrainer.

The policy is a base model with a new adapter, a base model continuing an existing adapter (a
FineTuneJob's artifact, ``sources.adapter``), or a full model. The reference is implicit by
default: TRL copies the starting adapter into a frozen "ref" adapter — for a new adapter that is
the base itself (LoRA B starts at zero), when continuing an adapter it is the SFT policy — so no
second copy of the base weights is loaded. ``dpo.referenceModel: base`` loads a second copy explicitly.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import PreferenceAlignmentSpec
from kubetune_trainer import distributed
from kubetune_trainer.common import Context, adapter_precision, common_args, dataset_from_rows


def dpo_losses(loss_type: str, sft_weight: float | None) -> dict[str, Any]:
    """TRL's loss list for spec.dpo: the preference loss, plus the chosen answers' NLL when sftWeight > 0."""
    if not sft_weight:
        return {"loss_type": [str(loss_type)]}
    return {"loss_type": [str(loss_type), "sft"], "loss_weights": [1.0, sft_weight]}


def build_dpo_trainer(ctx: Context, rows: list[dict[str, Any]]) -> Any:
    from trl import DPOConfig, DPOTrainer

    if not isinstance(ctx.spec, PreferenceAlignmentSpec):
        raise TypeError(f"DPO trains a PreferenceAlignment, not a {type(ctx.spec).__name__}")
    dpo = ctx.spec.dpo
    args = DPOConfig(
        **common_args(ctx),
        beta=dpo.beta,
        **dpo_losses(dpo.loss_type, dpo.sft_weight),
        dataset_num_proc=None,
    )
    trainer = distributed.trainer_class(DPOTrainer)(
        model=ctx.model,
        ref_model=ctx.ref_model,
        args=args,
        train_dataset=dataset_from_rows(rows),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
    return adapter_precision(ctx, trainer)


__all__ = ["build_dpo_trainer", "dpo_losses"]
