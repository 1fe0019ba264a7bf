"""`kubetune plan` and the fit check in `kubetune validate` (the webhook uses the same function)."""

import json
from pathlib import Path

import pytest
import yaml

from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[2]
QLORA_70B = ROOT / "examples" / "llama3-70b-qlora-triage.yaml"


def _full_70b(tmp_path: Path) -> Path:
    obj = yaml.safe_load(QLORA_70B.read_text())
    obj["spec"]["method"] = "full"
    del obj["spec"]["quantization"], obj["spec"]["lora"]
    obj["spec"]["training"]["optimizer"] = "adamw_torch"
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(obj))
    return path


def test_70b_qlora_fits_on_one_80gb_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(QLORA_70B), "-o", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is True
    assert {"fits", "peakBytes", "gpuMemoryBytes", "breakdown", "headroomBytes", "suggestions"} <= set(plan)
    assert 30 * 2**30 < plan["peakBytes"] < 80 * 2**30


def test_70b_full_does_not_fit_and_suggests_qlora(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(_full_70b(tmp_path)), "-o", "json"]) == 2
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is False and plan["peakBytes"] > 2**40  # ~1 TiB: 16 bytes per parameter
    best = next(s for s in plan["suggestions"] if s["fits"])
    assert best["change"] == {"method": "qlora"}


def test_text_output_has_breakdown_and_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(_full_70b(tmp_path))]) == 2
    out = capsys.readouterr().out
    assert "base weights" in out and "optimizer states" in out and "qlora" in out


def test_validate_refuses_what_cannot_fit_with_the_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(_full_70b(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "spec.resources.gpuMemory: does not fit: full fine-tune of llama-3-70b needs ~1" in out
    assert "80 GiB available; method qlora would need ~" in out


def test_gpu_memory_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(QLORA_70B), "--gpu-memory", "24Gi"]) == 2


def test_bad_input_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = yaml.safe_load(QLORA_70B.read_text())
    obj["spec"]["baseModel"] = {"uri": "hf://acme/secret-model"}
    path = tmp_path / "unknown.yaml"
    path.write_text(yaml.safe_dump(obj))
    assert main(["plan", "-f", str(path)]) == 1
    assert "spec.baseModel.architecture" in capsys.readouterr().err
    assert main(["plan", "-f", str(tmp_path / "missing.yaml")]) == 1


def test_dpo_plans_with_the_referenced_job(capsys: pytest.CaptureFixture[str]) -> None:
    dpo = ROOT / "examples" / "triage-dpo.yaml"
    assert main(["plan", "-f", str(dpo), "-f", str(QLORA_70B), "-o", "json"]) == 0
    assert main(["plan", "-f", str(dpo)]) == 1  # alone, its base model is unknown


def _cpu_job(tmp_path: Path, memory: str) -> Path:
    obj = yaml.safe_load(QLORA_70B.read_text())
    obj["spec"]["baseModel"] = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
    obj["spec"]["training"] = {"maxSeqLength": 512}
    obj["spec"]["resources"] = {"gpus": 0, "memory": memory, "cpu": "2"}
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(obj))
    return path


def test_cpu_job_is_planned_against_pod_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _cpu_job(tmp_path, "16Gi")
    assert main(["plan", "-f", str(path), "-o", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["cpuOnly"] is True and plan["memoryBytes"] == 16 * 2**30 and "gpuMemoryBytes" not in plan
    assert "memory per pod (CPU job)" in plan["summary"]
    assert main(["plan", "-f", str(path), "--memory", "1Gi"]) == 2
    out = capsys.readouterr().out
    assert "memory per pod (CPU job)" in out and "DOES NOT FIT" in out and "GPU memory" not in out


def test_memory_flags_that_do_not_apply_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(_cpu_job(tmp_path, "16Gi")), "--gpu-memory", "1Gi"]) == 0  # ignored
    assert "--gpu-memory does not apply to a CPU job (resources.gpus 0); use --memory" in capsys.readouterr().err
    assert main(["plan", "-f", str(QLORA_70B), "--memory", "1Gi"]) == 0
    assert "--memory applies to CPU jobs only" in capsys.readouterr().err
