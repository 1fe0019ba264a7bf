"""The quickstart's shipped data is exactly what its seeded generator writes, and the DPO pairs are
what the quickstart promises: they teach the boundary between the two kinds of question — a triage
question gets its right label over a made-up diagnosis, a diagnosis request a polite refusal over that
symptom's triage label — and never prefer one label to another (such pairs moved the labels' priors);
none of them asks in the safety set's held-out phrasings."""

import importlib.util
import json
from pathlib import Path

from kubetune.evaluation.refusal import classify_refusal

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def _generator():
    spec = importlib.util.spec_from_file_location("quickstart_generate_data", QUICKSTART / "generate_data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_files_match_the_generator(tmp_path):
    gen = _generator()
    assert gen.main(["--out", str(tmp_path)]) == 0
    for name in ("train", "golden", "safety", "forgetting", "preferences", "general"):
        shipped = (QUICKSTART / "data" / f"{name}.jsonl").read_text(encoding="utf-8")
        assert (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8") == shipped, (
            f"data/{name}.jsonl drifted: run `python examples/quickstart/generate_data.py`")


def test_preference_pairs_are_hard_but_right():
    gen = _generator()
    rows = gen.build()["preferences"]
    triage = [r for r in rows if r["chosen"].startswith("Urgency:")]
    declines = [r for r in rows if not r["chosen"].startswith("Urgency:")]
    assert len(triage) == 108 and len(declines) == 72
    for r in triage:  # the right label over a confident diagnosis that is not one (and no refusal)
        assert not r["rejected"].startswith("Urgency:"), r["rejected"]
        assert not classify_refusal(r["rejected"]).refused, r["rejected"]
        assert any(c in r["rejected"] for cs in gen.CONDITIONS.values() for c in cs), r["rejected"]
    for r in declines:  # a refusal over answering the diagnosis request with a triage label
        assert classify_refusal(r["chosen"]).refused, r["chosen"]
        assert r["rejected"].startswith("Urgency:") and not classify_refusal(r["rejected"]).refused, r["rejected"]
    # no label is preferred to another: each is rejected only by the declines, equally often
    rejected_labels = [r["rejected"].split()[1] for r in declines]
    assert {rejected_labels.count(label) for label in gen.SYMPTOMS} == {24}
    # diagnosis requests in the training phrasings only: none of the safety set's held-out ones
    held_out = [t.split("{symptom}")[0] for t in gen.DIAGNOSIS_HELDOUT]
    for r in declines:
        assert not any(r["prompt"].startswith(h[0].upper() + h[1:]) for h in held_out if h), r["prompt"]


def test_the_replay_set_rehearses_general_skills_without_the_forgetting_questions():
    data = _generator().build()
    general = data["general"]
    assert len(general) >= 60 and len({r["instruction"] for r in general}) == len(general)
    asked = {r["prompt"].lower() for r in data["forgetting"] if "prompt" in r}
    for r in general:
        q = r["instruction"].lower()
        assert q not in asked and not r["output"].startswith("Urgency:")
        for form in ("capital of", "color", "colour", "legs", "opposite of", "king of"):  # forgetting's question forms
            assert form not in q, q


def _benchmark():
    spec = importlib.util.spec_from_file_location("quickstart_bench", QUICKSTART.parents[1] / "benchmarks" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_the_committed_results_file():
    """The README's results block is what benchmarks/quickstart.py renders from the committed results file
    (or, before one is committed, says so)."""
    bench = _benchmark()
    block = (QUICKSTART / "README.md").read_text(encoding="utf-8").split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    if bench.RESULTS_JSON.exists():
        assert block == "\n" + bench.render(json.loads(bench.RESULTS_JSON.read_text())), (
            "README drifted from benchmarks/results/quickstart.json: run `python benchmarks/quickstart.py --render-only`")
    else:
        assert "No results of this recipe are committed yet" in block


def test_seeds_results_are_rendered_and_agree_with_the_quickstart_results():
    """benchmarks/results/quickstart-seeds.md is what quickstart_seeds.py renders from its json, and its seed 42 —
    the shipped configuration — has the figures of the committed quickstart results (both runs are seeded)."""
    spec = importlib.util.spec_from_file_location(
        "quickstart_seeds_bench", QUICKSTART.parents[1] / "benchmarks" / "quickstart_seeds.py")
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    results = json.loads((seeds.RESULTS / "quickstart-seeds.json").read_text())
    assert (seeds.RESULTS / "quickstart-seeds.md").read_text(encoding="utf-8").endswith(seeds.render(results))
    shipped = json.loads(_benchmark().RESULTS_JSON.read_text())["variants"]["with replay"]["jobs"]
    for job, figures in shipped.items():
        assert results["runs"]["42"]["jobs"][job]["metrics"] == figures["metrics"], job


def test_render_writes_both_variants_and_the_checkpoint_table():
    job = {"phase": "Succeeded", "base": {"golden.accuracy": 0.0, "forgetting.accuracy": 0.25},
           "metrics": {"golden.accuracy": 0.7, "forgetting.accuracy": 0.25, "forgetting.perplexity_increase": 0.1},
           "checkpoints": {"chosenStep": 60, "lastStep": 100, "selectBy": "golden.accuracy", "reason": "r",
                           "evaluations": [{"step": 20, "passed": False, "metrics": {"golden.accuracy": 0.2}},
                                           {"step": 60, "passed": True, "metrics": {"golden.accuracy": 0.8}}]}}
    without = {"phase": "Succeeded", "base": {}, "metrics": {"golden.accuracy": 0.6, "forgetting.accuracy": 0.0}}
    dpo = {"phase": "Succeeded", "base": {}, "metrics": {"golden.accuracy": 0.73, "preference.accuracy": 0.83,
                                                         "preference.margin": 0.4}}
    results = {"machine": {"cpus": 2}, "variants": {
        "with replay": {"exitStatus": 0, "seconds": 590.0, "loadAverage": [0.5, 1.5],
                        "jobs": {"triage-smollm2": job, "triage-smollm2-dpo": dpo}},
        "without replay": {"exitStatus": 0, "seconds": 400.0, "loadAverage": [0.4, 1.0],
                           "jobs": {"triage-smollm2": without}}}}
    text = _benchmark().render(results)
    assert "| golden.accuracy | 0.000 | 0.600 | 0.700 | 0.730 |" in text
    assert "| forgetting.accuracy (8 general questions) | 0.250 | 0.000 | 0.250 | – |" in text
    assert "| preference.accuracy (held-out pairs) | – | – | – | 0.830 |" in text
    assert "wall time 590 s for the shipped quickstart (SFT + DPO), 400 s for the SFT without replay" in text
    assert "| 60 (chosen) | 0.800 | pass |" in text and "| 20 | 0.200 | fail |" in text
