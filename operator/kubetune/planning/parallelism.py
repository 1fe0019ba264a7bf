"""How the ranks of a job share the model: the one decision that the memory planner divides memory by
and that the trainer configures (kubetune_trainer.distributed builds its TrainingArguments from it).

| method      | world size | mode              | each rank holds                                          |
|-------------|------------|-------------------|----------------------------------------------------------|
| any         | 1          | single            | everything                                               |
| full        | > 1        | fsdp_full_shard   | 1/world of weights, gradients and optimizer states       |
| lora, qlora | > 1        | data_parallel     | the whole (frozen) base, the adapter, its gradients+opt. |

FSDP is FSDP2 (`fully_shard`, through transformers/accelerate), resharding after forward (full
shard), one unit per decoder block, with the spec's activation checkpointing done by FSDP, bf16 mixed
precision where the device computes in bf16 (fp32 on CPU), and sharded checkpoints (torch.distributed
.checkpoint) that a retry with the same world size resumes. The final artifact is gathered on rank 0.

Pure: no torch, transformers or kubernetes imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Mode", "Parallelism", "decide", "unsupported"]


class Mode(StrEnum):
    SINGLE = "single"
    DATA_PARALLEL = "data_parallel"
    FSDP_FULL_SHARD = "fsdp_full_shard"


@dataclass(frozen=True)
class Parallelism:
    mode: Mode
    world_size: int
    activation_checkpointing: bool
    """training.gradientCheckpointing; under FSDP it is FSDP's own (one checkpoint per decoder block)."""

    @property
    def shards(self) -> int:
        """How many ways weights, gradients and optimizer states are split."""
        return self.world_size if self.mode is Mode.FSDP_FULL_SHARD else 1

    @property
    def replicated(self) -> bool:
        """Each rank holds a whole copy of the model (and DDP keeps a bucket copy of the gradients)."""
        return self.mode is Mode.DATA_PARALLEL

    @property
    def sharded_checkpoints(self) -> bool:
        return self.mode is Mode.FSDP_FULL_SHARD

    @property
    def holds(self) -> str:
        """What each rank holds, in words (plan notes, logs)."""
        if self.mode is Mode.FSDP_FULL_SHARD:
            return f"1/{self.world_size} of the weights, gradients and optimizer states (FSDP full-shard)"
        if self.mode is Mode.DATA_PARALLEL:
            return f"a whole copy of the model on each of {self.world_size} ranks (data parallel, DDP)"
        return "the whole model (one process)"


def world_size(gpus: int, nodes: int) -> int:
    """Trainer processes in all: one per GPU, or one per pod for a CPU job (`gpus: 0`, gloo)."""
    return max(gpus, 1) * nodes


def decide(method: str, world_size: int, *, gradient_checkpointing: bool) -> Parallelism:
    """The mode for `method` ("full" | "lora" | "qlora") over `world_size` ranks."""
    if world_size <= 1:
        mode = Mode.SINGLE
    elif method == "full":
        mode = Mode.FSDP_FULL_SHARD
    else:
        mode = Mode.DATA_PARALLEL
    return Parallelism(mode=mode, world_size=max(world_size, 1), activation_checkpointing=gradient_checkpointing)


def unsupported(*, method: str, world_size: int, dpo: bool) -> str | None:
    """Why the trainer cannot run this combination over `world_size` ranks, or None."""
    if dpo and method == "full" and world_size > 1:
        return ("a full-weight DPO over more than one GPU needs its reference model sharded too, which the trainer "
                "does not do; use tuning lora or qlora (data parallel), or one GPU")
    return None
