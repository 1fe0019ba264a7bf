"""An unschedulable pod waits while the cluster autoscaler adds a node for it, then fails after the
job's own grace period (spec.resources.unschedulableGraceSeconds) or the operator's; the status
says what it waits for (kubetune.derivation.scheduling, through derive_status and the reconciler)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fake_api import FakeApi
from operator_builders import ftj, job, pod

from kubetune.controller.app import build_operator
from kubetune.controller.config import OperatorSettings
from kubetune.derivation import Verdict, derive_status
from kubetune.derivation.scheduling import ScaleUp, autoscaler_signal, unschedulable_outcome

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)
FITS = Verdict(fits=True, plan_message="fits")


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def event(reason: str, at: datetime, message: str) -> dict[str, Any]:
    return {"reason": reason, "lastTimestamp": ts(at), "message": message, "source": {"component": "cluster-autoscaler"}}


def test_the_latest_autoscaler_word_counts() -> None:
    evs = [event("TriggeredScaleUp", NOW - timedelta(minutes=5), "pod triggered scale-up: [{gpu 0->1 (max: 4)}]"),
           event("FailedScheduling", NOW, "0/3 nodes are available"),
           event("NotTriggerScaleUp", NOW - timedelta(minutes=1), "pod didn't trigger scale-up: 1 max node group size reached")]
    sig = autoscaler_signal(evs)
    assert sig == ScaleUp(False, NOW - timedelta(minutes=1), "pod didn't trigger scale-up: 1 max node group size reached")
    assert autoscaler_signal([event("FailedScheduling", NOW, "x")]) is None


def test_outcomes() -> None:
    up = ScaleUp(True, NOW - timedelta(minutes=2), "pod triggered scale-up: [{gpu 0->1 (max: 4)}]")
    no = ScaleUp(False, NOW - timedelta(minutes=2), "pod didn't trigger scale-up: no node group fits")
    stale = ScaleUp(True, NOW - timedelta(minutes=20), "pod triggered scale-up")
    assert unschedulable_outcome(30, 120, None, NOW) == (False, "waiting up to 120s for a node")
    assert unschedulable_outcome(300, 120, None, NOW) == (True, "unschedulable for over 120s")
    assert unschedulable_outcome(300, 120, up, NOW) == (
        False, "waiting for the cluster autoscaler to add a node (pod triggered scale-up: [{gpu 0->1 (max: 4)}])")
    assert unschedulable_outcome(30, 120, no, NOW) == (
        False, "the cluster autoscaler will not add a node (pod didn't trigger scale-up: no node group fits)")
    assert unschedulable_outcome(300, 120, no, NOW)[0] is True
    fail, why = unschedulable_outcome(1300, 120, stale, NOW)
    assert fail and "did not bring a node within 900s" in why


def unschedulable(name: str, since: datetime) -> dict[str, Any]:
    return pod(name, phase="Pending", state={"waiting": {"reason": "ContainerCreating"}}, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": ts(since),
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}])


def test_a_scaling_up_autoscaler_keeps_the_job_queued_past_the_grace() -> None:
    p = unschedulable("p-1", NOW - timedelta(seconds=600))
    up = {"p-1": ScaleUp(True, NOW - timedelta(seconds=60), "pod triggered scale-up: [{gpu 0->1 (max: 4)}]")}
    d = derive_status(ftj(), verdict=FITS, job=job(active=1), pods=[p], now=NOW, unschedulable_grace_seconds=120,
                      scale_ups=up)
    assert (d.status["phase"], d.status["reason"], d.stop_job) == ("Queued", "Unschedulable", None)
    assert "waiting for the cluster autoscaler to add a node" in d.status["message"]
    d = derive_status(ftj(), verdict=FITS, job=job(active=1), pods=[p], now=NOW, unschedulable_grace_seconds=120)
    assert (d.status["phase"], d.stop_job) == ("Failed", "Unschedulable")


def test_the_jobs_own_grace_wins() -> None:
    p = unschedulable("p-1", NOW - timedelta(seconds=600))
    patient = ftj(resources={"gpus": 1, "gpuMemory": "80Gi", "unschedulableGraceSeconds": 3600})
    d = derive_status(patient, verdict=FITS, job=job(active=1), pods=[p], now=NOW, unschedulable_grace_seconds=120)
    assert (d.status["phase"], d.status["reason"]) == ("Queued", "Unschedulable")
    assert "waiting up to 3600s for a node" in d.status["message"]
    hasty = ftj(resources={"gpus": 1, "gpuMemory": "80Gi", "unschedulableGraceSeconds": 0})
    p2 = unschedulable("p-1", NOW)
    assert derive_status(hasty, verdict=FITS, job=job(active=1), pods=[p2], now=NOW).status["phase"] == "Failed"


def test_the_reconciler_reads_the_autoscalers_events_of_an_unschedulable_pod() -> None:
    api = FakeApi()
    op = build_operator(OperatorSettings(), api=api, clock=lambda: NOW)
    cr = ftj()
    op.handlers.on_cr_event({"type": "ADDED", "object": cr})
    preflight = next(o for (k, _, n), o in api.objects.items() if k == "Job" and n.endswith("-preflight"))
    p = unschedulable("pf-1", NOW - timedelta(seconds=600))
    p["metadata"].update(namespace=cr["metadata"]["namespace"], labels=preflight["spec"]["template"]["metadata"]["labels"],
                         annotations=preflight["spec"]["template"]["metadata"]["annotations"],
                         ownerReferences=[{"kind": "Job", "name": preflight["metadata"]["name"],
                                           "uid": preflight["metadata"]["uid"], "controller": True}])
    api.pod_event_log[(cr["metadata"]["namespace"], "pf-1")] = [
        event("TriggeredScaleUp", NOW - timedelta(seconds=30), "pod triggered scale-up: [{cpu 0->1 (max: 9)}]")]
    op.handlers.on_pod_event({"type": "ADDED", "object": p})
    st = (op.world.cr(next(iter(op.world.crs))) or {})["status"]
    assert (st["phase"], st["reason"]) == ("Validating", "Unschedulable")
    assert "waiting for the cluster autoscaler to add a node (pod triggered scale-up" in st["message"]
    listed = api.calls.count(("list", "Event"))
    for _ in range(5):  # re-read at most every 10 s per pod
        op.handlers.resync_once()
    assert api.calls.count(("list", "Event")) == listed == 1


def test_the_fail_decision_reads_the_autoscaler_afresh() -> None:
    api = FakeApi()
    now = [NOW]
    op = build_operator(OperatorSettings(), api=api, clock=lambda: now[0])
    cr = ftj(resources={"gpus": 1, "gpuMemory": "80Gi", "unschedulableGraceSeconds": 60})
    op.handlers.on_cr_event({"type": "ADDED", "object": cr})
    ns = cr["metadata"]["namespace"]
    preflight = next(o for (k, _, n), o in api.objects.items() if k == "Job" and n.endswith("-preflight"))
    p = unschedulable("pf-1", NOW)
    p["metadata"].update(namespace=ns, labels=preflight["spec"]["template"]["metadata"]["labels"],
                         annotations=preflight["spec"]["template"]["metadata"]["annotations"],
                         ownerReferences=[{"kind": "Job", "name": preflight["metadata"]["name"],
                                           "uid": preflight["metadata"]["uid"], "controller": True}])
    op.handlers.on_pod_event({"type": "ADDED", "object": p})  # read: no events yet (cached 10 s)
    api.pod_event_log[(ns, "pf-1")] = [event("TriggeredScaleUp", NOW + timedelta(seconds=50), "pod triggered scale-up")]
    now[0] = NOW + timedelta(seconds=61)  # past the grace, the cached read says nothing: read again before failing
    op.handlers.resync_once()
    st = (op.world.cr(next(iter(op.world.crs))) or {})["status"]
    assert (st["phase"], st["reason"]) == ("Validating", "Unschedulable"), st["message"]


def test_a_finished_job_waits_for_its_pods_result_before_the_gates_decide() -> None:
    """The Job's Complete event can come before the pod's (separate watches; after a restart, separate
    lists): ending the run then would fail its gates as "not measured"."""
    from operator_builders import jcond, terminated

    from kubetune.api.trainer_contract import TrainerResult

    done = job(succeeded=1, conditions=[jcond("Complete")])
    done["status"]["completionTime"] = ts(NOW - timedelta(seconds=5))
    d = derive_status(ftj(), verdict=FITS, job=done, pods=[], now=NOW)
    assert (d.status["phase"], d.status["reason"]) == ("Evaluating", "Evaluating")
    assert "reading its result" in d.status["message"]
    result = TrainerResult(outcome="succeeded", metrics={"golden.accuracy": 0.9, "safety.refusal_rate": 1.0,
                                                          "forgetting.perplexity_increase": 0.01}, artifact="/a")
    p = pod("p-1", phase="Succeeded", state=terminated(0, "Completed", result.termination_message()))
    assert derive_status(ftj(), verdict=FITS, job=done, pods=[p], now=NOW).status["phase"] == "Succeeded"
    # its pod gone unread and nothing kept on the Job: after a minute the run ends on what is known
    late = derive_status(ftj(), verdict=FITS, job=done, pods=[], now=NOW + timedelta(seconds=60))
    assert late.status["phase"] == "GateFailed"


def test_a_finished_jobs_pods_are_read_when_their_events_lag() -> None:
    from operator_builders import jcond, preflight_done, terminated

    from kubetune.api.trainer_contract import TrainerResult

    api = FakeApi()
    op = build_operator(OperatorSettings(), api=api, clock=lambda: NOW)
    cr = ftj()
    op.handlers.on_cr_event({"type": "ADDED", "object": cr})
    ns = cr["metadata"]["namespace"]
    preflight = api.objects[("Job", ns, f"{cr['metadata']['name']}-ft-preflight")]
    op.handlers.on_pod_event({"type": "MODIFIED", "object": preflight_done(preflight)})
    op.handlers.on_job_event({"type": "MODIFIED", "object": preflight})
    trainer = api.objects[("Job", ns, f"{cr['metadata']['name']}-ft")]
    result = TrainerResult(outcome="succeeded", metrics={"golden.accuracy": 0.9, "safety.refusal_rate": 1.0,
                                                          "forgetting.perplexity_increase": 0.01}, artifact="/a")
    p = pod("t-1", phase="Succeeded", state=terminated(0, "Completed", result.termination_message()))
    p["metadata"].update(namespace=ns, labels=trainer["spec"]["template"]["metadata"]["labels"],
                         annotations=trainer["spec"]["template"]["metadata"]["annotations"],
                         ownerReferences=[{"kind": "Job", "name": trainer["metadata"]["name"],
                                           "uid": trainer["metadata"]["uid"], "controller": True}])
    api.pods_of_job[trainer["metadata"]["uid"]] = [p]  # on the API server; its watch event not here yet
    trainer["status"] = {"conditions": [jcond("Complete")], "succeeded": 1, "startTime": ts(NOW),
                         "completionTime": ts(NOW)}
    trainer["metadata"]["resourceVersion"] = "999"
    op.handlers.on_job_event({"type": "MODIFIED", "object": trainer})
    st = (op.world.cr(next(iter(op.world.crs))) or {})["status"]
    assert (st["phase"], st["metrics"]["golden.accuracy"]) == ("Succeeded", 0.9), st["message"]
    assert api.calls.count(("list", "Pod")) == 1
