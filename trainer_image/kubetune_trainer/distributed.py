"""The trainer side of kubetune.planning.parallelism: one process per rank (torchrun), each on its own
device (LOCAL_RANK), configured as the planner planned it.

- `rank()`: this process's place from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE);
- `init()`: the process group before anything else (gloo on CPU, nccl on GPUs), so rank 0 can check
  the data and clean up checkpoints while the others wait;
- `training_args()`: what the decision means for TrainingArguments — FSDP2 full-shard (with FSDP's
  own activation checkpointing and sharded checkpoints) or DDP;
- `enable_fsdp_on_cpu()`: accelerate 1.15 builds an FSDP plugin only for GPU-like backends; on CPU
  (gloo: tests, `kubetune run --device cpu`) it would silently train unsharded. The same plugin is
  installed on the accelerator state, so the CPU run shards exactly as a GPU run does;
- `full_state_dict()`: the sharded weights gathered (a collective on every rank) into rank 0's memory
  for the artifact, which then loads in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kubetune.planning.parallelism import Mode, Parallelism, decide

__all__ = ["Rank", "barrier", "decision", "enable_fsdp_on_cpu", "full_state_dict", "init", "rank", "trainer_class", "training_args"]


@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world_size: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank() -> Rank:
    env = os.environ
    return Rank(int(env.get("RANK") or 0), int(env.get("LOCAL_RANK") or 0), int(env.get("WORLD_SIZE") or 1))


def decision(method: str, world_size: int, gradient_checkpointing: bool) -> Parallelism:
    """The planner's decision (the same function), for the world the config was planned for."""
    return decide(method, world_size, gradient_checkpointing=gradient_checkpointing)


def init(device_kind: str) -> Rank:
    """Start the process group under torchrun (no-op for one process); a GPU rank uses cuda:LOCAL_RANK."""
    r = rank()
    if not r.distributed:
        return r
    import torch
    import torch.distributed as dist

    if device_kind == "cuda":
        torch.cuda.set_device(r.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return r


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def training_args(p: Parallelism) -> dict[str, Any]:
    """TrainingArguments for the decision. FSDP: FSDP2, full shard (reshard after forward), a unit per
    decoder block (the model's `_no_split_modules`), FSDP's activation checkpointing when the spec asks
    for checkpointing (the Trainer's own is then off: both at once is refused), sharded checkpoints.
    Mixed precision follows `bf16`/`fp16` (the device), which accelerate turns into FSDP's policy."""
    if p.mode is Mode.FSDP_FULL_SHARD:
        return {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "reshard_after_forward": True,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "activation_checkpointing": p.activation_checkpointing,
                "state_dict_type": "SHARDED_STATE_DICT",
                "cpu_ram_efficient_loading": False,
            },
            "activation_checkpointing": False,
            "activation_checkpointing_kwargs": None,
        }
    if p.mode is Mode.DATA_PARALLEL:
        return {"ddp_find_unused_parameters": False}
    return {}


def enable_fsdp_on_cpu(trainer: Any) -> Any:
    """Install the FSDP plugin accelerate left out on a CPU (gloo) run; see the module docstring."""
    args = trainer.args
    if args.fsdp_plugin_args is None or getattr(trainer, "is_fsdp_enabled", False):
        return trainer
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"FSDP was configured but accelerate runs {state.distributed_type}")
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True
    return trainer


_CLASSES: dict[type, type] = {}


def trainer_class(cls: type) -> type:
    """`cls` (SFTTrainer, DPOTrainer) with `enable_fsdp_on_cpu` applied right after its accelerator is
    created, before anything reads `is_fsdp_enabled`."""
    if cls not in _CLASSES:
        def create_accelerator_and_postprocess(self: Any) -> None:
            cls.create_accelerator_and_postprocess(self)  # type: ignore[attr-defined]
            enable_fsdp_on_cpu(self)

        _CLASSES[cls] = type(cls.__name__, (cls,), {
            "create_accelerator_and_postprocess": create_accelerator_and_postprocess})
    return _CLASSES[cls]


def full_state_dict(model: Any) -> dict[str, Any]:
    """Every rank calls this (it all-gathers the shards); rank 0 gets full CPU tensors, the others {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
