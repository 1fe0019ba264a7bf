"""Resume: a trainer SIGKILLed after a checkpoint continues from it on restart and finishes with the
same number of steps; a half-written checkpoint (killed mid-save) is ignored, not loaded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import instruction_records, make_config, sft_manifest, write_config, write_jsonl

from kubetune.api.spec import Checkpoint
from kubetune_trainer.checkpoints import MARKER, checkpoints, prepare_resume

pytestmark = pytest.mark.trainer


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="2", KUBETUNE_TORCH_THREADS="2", HF_HUB_OFFLINE="1")
    env.pop("KUBETUNE_FAULT_INJECT", None)
    return env


def _steps(result: dict) -> list[int]:
    return [h["step"] for h in result["details"]["trainLog"]]


def _sigkill_after_checkpoint(cmd: list[str], ckdir: Path) -> int:
    """Start the trainer, SIGKILL it once checkpoint-4 is complete; its exit status."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not (ckdir / "checkpoint-4" / MARKER).exists():
            assert proc.poll() is None, "the trainer ended before its second checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return proc.returncode


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume(tiny_model: Path, tmp_path: Path) -> None:
    total = 24
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(80))
    out = tmp_path / "out"
    config = make_config(sft_manifest("lora", maxSteps=total), model=tiny_model, dataset=data, output=out)
    config.spec.checkpoint = Checkpoint(every_steps=2, keep_last=2)
    path = write_config(config, tmp_path / "config.json")
    cmd = [sys.executable, "-m", "kubetune_trainer", "--config", str(path)]

    ckdir = out / "checkpoints"
    assert _sigkill_after_checkpoint(cmd, ckdir) == -signal.SIGKILL
    killed_at = max(step for step, p in checkpoints(ckdir) if (p / MARKER).exists())
    assert 4 <= killed_at < total

    rc = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600).returncode
    result = json.loads((out / "kubetune" / "result.json").read_text())
    assert rc == 0, result.get("message")
    resumed = int(result["details"]["resumedFrom"].split("-")[1])
    assert resumed >= killed_at
    assert result["metrics"]["train.steps"] == total
    # the log of the resumed run: the checkpoint's history up to `resumed`, then the rest, once each
    assert _steps(result)[-1] == total
    assert _steps(result) == sorted(set(_steps(result)))
    assert len(checkpoints(ckdir)) <= 2  # keepLast


@pytest.mark.slow
def test_an_oom_retry_attempt_resumes_the_checkpoint_in_its_smaller_configuration(tiny_model: Path,
                                                                                  tmp_path: Path) -> None:
    """spec.training.oomRetry: attempt 2 (half the micro-batch, twice the accumulation: kubetune.planning.
    oom_retry) resumes attempt 1's checkpoint and finishes the same optimizer steps in its own configuration."""
    from kubetune.api.method_defaults import resolve
    from kubetune.planning.oom_retry import attempt_shapes, with_shape

    total = 12
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(80))
    out = tmp_path / "out"
    manifest = sft_manifest("lora", maxSteps=total, batchSize=4, gradientAccumulationSteps=1,
                            oomRetry={"maxRetries": 1})
    config = make_config(manifest, model=tiny_model, dataset=data, output=out)
    config.spec.checkpoint = Checkpoint(every_steps=2, keep_last=2)
    cmd = [sys.executable, "-m", "kubetune_trainer", "--config", str(write_config(config, tmp_path / "a1.json"))]
    ckdir = out / "checkpoints"
    _sigkill_after_checkpoint(cmd, ckdir)  # SIGKILL: what the kernel's OOM killer sends
    killed_at = max(step for step, p in checkpoints(ckdir) if (p / MARKER).exists())

    second = attempt_shapes(resolve(config.spec))[1]
    assert (second.batch_size, second.gradient_accumulation_steps) == (2, 2)
    config.spec = with_shape(config.spec, second)
    cmd[-1] = str(write_config(config, tmp_path / "a2.json"))
    rc = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600).returncode
    result = json.loads((out / "kubetune" / "result.json").read_text())
    assert rc == 0, result.get("message")
    assert int(result["details"]["resumedFrom"].split("-")[1]) >= killed_at
    assert result["metrics"]["train.steps"] == total and _steps(result)[-1] == total
    import torch

    # the arguments the resumed steps ran with (trainer_state.json keeps the loaded state's batch size)
    args = torch.load(ckdir / f"checkpoint-{total}" / "training_args.bin", weights_only=False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 2)


def _trained_four_steps(tiny_model: Path, tmp_path: Path, run_main):  # type: ignore[no-untyped-def]
    """A finished 4-step LoRA run with checkpoints at steps 2 and 4: its config and output folder."""
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    out = tmp_path / "out"
    config = make_config(sft_manifest("lora", maxSteps=4), model=tiny_model, dataset=data, output=out)
    config.spec.checkpoint = Checkpoint(every_steps=2, keep_last=3)
    rc, _ = run_main(config)
    assert rc == 0
    return config, out


def test_half_written_checkpoint_is_ignored(tiny_model: Path, tmp_path: Path, run_main) -> None:
    config, out = _trained_four_steps(tiny_model, tmp_path, run_main)
    ckdir = out / "checkpoints"
    # a later checkpoint whose save was cut short: files there, truncated, no completion marker
    half = ckdir / "checkpoint-6"
    shutil.copytree(ckdir / "checkpoint-4", half)
    (half / MARKER).unlink()
    (half / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    (half / "optimizer.pt").unlink()

    config.spec.training.max_steps = 8
    rc, result = run_main(config)
    assert rc == 0, result["message"]
    assert result["details"]["resumedFrom"] == "checkpoint-4"
    assert result["metrics"]["train.steps"] == 8
    assert (ckdir / "checkpoint-6" / MARKER).exists(), "step 6 was trained again and saved completely"


def test_prepare_resume_picks_the_newest_complete(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert prepare_resume(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists()
    assert prepare_resume(tmp_path / "missing") is None


def test_restart_after_the_last_checkpoint_takes_no_extra_step(tiny_model: Path, tmp_path: Path, run_main) -> None:
    """Killed after the final checkpoint (during evaluation or export): the restart loads that
    checkpoint and goes on; the Trainer, resumed at max_steps, would take a fifth step."""
    import torch
    from safetensors.torch import load_file

    config, out = _trained_four_steps(tiny_model, tmp_path, run_main)
    first = json.loads((out / "kubetune" / "result.json").read_text())
    trained = load_file(Path(first["artifact"]) / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in trained.items())  # B starts at 0
    (out / "kubetune" / "result.json").unlink()  # as if the pod died before writing its result

    rc, _ = run_main(config)
    second = json.loads((out / "kubetune" / "result.json").read_text())
    assert rc == 0 and second["details"]["resumedFrom"] == "checkpoint-4"
    assert second["metrics"]["train.steps"] == 4 and _steps(second) == [1, 2, 3, 4]
    assert sorted(p.name for _, p in checkpoints(out / "checkpoints")) == ["checkpoint-2", "checkpoint-4"]
    # the artifact is the trained adapter (the checkpoint's weights), not a fresh or retrained one
    again = load_file(Path(second["artifact"]) / "adapter_model.safetensors")
    assert again.keys() == trained.keys()
    assert all(torch.equal(again[k], trained[k]) for k in trained)
