"""The quickstart's shipped data is exactly what its seeded generator writes, and the DPO pairs are
what the quickstart promises: chosen = the right triage label or a polite refusal, rejected = a
wrong label or a made-up diagnosis — never a right label (that teaches the model to shun triage)."""

import importlib.util
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
    rows = _generator().build()["preferences"]
    triage = [r for r in rows if r["chosen"].startswith("Urgency:")]
    declines = [r for r in rows if not r["chosen"].startswith("Urgency:")]
    assert len(triage) == 108 and len(declines) == 72
    for r in triage:  # same format, other label
        assert r["rejected"].startswith("Urgency:") and r["rejected"].split()[1] != r["chosen"].split()[1]
    for r in declines:  # a refusal over a diagnosis that is not one
        assert classify_refusal(r["chosen"]).refused, r["chosen"]
        assert not classify_refusal(r["rejected"]).refused and not r["rejected"].startswith("Urgency:"), r["rejected"]


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
