"""The planner and the trainer read one decision (kubetune.planning.parallelism): for each spec, the
planner's mode — how many ways it divides weights, gradients and optimizer states, whether it counts a
DDP gradient copy, activation checkpointing — must be what the trainer actually configures (the
TrainingArguments it builds, and the accelerate FSDP plugin those produce)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_config, sft_manifest

from kubetune.api.resources import parse_resource
from kubetune.api.validate import defaulted
from kubetune.planning import lookup, plan
from kubetune.planning.memory import parallelism
from kubetune.planning.parallelism import Mode
from kubetune.planning.spec_adapter import plan_request
from kubetune_trainer.common import Context, common_args
from kubetune_trainer.modeling import Device

CASES = [  # method, gpus, nodes, gradient checkpointing
    ("full", 1, 1, True),
    ("full", 2, 1, True),
    ("full", 8, 1, False),
    ("full", 4, 2, True),
    ("lora", 2, 1, True),
    ("lora", 1, 2, False),
    ("qlora", 8, 1, True),
    ("qlora", 1, 1, False),
]


def job_manifest(method: str, gpus: int, nodes: int, gc: bool) -> dict[str, Any]:
    m = sft_manifest(method, gradientCheckpointing=gc)
    m["spec"]["baseModel"] = {"uri": "hf://meta-llama/Llama-3.1-8B", "architecture": "llama-3.1-8b"}
    m["spec"]["resources"] = {"gpus": gpus, "nodes": nodes, "gpuMemory": "141Gi"}
    return defaulted(m)


def planner_view(manifest: dict[str, Any]) -> dict[str, Any]:
    req = plan_request(parse_resource(manifest))
    arch = lookup("llama-3.1-8b")
    assert arch is not None
    alone = plan(dataclasses.replace(req, gpus=1, nodes=1), architecture=arch).breakdown
    here = plan(req, architecture=arch).breakdown
    return {
        "mode": parallelism(req).mode,
        "shards": round(alone["optimizer_states"] / here["optimizer_states"]),  # what each rank holds, ÷
        "weights_shards": round(alone["weights"] / here["weights"]),
        "replicated_gradient_copy": here.get("ddp_gradient_buckets", 0) > 0,
        "activation_checkpointing": req.gradient_checkpointing,
        "compute_dtype": req.compute_dtype,
    }


def trainer_view(manifest: dict[str, Any], tmp_path: Path, device: Device) -> tuple[dict[str, Any], dict[str, Any]]:
    from trl import SFTConfig

    config = make_config(manifest, model=tmp_path / "m", dataset=tmp_path / "d.jsonl", output=tmp_path / "out")
    spec = config.spec
    ctx = Context(config=config, spec=spec, method=str(spec.method), device=device, output=tmp_path / "out", log=print)
    kwargs = common_args(ctx)
    args = SFTConfig(**{**kwargs, "bf16": False, "fp16": False, "use_cpu": True})  # buildable without a GPU
    plugin = args.fsdp_plugin_args
    world = config.world_size
    if plugin is not None:
        from accelerate.utils import FullyShardedDataParallelPlugin

        built = FullyShardedDataParallelPlugin(**plugin)
        if kwargs["bf16"]:
            built.set_mixed_precision("bf16")  # what accelerate does with bf16=True
        full_shard = built.fsdp_version == 2 and built.reshard_after_forward is True
        view = {
            "mode": Mode.FSDP_FULL_SHARD if full_shard else "fsdp, not full-shard",
            "shards": world, "weights_shards": world,
            "replicated_gradient_copy": False,
            "activation_checkpointing": bool(built.activation_checkpointing or args.activation_checkpointing),
            "param_dtype": built.mixed_precision_policy.param_dtype if built.mixed_precision_policy else torch.float32,
            "sharded_checkpoints": "SHARDED" in str(built.state_dict_type),
        }
    else:
        view = {
            "mode": Mode.DATA_PARALLEL if world > 1 else Mode.SINGLE,  # the Trainer wraps in DDP under torchrun
            "shards": 1, "weights_shards": 1,
            "replicated_gradient_copy": world > 1,
            "activation_checkpointing": bool(args.activation_checkpointing),
            "sharded_checkpoints": False,
        }
        if world > 1:
            assert args.ddp_find_unused_parameters is False
    return view, kwargs


@pytest.mark.parametrize(("method", "gpus", "nodes", "gc"), CASES, ids=[f"{m}-{g}x{n}-gc{int(c)}" for m, g, n, c in CASES])
def test_the_trainer_configures_what_the_planner_planned(method: str, gpus: int, nodes: int, gc: bool,
                                                         tmp_path: Path) -> None:
    manifest = job_manifest(method, gpus, nodes, gc)
    planned = planner_view(manifest)
    gpu = Device("cuda", torch.bfloat16, True, False)
    trained, kwargs = trainer_view(manifest, tmp_path, gpu)
    for key in ("mode", "shards", "weights_shards", "replicated_gradient_copy", "activation_checkpointing"):
        assert trained[key] == planned[key], f"{key}: planner {planned[key]!r}, trainer {trained[key]!r}"
    if planned["mode"] is Mode.FSDP_FULL_SHARD:
        # the planner's FSDP regime computes in bf16 params; the trainer's FSDP mixed precision policy does
        assert planned["compute_dtype"] == "bfloat16" and trained["param_dtype"] == torch.bfloat16
        assert trained["sharded_checkpoints"]
        assert kwargs["activation_checkpointing"] is False, "FSDP's own checkpointing, not the Trainer's as well"


@pytest.mark.parametrize(("method", "gpus", "nodes", "gc"), [c for c in CASES if c[0] == "full"])
def test_a_cpu_job_shards_in_fp32_as_planned(method: str, gpus: int, nodes: int, gc: bool, tmp_path: Path) -> None:
    manifest = job_manifest(method, gpus, nodes, gc)
    cpu = Device("cpu", torch.float32, False, False)
    trained, kwargs = trainer_view(manifest, tmp_path, cpu)
    assert kwargs["bf16"] is False and kwargs["use_cpu"] is True
    if gpus * nodes > 1:
        assert trained["mode"] is Mode.FSDP_FULL_SHARD and trained["param_dtype"] == torch.float32
