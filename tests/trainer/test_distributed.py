"""Distributed training on CPU for real: torchrun with the gloo backend, two processes, on the tiny
model, started with the command the operator renders (kubetune.render.job.trainer_command, the
`kubetune-trainer launch` the pod runs).

- full fine-tune ⇒ FSDP2 full-shard: both ranks step together, sharded checkpoints, the artifact
  gathered on rank 0 loads in one process and gives the logits of the run's final sharded weights;
- LoRA ⇒ data parallel (DDP): the adapter moves, rank 0 alone writes the artifact and result.json;
- two "nodes": two launchers on loopback with --nnodes=2, each with the Indexed Job's command and env;
- a rank killed ⇒ exit 9 (RankFailed, retried) with that result; the retry resumes from the sharded
  checkpoint and finishes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import instruction_records, make_config, sft_manifest, write_config, write_jsonl

from kubetune.api.exit_codes import PERMANENT_EXIT_CODES, reason_for
from kubetune.api.resources import parse_resource
from kubetune.api.trainer_contract import EXIT_CODES, TrainerConfig
from kubetune.api.validate import defaulted
from kubetune.render.job import CONFIG_PATH, render_children, trainer_command
from kubetune.render.settings import RenderSettings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # kubetune-trainer, installed with the package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def distributed_config(tmp_path: Path, tiny_model: Path, method: str, *, gpus: int = 2, nodes: int = 1,
                       steps: int = 4, every: int = 2) -> TrainerConfig:
    manifest = sft_manifest(method, maxSteps=steps, batchSize=2)
    manifest["spec"]["resources"] = {"gpus": gpus, "nodes": nodes}
    manifest["spec"]["checkpoint"] = {"everySteps": every, "keepLast": 2}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    assert config.world_size == gpus * nodes and config.device == "cpu"
    return config


def launch(config: TrainerConfig, path: Path, *, gpus: int = 2, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The pod's command for `gpus` per node (config path swapped for the local file): one gloo process per GPU."""
    write_config(config, path)
    cmd = trainer_command(str(path), gpus=gpus, nodes=1, port=0)
    assert cmd[:2] == ["kubetune-trainer", "launch"] and f"--nproc-per-node={gpus}" in cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=base_env(), cwd=path.parent)


def results(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    d = out / "kubetune"
    return json.loads((d / "result.json").read_text()), json.loads((d / "result-rank1.json").read_text())


def train_on_two_ranks(tmp_path: Path, tiny_model: Path, method: str) -> tuple[Path, dict[str, Any], str]:
    """4 steps on two gloo ranks; checks both stepped together. Returns (output, rank 0's result, stderr)."""
    config = distributed_config(tmp_path, tiny_model, method)
    proc = launch(config, tmp_path / "config.json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(config.sources.output)
    main, worker = results(out)
    assert main["outcome"] == "succeeded", main["message"]
    assert worker["message"] == "worker rank finished"
    # both ranks stepped together: the same steps and the same (all-reduced) loss at every step
    assert main["metrics"]["train.steps"] == worker["metrics"]["train.steps"] == 4
    assert math.isfinite(main["metrics"]["train.loss"]) and main["metrics"]["train.loss"] == worker["metrics"]["train.loss"]
    return out, main, proc.stderr


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    ids = tokenizer("patient 3 reports fever since 2 days. what should i do?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_fine_tune_is_fsdp_sharded_and_the_gathered_model_loads_in_one_process(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, main, stderr = train_on_two_ranks(tmp_path, tiny_model, "full")
    assert "trained as FSDPLlamaForCausalLM on 2 ranks: each held 1/2 of the weights" in stderr
    # sharded checkpoints: one shard file per rank, no full copy of the weights
    ckpt = out / "checkpoints" / "checkpoint-4"
    shards = sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], list(ckpt.iterdir())
    assert not list(ckpt.glob("*.safetensors"))
    # the artifact: full weights gathered on rank 0, written once, loading in this (single) process
    assert main["artifact"] == str(out / "model")
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(moved) == len(list(model.parameters())), "every weight moved"
    # ... and it is the run's final sharded state: the DCP shards read back in one process give the same logits
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(ckpt / "pytorch_model_fsdp_0"), str(tmp_path / "final.pt"))
    saved = torch.load(tmp_path / "final.pt", weights_only=False)
    state = saved.get("model", saved)
    final = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    missing, unexpected = final.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    final.tie_weights()
    assert torch.allclose(logits(model, tok), logits(final, tok), atol=1e-5)
    assert not torch.allclose(logits(model, tok), logits(base, tok), atol=1e-3)


def test_lora_runs_data_parallel_and_rank_0_alone_writes_the_artifact(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out, _, stderr = train_on_two_ranks(tmp_path, tiny_model, "lora")
    assert "trained as DistributedDataParallel on 2 ranks: each held a whole copy" in stderr
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "LoRA B starts at zero: it moved"
    # one artifact, one result (the worker's own end aside), the termination message is rank 0's
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["adapter", "checkpoints", "kubetune"]
    assert json.loads((out / "termination-log").read_text())["outcome"] == "succeeded"
    assert json.loads((out / "termination-log").read_text()).get("message") != "worker rank finished"


def test_two_nodes_rendezvous_with_the_indexed_jobs_command_and_env(tiny_model: Path, tmp_path: Path) -> None:
    """Two launchers (two "pods") on loopback, each with the container command and env the Indexed Job
    renders; the kubelet's part done here: fieldRefs resolved, $(VAR) expanded. The one value that
    differs is KUBETUNE_MASTER_ADDR: pod 0's name behind the headless Service is 127.0.0.1 here."""
    config = distributed_config(tmp_path, tiny_model, "full", gpus=1, nodes=2)
    path = write_config(config, tmp_path / "config.json")
    manifest = sft_manifest("full")
    manifest["spec"]["resources"] = {"gpus": 1, "nodes": 2}
    manifest["spec"]["dataset"]["uri"] = "pvc://data/train.jsonl"
    manifest["spec"]["baseModel"]["uri"] = "pvc://models/tiny"
    manifest["spec"]["output"]["uri"] = "pvc://out/run"
    manifest["metadata"]["namespace"] = "ml"
    port = free_port()
    children = render_children(parse_resource(defaulted(manifest)), RenderSettings(rendezvous_port=port))
    container = children.job["spec"]["template"]["spec"]["containers"][0]
    assert children.job["spec"]["completionMode"] == "Indexed" and children.service is not None
    procs = []
    for index in (0, 1):
        env: dict[str, str] = {}
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif e["name"] == "JOB_COMPLETION_INDEX":
                env[e["name"]] = str(index)
            elif e["name"] in ("POD_NAME", "POD_NAMESPACE"):
                env[e["name"]] = f"{children.job['metadata']['name']}-{index}" if e["name"] == "POD_NAME" else "ml"
        assert env["KUBETUNE_MASTER_ADDR"] == f"{children.job['metadata']['name']}-0.{children.service['metadata']['name']}"
        env.update(KUBETUNE_MASTER_ADDR="127.0.0.1", KUBETUNE_CONFIG=str(path), HF_HOME=str(tmp_path / "hf"))
        command = [a.replace(CONFIG_PATH, str(path)) for a in container["command"]]
        for name, value in env.items():
            command = [a.replace(f"$({name})", value) for a in command]
        assert f"--node-rank={index}" in command and "--nnodes=2" in command
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=base_env(**env), cwd=tmp_path))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    main, worker = results(Path(config.sources.output))
    assert main["outcome"] == "succeeded" and worker["message"] == "worker rank finished"
    assert main["metrics"]["train.steps"] == worker["metrics"]["train.steps"] == 4
    assert (Path(config.sources.output) / "model" / "model.safetensors").is_file()


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the trainer process with RANK=`rank` below the launcher."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_killed_rank_fails_typed_and_the_retry_resumes_from_the_sharded_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    config = distributed_config(tmp_path, tiny_model, "full", steps=40, every=2)
    path = write_config(config, tmp_path / "config.json")
    out = Path(config.sources.output)
    cmd = trainer_command(str(path), gpus=2, nodes=1, port=0)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env(), cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "checkpoint-2" / "kubetune-complete.json").is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.1)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_CODES["RankFailed"] == 9, err[-3000:]
    assert reason_for(proc.returncode) == "RankFailed" and proc.returncode not in PERMANENT_EXIT_CODES  # retried
    failed = json.loads((out / "kubetune" / "result.json").read_text())
    assert (failed["outcome"], failed["reason"]) == ("failed", "RankFailed")
    assert failed["message"].startswith("rank 1 (local rank 1) was killed by SIGKILL")
    assert json.loads((out / "termination-log").read_text())["reason"] == "RankFailed"
    done = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
                  if (p / "kubetune-complete.json").is_file())
    assert done and done[-1] < 40, "killed before the end"

    # the Job's retry: the same command resumes from the newest complete sharded checkpoint
    retry = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=base_env(), cwd=tmp_path)
    assert retry.returncode == 0, retry.stderr[-4000:]
    result = json.loads((out / "kubetune" / "result.json").read_text())
    assert result["outcome"] == "succeeded" and result["metrics"]["train.steps"] == 40
    resumed = result["details"]["resumedFrom"]
    assert int(resumed.split("-")[1]) >= done[-1], (resumed, done)
    assert (out / "checkpoints" / resumed / "pytorch_model_fsdp_0" / "__1_0.distcp").is_file() or int(resumed.split("-")[1]) > 0
    assert "resuming from " + resumed in retry.stderr


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_single_process_refuses_a_config_planned_for_two(tiny_model: Path, tmp_path: Path, method: str, run_main: Any) -> None:
    config = distributed_config(tmp_path, tiny_model, method)
    rc, result = run_main(config)
    assert (rc, result["reason"]) == (1, "TrainerError")
    assert "planned for 2 process(es)" in result["message"]


def test_a_permanent_failure_on_the_ranks_keeps_its_own_exit_code(tiny_model: Path, tmp_path: Path) -> None:
    """Every rank finds the data invalid (exit 3): the launcher exits 3, not torchrun's 1, so the Job's
    podFailurePolicy fails it at once; rank 0's result names the reason."""
    config = distributed_config(tmp_path, tiny_model, "lora")
    write_jsonl(Path(config.sources.dataset), ["{not json"] * 40)
    proc = launch(config, tmp_path / "config.json")
    assert proc.returncode == EXIT_CODES["DataInvalid"] == 3, proc.stderr[-3000:]
    assert proc.returncode in PERMANENT_EXIT_CODES
    result = json.loads((Path(config.sources.output) / "kubetune" / "result.json").read_text())
    assert (result["outcome"], result["reason"]) == ("failed", "DataInvalid")


def test_a_restart_after_the_last_sharded_checkpoint_exports_without_another_step(tiny_model: Path, tmp_path: Path) -> None:
    """Killed after the final checkpoint (during evaluation or export): the retry loads the sharded
    checkpoint, takes no extra step and gathers the same weights into the artifact."""
    from safetensors.torch import load_file

    config = distributed_config(tmp_path, tiny_model, "full", steps=2, every=2)
    first = launch(config, tmp_path / "config.json")
    assert first.returncode == 0, first.stderr[-4000:]
    out = Path(config.sources.output)
    weights = load_file(str(out / "model" / "model.safetensors"))
    shutil.rmtree(out / "model")  # as if the pod died while exporting
    (out / "kubetune" / "result.json").unlink()
    again = launch(config, tmp_path / "config.json")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "checkpoint-2 is the last step of training" in again.stderr
    result = json.loads((out / "kubetune" / "result.json").read_text())
    assert result["outcome"] == "succeeded" and result["details"]["resumedFrom"] == "checkpoint-2"
    reloaded = load_file(str(out / "model" / "model.safetensors"))
    assert reloaded.keys() == weights.keys() and all(torch.equal(reloaded[k], weights[k]) for k in weights)
