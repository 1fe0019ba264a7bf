"""The quickstart without and with replay, side by side in one run: golden accuracy, refusal rate,
forgetting (general-question accuracy, perplexity increase), the best-checkpoint table and the wall
time; writes benchmarks/results/quickstart.json (what the CI test compares a fresh run with) and
quickstart.md, and with --readme the before/after table of examples/quickstart/README.md.

    python benchmarks/quickstart.py                    # both variants, then the results files
    python benchmarks/quickstart.py --readme           # ... and the README's table
    python benchmarks/quickstart.py --render-only      # the README's table again from the committed results

Variant "with replay" is the quickstart as shipped (examples/quickstart/finetunejob.yaml +
preference.yaml, run by `kubetune run` exactly as run.sh does); variant "without replay" is the same
FineTuneJob with spec.dataset.replay removed (SFT only). Each runs in a fresh output folder; the
machine's CPU count and load average are recorded with the times, since a shared machine inflates them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune.local.jobs import absolute_file_uris

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
RESULTS_JSON = REPO / "benchmarks" / "results" / "quickstart.json"
RESULTS_MD = REPO / "benchmarks" / "results" / "quickstart.md"
README = QUICKSTART / "README.md"
BEGIN, END = "<!-- quickstart-results:begin (benchmarks/quickstart.py --readme) -->", "<!-- quickstart-results:end -->"

# what is kept of each job, and how it is shown
FIGURES = [
    ("golden.accuracy", "golden.accuracy"),
    ("safety.refusal_rate", "safety.refusal_rate"),
    ("forgetting.accuracy", "forgetting.accuracy (8 general questions)"),
    ("forgetting.perplexity_increase", "forgetting.perplexity_increase"),
    ("forgetting.perplexity", "forgetting.perplexity (general text)"),
    ("eval.loss", "eval.loss (the job's validation split)"),
    ("preference.accuracy", "preference.accuracy (held-out pairs)"),
    ("preference.margin", "preference.margin (held-out pairs)"),
]




def variant_manifests(name: str, folder: Path) -> list[str]:
    """The manifest files of a variant: the shipped ones, or the FineTuneJob without replay."""
    import yaml

    if name == "with replay":
        return [str(QUICKSTART / "finetunejob.yaml"), str(QUICKSTART / "preference.yaml")]
    doc = absolute_file_uris(yaml.safe_load((QUICKSTART / "finetunejob.yaml").read_text()), QUICKSTART)
    doc["spec"]["dataset"].pop("replay")
    path = folder / "finetunejob-without-replay.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [str(path)]


def _job(outcome: Any) -> dict[str, Any]:
    m = outcome.metrics or {}
    job: dict[str, Any] = {"phase": outcome.phase, "metrics": {}, "base": {}}
    for key, _ in FIGURES:
        if key in m:
            job["metrics"][key] = round(float(m[key]), 4)
        if f"{key}_base" in m:
            job["base"][key] = round(float(m[f"{key}_base"]), 4)
    status = outcome.status or {}
    if status.get("checkpoints"):
        c = status["checkpoints"]
        job["checkpoints"] = {"chosenStep": c.get("chosenStep"), "lastStep": c.get("lastStep"),
                              "selectBy": c.get("selectBy"), "reason": c.get("reason"),
                              "evaluations": [{"step": r["step"], "passed": r["passed"],
                                               "metrics": {k: round(v, 4) for k, v in r["metrics"].items()
                                                           if not k.endswith("_base")}}
                                              for r in c.get("evaluations", [])]}
    return job


def run_variant(name: str, root: Path) -> dict[str, Any]:
    from kubetune.local import run

    root.mkdir(parents=True, exist_ok=True)
    started, load = time.monotonic(), os.getloadavg()[0]
    out = io.StringIO()
    code, outcomes = run(variant_manifests(name, root), device="cpu", output_root=str(root / "runs"), out=out,
                         err=io.StringIO(), tty=False)
    seconds = time.monotonic() - started
    print(out.getvalue(), file=sys.stderr)
    return {"exitStatus": code, "seconds": round(seconds, 1), "loadAverage": [round(load, 2),
                                                                             round(os.getloadavg()[0], 2)],
            "jobs": {o.name: _job(o) for o in outcomes}}


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def render(results: dict[str, Any]) -> str:
    """The README's tables from a results file."""
    with_r, without = results["variants"]["with replay"], results["variants"]["without replay"]
    sft, dpo = with_r["jobs"]["triage-smollm2"], with_r["jobs"].get("triage-smollm2-dpo", {})
    sft0 = without["jobs"]["triage-smollm2"]
    lines = ["| metric | base | SFT without replay | SFT with replay (shipped) | after DPO (shipped) |",
             "|---|---|---|---|---|"]
    for key, label in FIGURES:
        row = [sft.get("base", {}).get(key), sft0["metrics"].get(key), sft["metrics"].get(key),
               dpo.get("metrics", {}).get(key)]
        if key.startswith("preference."):
            row[0] = None
        if all(v is None for v in row):
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in row) + " |")
    lines += ["", f"Exit status {with_r['exitStatus']} (shipped), {without['exitStatus']} (without replay); wall time "
              f"{with_r['seconds']:.0f} s for the shipped quickstart (SFT + DPO), {without['seconds']:.0f} s for the "
              f"SFT without replay, on {results['machine']['cpus']} CPU cores with load average "
              f"{with_r['loadAverage'][0]:.1f}–{with_r['loadAverage'][1]:.1f} (a shared machine inflates the times)."]
    for title, job in (("SFT with replay (shipped)", sft), ("SFT without replay", sft0)):
        c = job.get("checkpoints")
        if not c:
            continue
        names = sorted({k for r in c["evaluations"] for k in r["metrics"]})
        lines += ["", f"Checkpoint evaluations, {title} (10 examples of each set; chosen by {c['selectBy']}: "
                  f"step {c['chosenStep']} of {c['lastStep']}):", "",
                  "| step | " + " | ".join(names) + " | gates there |", "|---" * (len(names) + 2) + "|"]
        lines += [f"| {r['step']}{' (chosen)' if r['step'] == c['chosenStep'] else ''} | "
                  + " | ".join(_fmt(r["metrics"].get(n)) for n in names)
                  + f" | {'pass' if r['passed'] else 'fail'} |" for r in c["evaluations"]]
    return "\n".join(lines) + "\n"


def write_readme(results: dict[str, Any]) -> None:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + render(results) + END + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="also write the README's table")
    parser.add_argument("--render-only", action="store_true", help="only the README's table, from the committed results")
    parser.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.render_only:
        write_readme(json.loads(RESULTS_JSON.read_text()))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from kubetune_trainer.smollm2 import prepare_smollm2

    prepare_smollm2(QUICKSTART / "models" / "smollm2-135m-instruct")  # what run.sh does; cached after the first time
    work = Path(args.work or tempfile.mkdtemp(prefix="kubetune-quickstart-bench-"))
    results: dict[str, Any] = {"command": "python benchmarks/quickstart.py", "machine": {
        "cpus": os.cpu_count(), "ompThreads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()},
        "variants": {}}
    for name in ("without replay", "with replay"):
        results["variants"][name] = run_variant(name, work / name.replace(" ", "-"))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    RESULTS_MD.write_text("# Quickstart without and with replay\n\n`python benchmarks/quickstart.py`\n\n"
                          + render(results), encoding="utf-8")
    if args.readme:
        write_readme(results)
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
