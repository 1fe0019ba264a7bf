"""kubetune_job_gpu_seconds_total never decreases (a resumed Job resets its startTime), and the
collector's memory follows the live CRs."""

from __future__ import annotations

from typing import Any

from kubetune.controller.metrics import JobsCollector


def gpu_seconds(collector: JobsCollector) -> dict[str, float]:
    fam = next(f for f in collector.collect() if f.name == "kubetune_job_gpu_seconds")
    return {s.labels["name"]: s.value for s in fam.samples if s.name.endswith("_total")}


def cr(name: str, uid: str, **status: Any) -> dict[str, Any]:
    return {"kind": "FineTuneJob", "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": {"resources": {"gpus": 2}}, "status": status}


def test_a_resumed_job_keeps_its_gpu_seconds() -> None:
    objs = [cr("a", "u1", startTime="2025-01-01T00:00:00Z", completionTime="2025-01-01T01:00:00Z")]
    c = JobsCollector(lambda: objs)
    assert gpu_seconds(c) == {"a": 7200.0}
    objs[0] = cr("a", "u1")  # suspended: the Job has no startTime
    assert gpu_seconds(c) == {"a": 7200.0}
    objs[0] = cr("a", "u1", startTime="2025-01-01T02:00:00Z", completionTime="2025-01-01T02:10:00Z")  # resumed
    assert gpu_seconds(c) == {"a": 7200.0}


def test_a_new_cr_of_the_same_name_starts_at_its_own_value_and_old_uids_are_forgotten() -> None:
    objs = [cr("a", "u1", startTime="2025-01-01T00:00:00Z", completionTime="2025-01-01T01:00:00Z")]
    c = JobsCollector(lambda: objs)
    gpu_seconds(c)
    for i in range(2000):
        objs[:] = [cr("a", f"u{i + 2}", startTime="2025-01-01T00:00:00Z", completionTime="2025-01-01T00:00:10Z")]
        assert gpu_seconds(c) == {"a": 20.0}
    assert len(c._gpu_high) == 1
