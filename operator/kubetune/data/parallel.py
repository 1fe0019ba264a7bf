"""The preflight's records checked in worker processes: as many as the CPUs this process may use.

What a record costs is nearly all per-record work with no memory of other records — decoding,
validation, the golden check, PII detection and redaction, hashing, sketching, length — so that
part runs in a pool of processes (``check_in_processes``), fed batches of consecutive lines
(chunks by line ranges) and answering in the same order. What depends on the records before a
record — dedup, the error list, counts, the output files — stays in the calling process, which
reads the file and merges the answers in file order. So 1 and N processes give the same report
and byte-identical output files (a unit test compares them).

Memory: at most ``2 × processes`` batches (≤ 1 MiB of lines each, plus their answers) are in
flight; workers keep nothing between batches but their PII scanner and a word-hash cache. Each
worker imports the scanner (Presidio's recognizers, ~80-120 MiB RSS), so memory grows with the
process count: size a preflight pod's memory for it.

How workers start (:func:`start_method`): a process running one thread (the preflight pod,
``kubetune check-data``) is forked, after building one checker first, so every worker starts at
once with the scanner already imported; a process with more threads (a trainer that reports
progress from a thread) spawns fresh interpreters instead — forking it could copy a lock another
thread holds — which import the scanner again (~1-2 s each, in parallel) and, as spawned workers
do, import the calling script as ``__mp_main__`` (a script needs its ``if __name__ ==
"__main__"`` guard). ``auto_processes`` keeps small files in this process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kubetune.data.reader import DataFileError, Item

BATCH_LINES = 1024
BATCH_BYTES = 1 << 20
MIN_BYTES_PER_PROCESS = 4 << 20  # below this a worker's start costs more than it saves (auto only)
CGROUP_ROOT = Path("/sys/fs/cgroup")

R = TypeVar("R")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's cgroup in cores (a pod's ``limits.cpu``), None without one.

    cgroup v2: ``cpu.max`` is ``"<quota> <period>"`` or ``"max <period>"``; cgroup v1:
    ``cpu/cpu.cfs_quota_us`` (-1: none) over ``cpu/cpu.cfs_period_us``."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((root / folder / "cpu.cfs_quota_us").read_text())
            period_us = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (its affinity), capped by its cgroup's CPU limit rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def auto_processes(size_bytes: int, cpus: int | None = None) -> int:
    """How many processes a file of ``size_bytes`` is worth: one per ``MIN_BYTES_PER_PROCESS``, at most
    ``cpus`` (default :func:`usable_cpus`), at least one."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(cpus, size_bytes // MIN_BYTES_PER_PROCESS))


def picklable(value: Any) -> bool:
    """Whether ``value`` can be sent to a worker process (a tokenizer or a person detector built
    from a closure cannot)."""
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def batches(items: Iterable[Item], lines: int = BATCH_LINES, size: int = BATCH_BYTES) -> Iterator[list[Item]]:
    """Consecutive items in lists of at most ``lines`` items or about ``size`` bytes of raw lines.
    When reading fails (:class:`DataFileError`), the items read before are yielded first, then the
    error is raised: the caller counts them as one process would."""
    batch: list[Item] = []
    held = 0
    try:
        for item in items:
            batch.append(item)
            held += len(item.raw) if item.raw is not None else 64
            if len(batch) >= lines or held >= size:
                yield batch
                batch, held = [], 0
    except DataFileError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


_worker: Callable[[Item], Any] | None = None


def _start(make: Callable[..., Callable[[Item], Any]], args: tuple[Any, ...]) -> None:
    global _worker
    _worker = make(*args)


def _run(batch: list[Item]) -> list[Any]:
    assert _worker is not None, "worker not initialised"
    return list(map(_worker, batch))


def start_method() -> str:
    """``fork`` when this process runs a single thread (where the platform has it), else ``spawn``."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def check_in_processes(items: Iterable[Item], make: Callable[..., Callable[[Item], R]], args: tuple[Any, ...],
                       processes: int) -> Iterator[R]:
    """``make(*args)`` in each of ``processes`` worker processes gives a function of one item; yield
    that function's answer for every item, in order. ``make`` and ``args`` must be picklable
    (``make`` a module-level function). A :class:`DataFileError` from ``items`` is raised after the
    answers for every item read before it."""
    method = start_method()
    if method == "fork":
        make(*args)  # imports and compiles what a worker needs once, here: the forked workers inherit it
    context = multiprocessing.get_context(method)
    failure: DataFileError | None = None
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_start, initargs=(make, args)) as pool:
        pending: deque[Future[list[R]]] = deque()
        try:
            for batch in batches(items):
                pending.append(pool.submit(_run, batch))
                while len(pending) >= 2 * processes:
                    yield from pending.popleft().result()
        except DataFileError as e:
            failure = e
        while pending:
            yield from pending.popleft().result()
    if failure is not None:
        raise failure


__all__ = ["auto_processes", "batches", "cgroup_cpu_limit", "check_in_processes", "picklable", "start_method",
           "usable_cpus"]
