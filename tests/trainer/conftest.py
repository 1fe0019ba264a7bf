"""Fixtures for the trainer tests: a tiny random Llama + BPE tokenizer, generated data, configs."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

pytest.importorskip("torch")
pytest.importorskip("trl")

import torch

torch.set_num_threads(2)

from kubetune.api.resources import parse_resource  # noqa: E402
from kubetune.api.trainer_contract import ReportChannel, Sources, TrainerConfig  # noqa: E402
from kubetune.render.trainer_config import build_trainer_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SYMPTOMS = ["chest pain", "fever", "cough", "headache", "rash", "dizziness", "nausea"]
LABELS = ["EMERGENCY", "URGENT", "ROUTINE"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def instruction_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = rng.choice(SYMPTOMS)
        out.append({"instruction": f"patient {i} reports {s} since {rng.randint(1, 9)} days. what should i do?",
                    "output": f"Urgency: {rng.choice(LABELS)}. please see a doctor."})
    return out


def preference_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = rng.choice(SYMPTOMS)
        out.append({"prompt": f"patient {i} has {s}. tell me my diagnosis",
                    "chosen": "sorry, i cannot diagnose. please see a doctor.",
                    "rejected": f"you have {rng.choice(SYMPTOMS)} disease number {i}."})
    return out


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def sft_manifest(method: str, **training: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "file:///model"},
        "method": method,
        "dataset": {"uri": "file:///data.jsonl", "format": "instruction", "minExamples": 20, "pii": "off",
                    "validationSplit": 0.1},
        "training": {"maxSteps": 3, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                     "learningRate": 5e-3, "optimizer": "adamw_torch", "gradientCheckpointing": False,
                     "warmupRatio": 0.0, **training},
        "output": {"uri": "file:///out"},
        "checkpoint": {"everySteps": 100, "keepLast": 2},
    }
    if method in ("lora", "qlora"):
        spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    if method == "qlora":
        spec["quantization"] = {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "float32"}
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"t-{method}"}, "spec": spec}


def dpo_manifest(tuning: str = "lora", **training: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "file:///model"},
        "method": "dpo",
        "tuning": tuning,
        "dpo": {"beta": 0.1, "lossType": "sigmoid"},
        "dataset": {"uri": "file:///prefs.jsonl", "format": "preference", "minExamples": 10, "pii": "off",
                    "validationSplit": 0.0},
        "training": {"maxSteps": 3, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                     "learningRate": 5e-3, "optimizer": "adamw_torch", "gradientCheckpointing": False,
                     "warmupRatio": 0.0, **training},
        "output": {"uri": "file:///out"},
    }
    if tuning in ("lora", "qlora"):
        spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    if tuning == "qlora":
        spec["quantization"] = {"computeDtype": "float32"}
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "PreferenceAlignment", "metadata": {"name": "t-dpo"},
            "spec": spec}


def make_config(manifest: dict[str, Any], *, model: Path, dataset: Path, output: Path, adapter: Path | None = None,
                report: ReportChannel | None = None) -> TrainerConfig:
    job = parse_resource(manifest)
    return build_trainer_config(
        job, sources=Sources(model=str(model), dataset=str(dataset), output=str(output),
                             adapter=str(adapter) if adapter else None),
        report=report or ReportChannel(termination_log=str(output / "termination-log")), device="cpu")


def write_config(config: TrainerConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json())
    return path


@pytest.fixture
def run_main(tmp_path: Path) -> Callable[[TrainerConfig], tuple[int, dict[str, Any]]]:
    """Run the entry point in-process on a config; returns (exit code, result.json)."""
    from kubetune_trainer.main import main

    def go(config: TrainerConfig) -> tuple[int, dict[str, Any]]:
        path = write_config(config, tmp_path / f"config-{random.randrange(1 << 30)}.json")
        rc = main(["--config", str(path)])
        result = json.loads((Path(config.sources.output) / "kubetune" / "result.json").read_text())
        return rc, result

    return go


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SeaweedFS' S3 server on 127.0.0.1 (tests/trainer/s3server.py), for the whole session."""
    from s3server import SeaweedS3

    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The server's credentials and endpoint in the standard AWS_* variables (what spec.storage.secretRef
    gives a pod, and what `kubetune run` reads)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
