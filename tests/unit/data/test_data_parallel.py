"""The preflight in N processes gives the report and the files of one process, byte for byte; the
pool is sized from the CPUs a pod may use."""

from __future__ import annotations

import gzip
import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.data import preflight
from kubetune.data.parallel import auto_processes, batches, cgroup_cpu_limit, start_method, usable_cpus
from kubetune.data.reader import DataFileError, Item

PII = ["mail me at ann.lee{i}@example.com", "call (212) 555-01{i:02d} tonight", "SSN 123-45-{i:04d}",
       "card 4111 1111 1111 1111", "DOB: 03/14/1987", "nothing to see {i}"]


def _rows(n: int, seed: int = 7) -> list[str]:
    """Chat lines with PII; exact, normalized and near duplicates of lines far back (in earlier
    batches); bad lines; golden leaks."""
    rng = random.Random(seed)
    rows: list[str] = []
    good: list[dict[str, Any]] = []
    for i in range(n):
        r = rng.random()
        if r < 0.02:
            rows.append('{"messages": [{"role": "user", "content": "unterminated')
        elif r < 0.04 and good:
            rows.append(json.dumps(rng.choice(good)))  # an exact duplicate
        elif r < 0.05 and good:  # a normalized duplicate: case and spacing
            rec = rng.choice(good)
            rows.append(json.dumps({"messages": [{**m, "content": "  " + m["content"].upper()} for m in rec["messages"]]}))
        elif r < 0.06 and good:  # a near duplicate: one word of many changed
            rec = rng.choice(good)
            user, answer = rec["messages"]
            rows.append(json.dumps({"messages": [user, {**answer, "content": answer["content"] + " indeed"}]}))
        else:
            words = " ".join(rng.choice(["fever", "cough", "pain", "rest", "water", "sleep", "tea", "walk", "diet"])
                             for _ in range(40))
            text = f"Question number {i}? {words} " + PII[i % len(PII)].format(i=i % 100)
            rec = {"messages": [{"role": "user", "content": text},
                                {"role": "assistant", "content": f"Answer {i}: {words}."}]}
            good.append(rec)
            rows.append(json.dumps(rec))
    return rows


def _run(path: Path, out: Path, processes: int, **kw: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    out.mkdir()
    report = preflight(path, format="chat", min_examples=10, error_policy="skip", max_bad_fraction=0.5,
                       redact_out=out / "all.jsonl", train_out=out / "train.jsonl",
                       validation_out=out / "validation.jsonl", validation_split=0.1, processes=processes, **kw)
    data = report.to_dict()
    assert data.pop("processes") == processes
    data.pop("seconds")
    data["outputs"] = {k: Path(v).name for k, v in data["outputs"].items()}
    return data, {f.name: f.read_bytes() for f in sorted(out.iterdir())}


@pytest.mark.parametrize("pii", ["redact", "reject"])
def test_n_processes_give_the_report_and_files_of_one(tmp_path: Path, pii: str) -> None:
    path = tmp_path / "data.jsonl"
    rows = _rows(3000)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    golden = tmp_path / "golden.jsonl"
    golden.write_text(rows[1500] + "\n")  # one training line is also a golden one
    one, files_one = _run(path, tmp_path / "one", 1, pii=pii, near_duplicates=True, golden_path=golden)
    three, files_three = _run(path, tmp_path / "three", 3, pii=pii, near_duplicates=True, golden_path=golden)
    assert one == three
    assert files_one == files_three
    assert one["records"] == 3000 and one["invalid"] > 30 and one["duplicates_exact"] > 30
    assert one["duplicates_normalized"] > 0 and one["duplicates_near"] > 0 and one["golden"]["leaked"] > 0
    if pii == "redact":
        assert one["ok"] and one["pii"]["EMAIL"] > 0 and b"<EMAIL>" in files_one["train.jsonl"]
        assert b"@example.com" not in files_one["all.jsonl"]
        assert len(files_one["all.jsonl"]) == len(files_one["train.jsonl"]) + len(files_one["validation.jsonl"])
    else:
        assert not one["ok"] and one["error_counts"]["pii_found"] > 0 and files_one == {}


def test_a_file_that_breaks_off_is_counted_up_to_the_break_as_in_one_process(tmp_path: Path) -> None:
    rows = _rows(2500)
    data = gzip.compress(("\n".join(rows) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    one, _ = _run(path, tmp_path / "one", 1)
    two, _ = _run(path, tmp_path / "two", 2)
    assert one == two
    assert not one["ok"] and "gzip stream is truncated" in one["message"] and one["records"] > 1000


def test_json_arrays_and_pii_off_too(tmp_path: Path, chat: Callable[..., dict[str, Any]]) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([chat(i % 1500) for i in range(2100)]))
    one, files_one = _run(path, tmp_path / "one", 1, pii="off")
    two, files_two = _run(path, tmp_path / "two", 2, pii="off")
    assert (one, files_one) == (two, files_two)
    assert one["examples"] == 1500 and one["duplicates"] == 600


def test_a_process_with_threads_spawns_its_workers(tmp_path: Path) -> None:
    """A trainer reporting progress from a thread is not forked: fresh interpreters check the records."""
    # fork only while this process runs a single thread (earlier tests in a session may have left some)
    assert start_method() == ("fork" if threading.active_count() == 1 else "spawn")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(_rows(1200)) + "\n", encoding="utf-8")
    stop = threading.Event()
    reporter = threading.Thread(target=stop.wait)
    reporter.start()
    try:
        assert start_method() == "spawn"
        two, files_two = _run(path, tmp_path / "two", 2)
    finally:
        stop.set()
        reporter.join()
    assert (two, files_two) == _run(path, tmp_path / "one", 1)


def test_a_tokenizer_that_cannot_be_pickled_keeps_one_process(write_jsonl: Callable[..., Path],
                                                              chat: Callable[..., dict[str, Any]]) -> None:
    report = preflight(write_jsonl([chat(i) for i in range(300)]), format="chat", processes=2,
                       tokenizer=lambda s: len(s.split()))
    assert report.ok and report.processes == 1
    assert any("checked in one process, not 2" in w for w in report.warnings)


def test_bad_process_count_is_refused(write_jsonl: Callable[..., Path]) -> None:
    with pytest.raises(ValueError, match="processes must be >= 1"):
        preflight(write_jsonl([]), format="chat", processes=0)


def test_batches_are_bounded_and_keep_what_was_read_before_an_error() -> None:
    def items() -> Any:
        for i in range(2500):
            yield Item(i + 1, raw=b"x" * 100)
        raise DataFileError("gone", 2501)

    got: list[list[Item]] = []
    with pytest.raises(DataFileError):
        for b in batches(items(), lines=1000, size=1 << 20):
            got.append(b)
    assert [len(b) for b in got] == [1000, 1000, 500]
    assert [len(b) for b in batches((Item(i, raw=b"y" * 400) for i in range(10)), lines=100, size=1000)] == [3, 3, 3, 1]


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "limit"), [
    ({"cpu.max": "250000 100000\n"}, 2.5),  # cgroup v2, limits.cpu: 2500m
    ({"cpu.max": "max 100000\n"}, None),  # v2 without a limit
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),  # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    assert cgroup_cpu_limit(_cgroup(tmp_path, files)) == limit


def test_usable_cpus_is_capped_by_the_cgroup_limit_rounded_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert usable_cpus(_cgroup(tmp_path / "a", {"cpu.max": "250000 100000"})) == 3
    assert usable_cpus(_cgroup(tmp_path / "b", {"cpu.max": "max 100000"})) == 16
    assert usable_cpus(_cgroup(tmp_path / "c", {"cpu.max": "10000 100000"})) == 1


def test_auto_processes_keeps_small_files_in_one_process() -> None:
    mib = 1 << 20
    assert auto_processes(100 * 1024, cpus=8) == 1
    assert auto_processes(9 * mib, cpus=8) == 2
    assert auto_processes(1 << 30, cpus=8) == 8
    assert auto_processes(1 << 30, cpus=1) == 1
