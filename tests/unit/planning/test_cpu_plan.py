"""A CPU job (`resources.gpus: 0`) is planned as the trainer runs it on CPU and checked against
`resources.memory`, the pod's memory limit; the verdict says so. GPU plans are unchanged."""

import dataclasses
import json
from typing import Any

import pytest

from kubetune.api.resources import parse_resource
from kubetune.cli.plan import render_plan_text
from kubetune.planning import CannotPlan, PlanRequest, lookup, parse_quantity, plan
from kubetune.planning.admission import fit_problems, plan_summary
from kubetune.planning.memory import CPU_PROCESS_BYTES, CUDA_CONTEXT_BYTES, estimate
from kubetune.planning.spec_adapter import plan_request

GiB = 2**30


def cpu(**kw: Any) -> PlanRequest:
    return PlanRequest(**{"model": "smollm2-135m", "method": "lora", "compute_dtype": "float32", "max_seq_length": 512,
                          "batch_size": 4, "gpus": 0, "memory_bytes": 4 * GiB, **kw})


def ftj(resources: dict[str, Any], method: str = "qlora") -> Any:
    return parse_resource({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "cpu"},
        "spec": {"baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}, "method": method,
                 "dataset": {"uri": "pvc://data/train.jsonl", "format": "instruction"},
                 "training": {"maxSeqLength": 512}, "resources": resources,
                 "output": {"uri": "pvc://models/cpu"}},
    })


def test_the_limit_is_the_pods_memory_not_the_gpus() -> None:
    small, large = plan(cpu(memory_bytes=2 * GiB)), plan(cpu(memory_bytes=8 * GiB, gpu_memory_bytes=1))
    assert small.peak_bytes == large.peak_bytes and small.cpu_only
    assert not small.fits and small.limit_bytes == 2 * GiB
    assert large.fits and large.limit_bytes == 8 * GiB  # gpu_memory_bytes plays no part
    assert (large.memory_bytes, large.gpu_memory_bytes) == (8 * GiB, None)


def test_no_cuda_context_but_the_trainer_process() -> None:
    arch = lookup("smollm2-135m")
    assert arch is not None
    on_cpu = estimate(cpu(), arch)
    on_gpu = estimate(dataclasses.replace(cpu(), gpus=1, memory_bytes=None), arch)
    assert on_cpu.breakdown["runtime_overhead"] - on_gpu.breakdown["runtime_overhead"] == (
        CPU_PROCESS_BYTES - CUDA_CONTEXT_BYTES)
    assert on_cpu.peak_bytes - on_gpu.peak_bytes == CPU_PROCESS_BYTES - CUDA_CONTEXT_BYTES
    assert sum(on_cpu.breakdown.values()) == on_cpu.peak_bytes


def test_summary_and_json_say_memory_per_pod() -> None:
    fits = plan(cpu(memory_bytes=8 * GiB))
    assert "needs ~" in fits.summary() and "memory per pod (CPU job); 8 GiB available in resources.memory (" in fits.summary()
    assert "GPU" not in fits.summary()
    d = fits.to_dict()
    assert d["cpuOnly"] is True and d["memoryBytes"] == 8 * GiB and "gpuMemoryBytes" not in d
    assert d["headroomBytes"] == d["memoryBytes"] - d["peakBytes"]
    json.dumps(d)
    short = plan(cpu(memory_bytes=2 * GiB)).summary()
    assert "memory per pod (CPU job); 2 GiB available in resources.memory; " in short


def test_gpu_plans_keep_their_words() -> None:
    p = plan(PlanRequest(model="llama-3-8b", method="lora"))
    assert not p.cpu_only and p.gpu_memory_bytes == 80 * GiB and p.memory_bytes is None
    assert "per GPU; 80 GiB available (" in p.summary()
    d = p.to_dict()
    assert d["cpuOnly"] is False and d["gpuMemoryBytes"] == 80 * GiB and "memoryBytes" not in d


def test_text_output_names_the_pod_limit() -> None:
    text = render_plan_text(plan(cpu(memory_bytes=2 * GiB)))
    assert "on CPU (one process)" in text and "per pod (CPU job), at the" in text
    assert "memory per pod (CPU job)" in text and "trainer process + allocator" in text
    assert "GPU memory" not in text and "CUDA context + allocator" not in text
    assert "DOES NOT FIT: LoRA fine-tune of smollm2-135m needs ~" in text


def test_suggestions_on_cpu_are_ones_the_cpu_trainer_takes() -> None:
    """No 8-bit optimizer (bitsandbytes' need CUDA: the trainer uses adamw_torch) and no GPUs."""
    p = plan(cpu(method="full", optimizer="adamw_torch", memory_bytes=1 * GiB + 512 * 2**20))
    assert not p.fits and p.suggestions
    for s in p.suggestions:
        assert "training.optimizer" not in s.change and "resources.gpus" not in s.change, s
    assert any(s.change.get("method") == "qlora" for s in p.suggestions)  # QLoRA runs on CPU too


@pytest.mark.parametrize(("changes", "field"), [
    ({"gpus": -1}, "gpus"),
    ({"nodes": 0}, "nodes"),
    ({"memory_bytes": None}, "memory_bytes"),
    ({"memory_bytes": 0}, "memory_bytes"),
])
def test_cpu_request_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cpu(**changes)


def test_spec_adapter_plans_what_the_cpu_trainer_runs() -> None:
    req = plan_request(ftj({"gpus": 0, "memory": "6Gi"}))
    assert req.cpu_only and req.world_size == 1
    assert req.memory_bytes == parse_quantity("6Gi")
    assert req.compute_dtype == "float32"  # the trainer computes in fp32 on CPU, 4-bit included
    assert req.optimizer == "adamw_torch"  # qlora's default paged_adamw_8bit needs CUDA
    two = plan_request(ftj({"gpus": 0, "memory": "6Gi", "nodes": 2}))
    assert two.cpu_only and two.world_size == 2  # one gloo process per pod
    gpu = plan_request(ftj({"gpus": 2}))
    assert (gpu.compute_dtype, gpu.optimizer, gpu.world_size) == ("bfloat16", "paged_adamw_8bit", 2)


def test_cpu_job_without_memory_cannot_be_planned() -> None:
    """The schema refuses it (CEL); a job that bypassed it still gets a clear answer from the planner."""
    with pytest.raises(CannotPlan) as info:
        plan_request(ftj({"gpus": 0}))
    assert str(info.value) == "a CPU job needs resources.memory so the plan can be checked"
    assert info.value.field == "spec.resources.memory"
    assert plan_request(ftj({"gpus": 0}), memory="3Gi").memory_bytes == 3 * GiB


def test_fit_problem_and_plan_summary_name_the_pod_memory() -> None:
    job = ftj({"gpus": 0, "memory": "1Gi"}, method="lora")
    [problem] = fit_problems(job)
    assert problem.path == "spec.resources.memory" and "memory per pod (CPU job)" in problem.message
    summary = plan_summary(plan(plan_request(job)))
    assert summary.memory_bytes == 1 * GiB and summary.gpu_memory_bytes is None and summary.fits is False
    gpu = plan_summary(plan(plan_request(ftj({"gpus": 1}))))
    assert gpu.gpu_memory_bytes == 80 * GiB and gpu.memory_bytes is None
