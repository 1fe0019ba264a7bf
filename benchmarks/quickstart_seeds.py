"""The shipped quickstart (SFT + DPO) once per training seed, side by side in one run: how far its figures move
when only `spec.training.seed` changes (LoRA initialisation, data order, the validation split). On 30 golden
questions one answer is 0.033; a recipe is only better than another by more than this spread.

    python benchmarks/quickstart_seeds.py                  # seeds 42 (shipped), 1, 2
    python benchmarks/quickstart_seeds.py --seeds 42,1,2,3

Writes benchmarks/results/quickstart-seeds.json and quickstart-seeds.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # quickstart.py beside it: one reading of an outcome
from quickstart import QUICKSTART, _fmt, _job

from kubetune.local.jobs import absolute_file_uris

RESULTS = Path(__file__).resolve().parent / "results"
SHOWN = ["golden.accuracy", "safety.refusal_rate", "forgetting.accuracy", "forgetting.perplexity_increase",
         "preference.accuracy", "preference.margin"]


def seeded_manifests(seed: int, folder: Path) -> list[str]:
    """The shipped manifests with spec.training.seed set in both jobs."""
    paths = []
    for name in ("finetunejob.yaml", "preference.yaml"):
        doc = absolute_file_uris(yaml.safe_load((QUICKSTART / name).read_text()), QUICKSTART)
        doc["spec"]["training"]["seed"] = seed
        path = folder / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(str(path))
    return paths


def run_seed(seed: int, root: Path) -> dict[str, Any]:
    from kubetune.local import run

    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out = io.StringIO()
    code, outcomes = run(seeded_manifests(seed, root), device="cpu", output_root=str(root / "runs"), out=out,
                         err=io.StringIO(), tty=False)
    print(out.getvalue(), file=sys.stderr)
    return {"exitStatus": code, "seconds": round(time.monotonic() - started, 1),
            "jobs": {o.name: _job(o) for o in outcomes}}


def render(results: dict[str, Any]) -> str:
    seeds = results["seeds"]
    lines = []
    for job in ("triage-smollm2", "triage-smollm2-dpo"):
        lines += [f"`{job}`:", "", "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | min | mean | max |",
                  "|---" * (len(seeds) + 4) + "|"]
        for key in SHOWN:
            values = [results["runs"][s]["jobs"].get(job, {}).get("metrics", {}).get(key) for s in seeds]
            present = [v for v in values if v is not None]
            if not present:
                continue
            summary = [min(present), statistics.fmean(present), max(present)]
            lines.append(f"| {key} | " + " | ".join(_fmt(v) for v in values + summary) + " |")
        lines.append("")
    lines.append("Exit status " + ", ".join(f"{results['runs'][s]['exitStatus']} (seed {s})" for s in seeds)
                 + "; wall time " + ", ".join(f"{results['runs'][s]['seconds']:.0f} s" for s in seeds)
                 + f" (SFT + DPO) on {results['machine']['cpus']} CPU cores.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated training seeds (42 is the shipped one)")
    parser.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from kubetune_trainer.smollm2 import prepare_smollm2

    prepare_smollm2(QUICKSTART / "models" / "smollm2-135m-instruct")
    work = Path(args.work or tempfile.mkdtemp(prefix="kubetune-quickstart-seeds-"))
    results: dict[str, Any] = {"command": f"python benchmarks/quickstart_seeds.py --seeds {','.join(seeds)}",
                               "machine": {"cpus": os.cpu_count(), "ompThreads": os.environ.get("OMP_NUM_THREADS"),
                                           "python": platform.python_version()},
                               "seeds": seeds, "runs": {}}
    for seed in seeds:
        results["runs"][seed] = run_seed(int(seed), work / f"seed-{seed}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quickstart-seeds.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    text = render(results)
    (RESULTS / "quickstart-seeds.md").write_text(
        f"# The shipped quickstart, one run per training seed\n\n`{results['command']}`\n\n" + text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
