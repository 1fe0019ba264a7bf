"""`kubetune run` with resources.gpus > 1 and nodes > 1: the pod's torchrun command (kubetune-trainer
launch), one gloo process per requested GPU with --device cpu, the other nodes' launchers on loopback."""

import io
import json
from pathlib import Path

import pytest
from test_local_run import ftj, manifest, workdir  # noqa: F401  (workdir: the module's fixture)

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
pytest.importorskip("torch")

from kubetune.local import EXIT_SUCCEEDED, run  # noqa: E402
from kubetune.local.runner import trainer_commands  # noqa: E402


@pytest.mark.parametrize(("method", "wrapped"), [("lora", "DistributedDataParallel"), ("full", "FSDPLlamaForCausalLM")])
def test_a_two_gpu_job_runs_a_process_per_gpu_and_evaluates(workdir: Path, method: str, wrapped: str) -> None:  # noqa: F811
    """LoRA data parallel and a full fine-tune FSDP-sharded, each evaluated on every rank in step (FSDP
    gathers each block for every forward of the generation) and promoted by rank 0."""
    name = f"tiny-2gpu-{method}"
    job = ftj(name, [{"metric": "eval.loss", "op": "<", "threshold": 1000}])
    job["spec"]["resources"] = {"gpus": 2}
    job["spec"]["method"] = method
    if method == "full":
        del job["spec"]["lora"]
    out, err = io.StringIO(), io.StringIO()
    code, outcomes = run([manifest(workdir, f"{name}.yaml", job)], device="cpu", out=out, err=err, tty=False)
    text = out.getvalue()
    assert code == EXIT_SUCCEEDED, text + (workdir / "runs" / name / "kubetune" / "trainer.log").read_text()[-4000:]
    assert outcomes[0].phase == "Succeeded" and outcomes[0].reason == "GatesPassed"
    assert "-m kubetune_trainer launch --nproc-per-node=2 --standalone -- --config" in text
    state = workdir / "runs" / name / "kubetune"
    log = (state / "trainer.log").read_text()
    assert f"trained as {wrapped} on 2 ranks" in log
    promoted = workdir / "runs" / "promoted" / name
    assert outcomes[0].promoted == f"file://{promoted}"
    assert (promoted / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    result = json.loads((state / "result.json").read_text())
    worker = json.loads((state / "result-rank1.json").read_text())
    assert result["metrics"]["train.steps"] == worker["metrics"]["train.steps"] == 2
    assert "golden.accuracy" in result["metrics"] and "eval.loss" in result["metrics"]
    assert json.loads((state / "status.json").read_text())["phase"] == "Succeeded"


def test_a_two_node_job_starts_a_launcher_per_node_as_the_indexed_job_does(tmp_path: Path) -> None:
    commands = trainer_commands("python3", tmp_path / "c.json", gpus=2, nodes=2)
    assert len(commands) == 2
    for index, cmd in enumerate(commands):
        assert cmd[:4] == ["python3", "-m", "kubetune_trainer", "launch"]
        assert "--nproc-per-node=2" in cmd and "--nnodes=2" in cmd and f"--node-rank={index}" in cmd
        assert "--master-addr=127.0.0.1" in cmd and cmd[-3:] == ["--", "--config", str(tmp_path / "c.json")]
    assert commands[0][commands[0].index("--nnodes=2") + 3] == commands[1][commands[1].index("--nnodes=2") + 3]  # port
    assert trainer_commands("python3", tmp_path / "c.json", gpus=1, nodes=1) == [
        ["python3", "-m", "kubetune_trainer", "--config", str(tmp_path / "c.json")]]
