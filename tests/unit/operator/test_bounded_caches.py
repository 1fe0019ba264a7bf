"""Nothing in the operator grows with the number of CRs ever seen, and a failing reconcile backs off:
the handlers of one operator (build_operator) driven with watch events, its API a recording fake
(what is checked here is the operator's own memory and retry schedule, not the API server)."""

from __future__ import annotations

import copy
import gc
import tracemalloc
from datetime import UTC, datetime
from typing import Any

from fake_api import FakeApi
from kubernetes.client.exceptions import ApiException
from operator_builders import ftj

from kubetune.controller.app import Operator, build_operator
from kubetune.controller.config import OperatorSettings

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)


def event(type_: str, obj: dict[str, Any]) -> Any:
    return {"type": type_, "object": obj}


def forget(api: FakeApi, name: str) -> None:
    """What the API server does once a CR and its children are deleted: nothing of them is kept
    (the fake would otherwise hold every status patch the operator sent)."""
    for key in [k for k in api.objects if k[2].startswith(name + "-") or k[2] == name]:
        del api.objects[key]
    for key in [k for k in api.status if k[2] == name]:
        del api.status[key]
    api.calls.clear()
    api.events.clear()


def operator_memory() -> int:
    """Bytes still allocated by the operator's own code (the fake API keeps every object it is sent)."""
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/operator/kubetune/*")])
    return sum(stat.size for stat in snap.statistics("filename"))


def sizes(op: Operator) -> dict[str, int]:
    return {**op.world.sizes(), **op.reconciler.sizes(), "retries": len(op.handlers._retries)}


def test_two_thousand_create_delete_cycles_leave_nothing_behind() -> None:
    api = FakeApi()
    op = build_operator(OperatorSettings(), api=api, clock=lambda: NOW)
    template = ftj()
    tracemalloc.start()
    level = 0
    for i in range(2000):
        if i == 500:
            level = operator_memory()
        cr = copy.deepcopy(template)
        cr["metadata"].update(name=f"job-{i}", uid=f"uid-cr-{i}", resourceVersion=str(i), generation=1)
        op.handlers.on_cr_event(event("ADDED", cr))
        job = api.objects[("Job", cr["metadata"]["namespace"], f"job-{i}-ft-preflight")]
        op.handlers.on_job_event(event("ADDED", job))
        pod = {"metadata": {"name": f"job-{i}-pf", "namespace": cr["metadata"]["namespace"],
                            "labels": job["spec"]["template"]["metadata"]["labels"],
                            "annotations": job["spec"]["template"]["metadata"]["annotations"]},
               "status": {"phase": "Running"}}
        op.handlers.on_pod_event(event("ADDED", pod))
        op.handlers.on_cr_event(event("DELETED", cr))
        op.handlers.on_pod_event(event("MODIFIED", pod))  # terminating after its CR went
        op.handlers.on_job_event(event("DELETED", job))
        forget(api, f"job-{i}")
    grown = operator_memory() - level
    tracemalloc.stop()
    print(f"operator memory after 2,000 create/delete cycles: {grown / 2**10:+.0f} KiB since cycle 500")
    # 1,500 more cycles: only the capped names of deleted CRs (and the allocator's noise) remain;
    # one verdict with its memory plan alone is ~20 kB, so a leak of them would be ~30 MB
    assert grown < 1.5 * 2**20, f"{grown / 2**20:.2f} MiB more after 1,500 more create/delete cycles"
    s = sizes(op)
    assert {k: v for k, v in s.items() if k not in ("deleted", "rbac_done")} == dict.fromkeys(
        [k for k in s if k not in ("deleted", "rbac_done")], 0), s
    assert s["rbac_done"] == 1  # one namespace
    assert s["deleted"] == 2000  # names remembered for PreferenceAlignments, capped at DELETED_MEMORY


def test_the_deleted_names_are_capped() -> None:
    from kubetune.controller import world as world_mod

    w = world_mod.World()
    for i in range(world_mod.DELETED_MEMORY + 500):
        w.drop_cr(("FineTuneJob", "ns", f"j{i}"))
    assert len(w.deleted) == world_mod.DELETED_MEMORY
    assert w.was_deleted(("FineTuneJob", "ns", f"j{world_mod.DELETED_MEMORY + 499}"))


class FlakyApi(FakeApi):
    """Answers status patches with 429 (Retry-After 0) `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def patch_status(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        if self.failures > 0:
            self.failures -= 1
            self.calls.append(("patch-refused", kind))
            raise ApiException(status=429, reason="Too Many Requests")
        return super().patch_status(kind, ns, name, patch)


def test_a_failing_reconcile_backs_off_instead_of_running_on_every_resync() -> None:
    api = FlakyApi(failures=3)
    op = build_operator(OperatorSettings(retry_base_seconds=10, retry_max_seconds=100), api=api, clock=lambda: NOW)
    now = [1000.0]
    op.handlers.clock = lambda: now[0]
    op.handlers.on_cr_event(event("ADDED", ftj()))
    assert api.failures == 2
    key = next(iter(op.world.crs))
    for _ in range(20):  # resyncs within the first backoff (5-10 s): nothing is tried
        op.handlers.resync_once()
    assert api.failures == 2 and not op.handlers.due(key)
    now[0] += 10.01
    op.handlers.resync_once()
    assert api.failures == 1
    now[0] += 10.01  # the second backoff is 10-20 s: maybe not due yet
    op.handlers.resync_once()
    now[0] += 10.01
    op.handlers.resync_once()
    assert api.failures == 0
    now[0] += 40.01
    op.handlers.resync_once()  # succeeded: the retry entry is gone
    assert ("patch", "FineTuneJob/status") in api.calls and len(op.handlers._retries) == 0


def test_a_cr_gone_while_the_watch_was_away_is_forgotten() -> None:
    class GoneApi(FakeApi):
        def patch_status(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            raise ApiException(status=404, reason="Not Found")

    op = build_operator(OperatorSettings(), api=GoneApi(), clock=lambda: NOW)
    op.handlers.on_cr_event(event("ADDED", ftj()))
    assert op.world.sizes()["crs"] == 0 and op.reconciler.sizes()["verdicts"] == 0


def test_the_autoscaler_word_on_a_deleted_crs_pods_goes_with_the_cr() -> None:
    """An unschedulable pod's autoscaler Events are remembered per pod for a while (read at most every
    SCALE_UP_RECHECK_SECONDS); deleting the CR forgets them with everything else of it."""
    api = FakeApi()
    op = build_operator(OperatorSettings(), api=api, clock=lambda: NOW)
    cr = ftj()
    cr["metadata"].update(name="wide", uid="uid-wide", resourceVersion="1", generation=1)
    op.handlers.on_cr_event(event("ADDED", cr))
    job = api.objects[("Job", cr["metadata"]["namespace"], "wide-ft-preflight")]
    op.handlers.on_job_event(event("ADDED", job))
    pod = {"metadata": {"name": "wide-pf", "namespace": cr["metadata"]["namespace"],
                        "labels": job["spec"]["template"]["metadata"]["labels"],
                        "annotations": job["spec"]["template"]["metadata"]["annotations"]},
           "status": {"phase": "Pending", "conditions": [
               {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "lastTransitionTime": "2025-01-01T01:00:00Z"}]}}
    op.handlers.on_pod_event(event("ADDED", pod))
    assert sizes(op)["scale_ups"] == 1 and ("list", "Event") in api.calls
    op.handlers.on_cr_event(event("DELETED", cr))
    assert sizes(op)["scale_ups"] == 0
