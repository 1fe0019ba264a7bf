"""Where the trainer computes, as the operator renders it: a CPU job (`resources.gpus: 0`) trains on
CPU from its rendered config; a GPU job whose pod sees no GPU ends GPUUnavailable (exit 7, permanent)
with a message naming what was requested, before the data preflight or any model load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import instruction_records, sft_manifest, write_config, write_jsonl

from kubetune.api.exit_codes import PERMANENT_EXIT_CODES
from kubetune.api.resources import parse_resource
from kubetune.api.trainer_contract import CHECKED_DATA_DIR, EXIT_CODES, ReportChannel, TrainerConfig
from kubetune.api.validate import defaulted
from kubetune.render.job import render_children
from kubetune.render.settings import RenderSettings

pytestmark = pytest.mark.trainer
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def rendered_config(manifest: dict[str, Any], *, model: Path, dataset: Path, output: Path) -> TrainerConfig:
    """The trainer config exactly as the operator puts it in the ConfigMap, with the pod's paths
    pointed at local folders."""
    manifest["metadata"].update(namespace="ns", uid="uid-1")
    spec = manifest["spec"]
    spec["baseModel"]["uri"], spec["dataset"]["uri"], spec["output"]["uri"] = (
        "pvc://models/tiny", "pvc://data/train.jsonl", "pvc://runs/out")
    children = render_children(parse_resource(defaulted(manifest)), RenderSettings())
    config = TrainerConfig.model_validate_json(children.configmap["data"]["config.json"])
    config.sources = config.sources.model_copy(update={"model": str(model), "dataset": str(dataset),
                                                       "output": str(output), "output_uri": None,
                                                       "checked_data": str(output / CHECKED_DATA_DIR)})
    config.report = ReportChannel(termination_log=str(output / "termination-log"))
    return config


def test_cpu_job_trains_on_cpu(tiny_model: Path, tmp_path: Path, run_main: Any) -> None:
    """QLoRA too: bitsandbytes runs the 4-bit base on CPU."""
    manifest = sft_manifest("qlora")
    manifest["spec"]["resources"] = {"gpus": 0, "memory": "4Gi", "cpu": "2"}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(30))
    config = rendered_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    assert (config.device, config.world_size) == ("cpu", 1)
    from kubetune_trainer.main import main

    # the two pods' commands, in order: the data preflight's, then the trainer's
    assert main(["--config", str(write_config(config, tmp_path / "config.json")), "--stage", "preflight"]) == 0
    rc, result = run_main(config)
    assert (rc, result["outcome"]) == (0, "succeeded"), result.get("message")
    assert result["metrics"]["train.steps"] == 3


@needs_no_gpu
def test_gpu_job_without_a_gpu_fails_gpu_unavailable(tmp_path: Path) -> None:
    manifest = sft_manifest("lora")
    manifest["spec"]["resources"] = {"gpus": 2, "memory": "64Gi"}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(30))
    out = tmp_path / "out"
    # the model does not exist: reaching the load would end ModelUnavailable instead
    config = rendered_config(manifest, model=tmp_path / "no-such-model", dataset=data, output=out)
    assert (config.device, config.world_size) == ("cuda", 2)
    path = write_config(config, tmp_path / "config.json")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")}
    proc = subprocess.run([sys.executable, "-m", "kubetune_trainer", "--config", str(path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == EXIT_CODES["GPUUnavailable"] == 7, proc.stderr[-2000:]
    assert proc.returncode in PERMANENT_EXIT_CODES  # the Job fails at once: a retry gets the same pod shape
    result = json.loads((out / "kubetune" / "result.json").read_text())
    assert (result["outcome"], result["reason"]) == ("failed", "GPUUnavailable")
    message = result["message"]
    assert message.startswith("the job requested 2 GPUs (resources.gpus) but the pod sees no CUDA device; ")
    assert "resources.gpus: 0" in message and "Traceback" not in message and "Traceback" not in proc.stderr
    if torch.version.cuda is None:
        assert "built without CUDA" in message
    else:
        assert "neither CUDA_VISIBLE_DEVICES nor NVIDIA_VISIBLE_DEVICES is set" in message
    assert json.loads((out / "termination-log").read_text())["reason"] == "GPUUnavailable"
    assert not (out / "kubetune" / "data").exists(), "failed before the data preflight"


def test_the_message_says_what_the_pod_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_trainer.failures import gpu_unavailable

    monkeypatch.setattr(torch.version, "cuda", None)
    failure = gpu_unavailable(1)
    assert failure.reason == "GPUUnavailable"
    assert failure.message.startswith("the job requested 1 GPU (resources.gpus) but the pod sees no CUDA device; ")
    assert "is built without CUDA: the trainer image needs a CUDA build of torch" in failure.message
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    message = gpu_unavailable(8).message
    assert "requested 8 GPUs" in message and "NVIDIA_VISIBLE_DEVICES='void'" in message
    assert "device plugin and container runtime" in message
    local = gpu_unavailable(0).message  # `kubetune run --device cuda` of a CPU job
    assert local.startswith("device cuda was requested but this process sees no CUDA device; ")
    assert local.endswith("or run on CPU (--device cpu)")


def test_cpu_plan_covers_what_the_trainer_process_holds(tiny_model: Path, tmp_path: Path) -> None:
    """The pod's memory limit counts the whole process: the CPU plan's peak must not be below the
    trainer's measured peak resident memory (and not far above it either)."""
    from kubetune.planning import plan
    from kubetune.planning.hfconfig import read_config_dir
    from kubetune.planning.spec_adapter import plan_request

    manifest = sft_manifest("lora")
    manifest["spec"]["resources"] = {"gpus": 0, "memory": "4Gi"}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(30))
    config = rendered_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    path = write_config(config, tmp_path / "config.json")
    code = ("import resource, sys\nfrom kubetune_trainer.main import main\n"
            f"assert main(['--config', {str(path)!r}, '--stage', 'preflight']) == 0\n"
            f"rc = main(['--config', {str(path)!r}])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert "MAXRSS" in proc.stdout, proc.stderr[-2000:]
    _, kib, rc = next(line for line in proc.stdout.splitlines() if line.startswith("MAXRSS")).split()
    assert rc == "0", proc.stderr[-2000:]
    measured = int(kib) * 1024
    planned = plan(plan_request(parse_resource(defaulted(manifest))), architecture=read_config_dir(tiny_model))
    assert planned.cpu_only and planned.fits
    assert measured <= planned.peak_bytes <= 1.5 * measured, (measured / 2**20, planned.peak_bytes / 2**20)


def test_cpu_swaps_the_optimizers_the_planner_swaps() -> None:
    from kubetune.api.enums import CUDA_ONLY_OPTIMIZERS
    from kubetune_trainer.modeling import Device, optimizer_name

    on_cpu, on_gpu = Device("cpu", torch.float32, False, False), Device("cuda", torch.bfloat16, True, False)
    for name in CUDA_ONLY_OPTIMIZERS:
        assert optimizer_name(name, on_cpu, lambda _: None) == "adamw_torch"
        assert optimizer_name(name, on_gpu, lambda _: None) != "adamw_torch"
    assert optimizer_name("adafactor", on_cpu, lambda _: None) == "adafactor"
