"""kubetune.planning.parallelism: the one decision the planner divides memory by and the trainer
configures (tests/trainer/test_parallelism_consistency.py checks the trainer's side), and the
combination the trainer cannot run, refused by validation with its field."""

from typing import Any

import pytest

from kubetune.api.validate import validate_object
from kubetune.planning.parallelism import Mode, decide


@pytest.mark.parametrize(("method", "world", "mode", "shards"), [
    ("full", 1, Mode.SINGLE, 1), ("lora", 1, Mode.SINGLE, 1), ("qlora", 1, Mode.SINGLE, 1),
    ("full", 2, Mode.FSDP_FULL_SHARD, 2), ("full", 16, Mode.FSDP_FULL_SHARD, 16),
    ("lora", 8, Mode.DATA_PARALLEL, 1), ("qlora", 2, Mode.DATA_PARALLEL, 1),
])
def test_the_mode_and_what_each_rank_holds(method: str, world: int, mode: Mode, shards: int) -> None:
    p = decide(method, world, gradient_checkpointing=True)
    assert (p.mode, p.shards, p.world_size) == (mode, shards, world)
    assert p.replicated == (mode is Mode.DATA_PARALLEL) and p.sharded_checkpoints == (mode is Mode.FSDP_FULL_SHARD)
    assert (f"1/{world}" in p.holds) == (mode is Mode.FSDP_FULL_SHARD)


def _pa(**resources: Any) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "PreferenceAlignment", "metadata": {"name": "p"},
            "spec": {"baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"}, "method": "dpo", "tuning": "full",
                     "dataset": {"uri": "pvc://d/prefs.jsonl", "format": "preference"},
                     "output": {"uri": "pvc://m/p"}, "resources": resources}}


def test_a_full_weight_dpo_over_several_gpus_is_refused_naming_the_field() -> None:
    problems = [p for p in validate_object(_pa(gpus=2)) if p.severity == "error"]
    assert [p.path for p in problems] == ["spec.resources.gpus"]
    assert "reference model sharded" in problems[0].message
    nodes = [p for p in validate_object(_pa(gpus=1, nodes=2)) if p.severity == "error"]
    assert [p.path for p in nodes] == ["spec.resources.nodes"]
    assert not [p for p in validate_object(_pa(gpus=1)) if p.severity == "error"]
    lora = _pa(gpus=2)
    lora["spec"]["tuning"] = "lora"
    assert not [p for p in validate_object(lora) if p.severity == "error"]
