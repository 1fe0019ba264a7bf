"""The data preflight in 1, 2 and 4 processes, side by side with today's single-process path.

    python benchmarks/data_preflight_parallel.py                       # ~40k examples (~21 MB), pii redact
    python benchmarks/data_preflight_parallel.py --examples 10000 --repeat 1   # a quick look

What it does, on generated data (the chat examples of ``benchmarks/data_preflight.py``: planted PII of
every structured type, hard negatives, ~0.3 % bad lines, ~1 % duplicates):

1. Today's path: the ``kubetune.data`` package of ``--baseline-ref`` (default 61cc2a5, the commit
   before the preflight had worker processes), taken from git into a temporary folder, run in a
   fresh interpreter: ``preflight(..., pii="redact", train_out, validation_out)``.
2. This tree's path with ``processes`` = 1, 2, 4 (``--processes``), each in a fresh interpreter
   the same way (the preflight pod runs it as ``kubetune-trainer --stage preflight``).
3. Rounds alternate the runs (baseline, 1, 2, 4, baseline, 1, ...) so that a change in the
   machine's load falls on all of them; the best of ``--repeat`` rounds is reported, with the CPU
   seconds of the calling process and of its workers.

Every run must write byte-identical train/validation files (sha256 printed): the baseline's too,
which checks that the rework changed nothing but speed. MB/s is the input file's size over the wall
time of the ``preflight()`` call (it includes starting the workers and importing the scanner).

Writes ``benchmarks/results/data_preflight_parallel.md`` (``--results`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_preflight import write_dataset  # noqa: E402

BASELINE_REF = "61cc2a5"  # the last commit whose preflight ran in one process only

CHILD = r"""
import hashlib, json, resource, sys, time
from kubetune.data import preflight
data, out, pii, processes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
kw = {} if processes == "baseline" else {"processes": int(processes)}
started = time.perf_counter()
report = preflight(data, format="chat", pii=pii, error_policy="skip", min_examples=1,
                   train_out=out + "/train.jsonl", validation_out=out + "/validation.jsonl", **kw)
seconds = time.perf_counter() - started
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
digest = hashlib.sha256()
for name in ("train.jsonl", "validation.jsonl"):
    with open(out + "/" + name, "rb") as fh:
        digest.update(fh.read())
print(json.dumps({"seconds": seconds, "ok": report.ok, "examples": report.examples, "pii_lines": report.pii_lines,
                  "cpu_main": me.ru_utime + me.ru_stime, "cpu_workers": kids.ru_utime + kids.ru_stime,
                  "sha256": digest.hexdigest()}))
"""


def baseline_tree(ref: str, into: Path) -> Path | None:
    """``operator/kubetune`` of ``ref`` extracted below ``into``; None when git cannot give it."""
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "operator/kubetune"], capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no baseline: git archive {ref} failed ({e})", file=sys.stderr)
        return None
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into / "operator"


def run(data: Path, out: Path, pii: str, processes: str, pythonpath: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), pii, processes], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {processes} run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=40_000, help="chat examples generated (~530 bytes each)")
    p.add_argument("--processes", default="1,2,4", help="process counts to run (comma-separated)")
    p.add_argument("--pii", default="redact", choices=["redact", "reject", "off"])
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of them is reported")
    p.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of today's single-process path")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "data_preflight_parallel.md")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="kubetune-preflight-parallel-")
    work = Path(tmp.name)
    data = work / "data.jsonl"
    t = time.perf_counter()
    size = write_dataset(data, args.seed, args.examples)
    print(f"data: {args.examples:,} examples, {size / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    data.read_bytes()  # in the page cache for every run

    runs: list[tuple[str, str, Path]] = []
    base = baseline_tree(args.baseline_ref, work / "baseline")
    if base is not None:
        runs.append((f"today's path ({args.baseline_ref}), 1 process", "baseline", base))
    counts = [c.strip() for c in args.processes.split(",") if c.strip()]
    runs += [(f"{c} process{'es' if c != '1' else ''}", c, ROOT / "operator") for c in counts]

    load_before = os.getloadavg()
    best: dict[str, dict[str, Any]] = {}
    rounds: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for r in range(args.repeat):
        for label, processes, path in runs:
            res = run(data, work / f"out-{processes}-{r}", args.pii, processes, path)
            rounds[label].append(res["seconds"])
            print(f"round {r + 1}: {label}: {res['seconds']:.1f} s, {size / 1e6 / res['seconds']:.2f} MB/s, "
                  f"cpu {res['cpu_main']:.1f} + {res['cpu_workers']:.1f} s, sha256 {res['sha256'][:12]}",
                  file=sys.stderr)
            if label not in best or res["seconds"] < best[label]["seconds"]:
                best[label] = res
    load_after = os.getloadavg()

    digests = {res["sha256"] for res in best.values()}
    reference = best[runs[0][0]]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    md: list[str] = []
    say = md.append
    say("# Data preflight in worker processes\n")
    say(f"`python benchmarks/data_preflight_parallel.py --examples {args.examples} --processes {args.processes} "
        f"--pii {args.pii} --repeat {args.repeat}` on {platform.machine()}, **{cpus} CPUs**, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}. Load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is shared with other builds).\n")
    say(f"Data: {args.examples:,} generated chat examples, {size / 1e6:.1f} MB "
        f"(`benchmarks/data_preflight.py`'s generator, seed {args.seed}), `pii: {args.pii}`, train and validation "
        "files written. Best of "
        f"{args.repeat} alternating rounds; each run is a fresh interpreter and its time is the `preflight()` "
        "call (worker start and the scanner's import included).\n")
    say("| path | seconds | MB/s | vs today's single process | CPU s (calling + workers) |")
    say("|---|---:|---:|---:|---:|")
    for label, _, _ in runs:
        res = best[label]
        say(f"| {label} | {res['seconds']:.1f} | {size / 1e6 / res['seconds']:.2f} "
            f"| {reference['seconds'] / res['seconds']:.2f}× | {res['cpu_main']:.1f} + {res['cpu_workers']:.1f} |")
    say("")
    say("Every round, in the order run (seconds; the machine's other load moves them, the CPU seconds much less):\n")
    say("| path | " + " | ".join(f"round {r + 1}" for r in range(args.repeat)) + " |")
    say("|---|" + "---:|" * args.repeat)
    for label, _, _ in runs:
        say(f"| {label} | " + " | ".join(f"{t:.1f}" for t in rounds[label]) + " |")
    say("")
    same = "identical" if len(digests) == 1 else f"NOT identical ({len(digests)} different)"
    say(f"Output files (train + validation, sha256): {same} across all runs"
        + (f" (`{next(iter(digests))[:16]}…`)" if len(digests) == 1 else "") + "; every run found "
        f"{reference['examples']:,} usable examples, PII in {reference['pii_lines']:,} records.\n")
    gb_minutes = 1e9 / (size / reference["seconds"]) / 60
    fastest = min(best.values(), key=lambda r: r["seconds"])
    say(f"What it means for a job: at today's single-process rate here, checking 1 GB takes {gb_minutes:.0f} min "
        f"inside the GPU pod — {gb_minutes * 8:.0f} GPU-minutes idle on an 8-GPU job. In the preflight pod it takes "
        f"{gb_minutes * fastest['seconds'] / reference['seconds']:.0f} min at the best rate above, on CPUs, and "
        "0 GPU-minutes: the GPU Job is created after it. (`benchmarks/results/data_preflight.md` measured the same "
        "single-process path at 0.5 MB/s, and the scanner alone at 0.85 MB/s, under a load average of 8-10: the "
        "ratios carry over between runs, the absolute rates do not.)\n")
    parallel = [(int(c), best[label]) for label, c, _ in runs if c not in ("baseline", "1")]
    if parallel:
        n, res = parallel[0]
        serial, work_cpu = res["cpu_main"], res["cpu_workers"]
        projected = ", ".join(f"{k} CPUs ≈ {reference['seconds'] / (serial + work_cpu / k):.1f}×" for k in (4, 8, 16))
        say(f"Where it goes with more cores (a projection, not a measurement): in the {n}-process run the calling "
            f"process used {serial:.1f} CPU s (the scanner's import before the workers fork, then reading, dedup and "
            f"writing: the serial part) and the workers {work_cpu:.1f} CPU s. With the workers' share divided by the "
            f"core count and the serial part kept whole: {projected} today's single-process path — a ceiling set by "
            "the calling process, which a larger file (the import once) raises.\n")
    say(f"This machine has {cpus} CPUs, shared: {max(1, (cpus or 1))} processes is the most that can run at once, "
        "so 4 processes cannot beat 2 here (they add worker start and switching); the calling process "
        "(reading, dedup, writing) also needs a share of a core. On a preflight pod the count comes from "
        "its CPU limit (`trainer.preflight.resources`), and a ratio above the core count is not possible.")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwrote {args.results}", file=sys.stderr)
    tmp.cleanup()
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
