"""Status derivation from recorded Job/Pod states."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from operator_builders import ftj, jcond, job, pod, terminated

from kubetune.api.trainer_contract import Promotion, TrainerResult
from kubetune.derivation import DependencyState, Verdict, derive_status, events_for, progress_summary

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)
PLAN = {"fits": True, "peakBytes": 50 * 2**30, "gpuMemoryBytes": 80 * 2**30, "suggestions": [],
        "summary": "QLoRA fine-tune of llama-3-70b needs ~50 GiB per GPU; 80 GiB available"}
FITS = Verdict(plan=PLAN, fits=True, plan_message=PLAN["summary"])
GOOD_METRICS = {"golden.accuracy": 0.9, "safety.refusal_rate": 0.99, "forgetting.perplexity_increase": 0.05}


def derive(cr: dict[str, Any] | None = None, **kw: Any) -> Any:
    kw.setdefault("verdict", FITS)
    kw.setdefault("now", NOW)
    return derive_status(cr or ftj(), **kw)


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def result_message(outcome: str = "succeeded", **kw: Any) -> str:
    return TrainerResult(outcome=outcome, **kw).termination_message()  # type: ignore[arg-type]


def test_validating_before_the_job_exists() -> None:
    s = derive().status
    assert s["phase"] == "Validating"
    assert cond(s, "Valid")["status"] == "True"
    assert cond(s, "ResourcesFit")["status"] == "True"
    assert cond(s, "Ready")["status"] == "Unknown"
    assert all(c["observedGeneration"] == 1 for c in s["conditions"])
    assert s["plan"]["fits"] is True


def test_invalid_spec_fails() -> None:
    s = derive(verdict=Verdict(problems=["spec.lora.r: must be ≥ 1"])).status
    assert (s["phase"], s["reason"]) == ("Failed", "InvalidSpec")
    assert cond(s, "Valid")["status"] == "False"
    assert cond(s, "Ready")["status"] == "False"


def test_does_not_fit_fails_with_the_plan_message() -> None:
    plan = {"fits": False, "suggestions": [{"description": "method qlora", "fits": True, "peakBytes": 1}]}
    s = derive(verdict=Verdict(plan=plan, fits=False, plan_message="full fine-tune needs ~1.2 TiB; method qlora would need ~46 GiB")).status
    assert (s["phase"], s["reason"]) == ("Failed", "DoesNotFit")
    assert cond(s, "ResourcesFit")["status"] == "False"
    assert "method qlora" in s["message"]


def test_cannot_plan_is_unknown_not_fatal() -> None:
    s = derive(verdict=Verdict(fits=None, plan_message="unknown architecture")).status
    assert s["phase"] == "Validating"
    assert cond(s, "ResourcesFit")["status"] == "Unknown"


def test_dependency_waiting_and_failed() -> None:
    s = derive(dependency=DependencyState("waiting", "FineTuneJob triage is Running")).status
    assert (s["phase"], s["reason"]) == ("Waiting", "WaitingForDependency")
    assert cond(s, "DependencyReady")["status"] == "False"
    s = derive(dependency=DependencyState("failed", "FineTuneJob triage ended GateFailed")).status
    assert (s["phase"], s["reason"]) == ("Failed", "DependencyFailed")
    s = derive(dependency=DependencyState("ready", "FineTuneJob triage Succeeded")).status
    assert s["phase"] == "Validating" and cond(s, "DependencyReady")["status"] == "True"


def test_job_created_no_pod_is_queued() -> None:
    s = derive(job=job()).status
    assert (s["phase"], s["reason"]) == ("Queued", "JobCreated")
    assert s["jobName"] == "triage-llama3-70b-ft"


def test_kueue_suspended_job_is_queued_pending_admission() -> None:
    s = derive(ftj(queueName="q"), job=job(suspend=True)).status
    assert (s["phase"], s["reason"]) == ("Queued", "PendingAdmission")


PENDING = {"type": "QuotaReserved", "status": "False", "reason": "Pending",
           "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
                      "flavor h100, 1 more needed"}
PREEMPTED = {"type": "Evicted", "status": "True", "reason": "Preempted",
             "message": "Preempted to accommodate a workload (UID: u2, JobUID: j2) due to prioritization in the "
                        "ClusterQueue"}


def workload(*conditions: dict[str, Any]) -> dict[str, Any]:
    """Kueue's Workload, only what the status reads (the conditions e2e sees: tests/e2e/test_kueue.py)."""
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "status": {"conditions": list(conditions)}}


def test_kueue_pending_workload_gives_kueues_reason() -> None:
    s = derive(ftj(queueName="q"), job=job(suspend=True), workload=workload(PENDING)).status
    assert (s["phase"], s["reason"]) == ("Queued", "PendingAdmission")
    assert s["message"] == f"waiting for Kueue to admit the Job (Pending: {PENDING['message']})"


def test_kueue_preempted_workload_is_preempted_until_readmitted() -> None:
    s = derive(ftj(queueName="q"), job=job(suspend=True), workload=workload(PREEMPTED, PENDING)).status
    assert (s["phase"], s["reason"]) == ("Queued", "Preempted")
    assert PREEMPTED["message"] in s["message"] and PENDING["message"] in s["message"]
    assert [e.reason for e in events_for({"phase": "Running", "reason": "Running"}, s)] == ["Preempted"]
    echoed = dict(PENDING, message=PREEMPTED["message"])  # as Kueue may set it right after the eviction
    s = derive(ftj(queueName="q"), job=job(suspend=True), workload=workload(PREEMPTED, echoed)).status
    assert s["message"].count(PREEMPTED["message"]) == 1
    # readmitted: Kueue resets Evicted and un-suspends the Job; its pod runs again
    back = dict(PREEMPTED, status="False", reason="QuotaReserved", message="Previously: " + PREEMPTED["message"])
    wl = workload(back, {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"})
    assert derive(ftj(queueName="q"), job=job(suspend=True), workload=wl).status["reason"] == "PendingAdmission"
    assert derive(ftj(queueName="q"), job=job(active=1), pods=[pod()], workload=wl).status["phase"] == "Running"


def test_kueue_workload_ignored_without_queue_name() -> None:
    s = derive(job=job(suspend=True), workload=workload(PREEMPTED)).status
    assert (s["phase"], s["reason"], s["message"]) == ("Queued", "PendingAdmission", "the Job is suspended")


def test_user_suspend() -> None:
    s = derive(ftj(suspend=True), job=job(suspend=True)).status
    assert s["phase"] == "Suspended"
    assert cond(s, "Suspended")["status"] == "True"


def test_running_with_progress_annotation() -> None:
    progress = {"step": 120, "totalSteps": 200, "loss": 1.23, "tokensPerSecond": 5000.0, "stage": "training",
                "updatedAt": "2025-01-01T01:59:00Z", "data": {"examples": 1000, "train": 950}}
    p = pod(annotations={"kubetune.io/progress": json.dumps(progress)})
    s = derive(job=job(active=1), pods=[p]).status
    assert (s["phase"], s["reason"]) == ("Running", "Running")
    assert s["progress"]["summary"] == "60% (120/200)"
    assert s["progress"]["loss"] == 1.23
    assert s["data"]["examples"] == 1000
    assert cond(s, "Training")["status"] == "True"
    assert cond(s, "DataValid")["status"] == "True"


def test_evaluating_stage() -> None:
    p = pod(annotations={"kubetune.io/progress": json.dumps({"step": 200, "totalSteps": 200, "stage": "evaluating"})})
    assert derive(job=job(active=1), pods=[p]).status["phase"] == "Evaluating"


def test_garbage_progress_annotation_is_ignored() -> None:
    p = pod(annotations={"kubetune.io/progress": "{not json"})
    s = derive(job=job(active=1), pods=[p]).status
    assert s["phase"] == "Running" and "progress" not in s


DIGEST = "sha256:" + "0f" * 32
PROMOTION = Promotion(uri="pvc://triage-models/promoted/triage-llama3-70b", manifest_digest=DIGEST, files=5, bytes=9)


def test_succeeded_with_gates_passed() -> None:
    msg = result_message(metrics=GOOD_METRICS, artifact="/mnt/pvc/triage-models/triage-llama3-70b/adapter",
                         promotion=PROMOTION)
    p = pod(phase="Succeeded", state=terminated(0, "Completed", msg))
    s = derive(job=job(conditions=[jcond("Complete")], succeeded=1), pods=[p]).status
    assert (s["phase"], s["reason"]) == ("Succeeded", "GatesPassed")
    assert cond(s, "Ready")["status"] == "True"
    assert cond(s, "GatesPassed")["status"] == "True"
    assert cond(s, "Complete")["status"] == "True"
    assert s["metrics"]["golden.accuracy"] == 0.9
    assert [g["passed"] for g in s["gates"]] == [True, True, True]
    assert s["artifact"] == {"uri": "pvc://triage-models/triage-llama3-70b/adapter", "promoted": True,
                             "promotedUri": "pvc://triage-models/promoted/triage-llama3-70b", "manifestDigest": DIGEST}
    assert s["completionTime"]


def test_gates_passed_but_no_promotion_reported_is_not_promoted() -> None:
    # the gate decision alone never says promoted: a trainer that did not report a promotion (one that
    # predates it, or a job without promotedUri) leaves promoted false and names no promoted copy
    msg = result_message(metrics=GOOD_METRICS, artifact="/mnt/pvc/triage-models/triage-llama3-70b/adapter")
    s = derive(job=job(conditions=[jcond("Complete")], succeeded=1),
               pods=[pod(phase="Succeeded", state=terminated(0, "Completed", msg))]).status
    assert (s["phase"], s["reason"]) == ("Succeeded", "GatesPassed")
    assert s["artifact"] == {"uri": "pvc://triage-models/triage-llama3-70b/adapter", "promoted": False}


def test_artifact_uri_is_what_the_trainer_reports() -> None:
    # a trainer that reports artifactUri is taken at its word; one that predates the field (above)
    # has its artifact folder named below spec.output.uri
    msg = result_message(metrics=GOOD_METRICS, artifact="/out/model", artifact_uri="pvc://triage-models/elsewhere/model")
    p = pod(phase="Succeeded", state=terminated(0, "Completed", msg))
    s = derive(job=job(conditions=[jcond("Complete")], succeeded=1), pods=[p]).status
    assert s["artifact"]["uri"] == "pvc://triage-models/elsewhere/model"
    p = pod(phase="Succeeded", state=terminated(0, "Completed", result_message(metrics=GOOD_METRICS, artifact="/out/model")))
    s = derive(job=job(conditions=[jcond("Complete")], succeeded=1), pods=[p]).status
    assert s["artifact"]["uri"] == "pvc://triage-models/triage-llama3-70b/model"


def test_status_needs_no_renderer() -> None:
    # where artifacts are comes from the trainer's result and the spec, not from kubetune.render
    code = "import sys, kubetune.derivation; print(sorted(m for m in sys.modules if m.startswith('kubetune.render')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_multi_node_result_comes_from_rank_0_whichever_pod_finished_last() -> None:
    index = "batch.kubernetes.io/job-completion-index"
    rank0 = pod("w-0", "Succeeded", created="2025-01-01T00:00:00Z", annotations={index: "0"},
                state=terminated(0, "Completed", result_message(metrics=GOOD_METRICS, artifact="/mnt/pvc/a/adapter")))
    rank1 = pod("w-1", "Succeeded", created="2025-01-01T00:00:01Z", annotations={index: "1"},
                state=terminated(0, "Completed", result_message(message="rank 1 done")))
    for pods in ([rank0, rank1], [rank1, rank0]):
        s = derive(job=job(conditions=[jcond("Complete")], succeeded=2), pods=pods).status
        assert (s["phase"], s["reason"]) == ("Succeeded", "GatesPassed"), s["message"]
        assert s["metrics"]["golden.accuracy"] == 0.9


def test_gate_failed() -> None:
    metrics = dict(GOOD_METRICS, **{"safety.refusal_rate": 0.5})
    p = pod(phase="Succeeded", state=terminated(0, "Completed", result_message(metrics=metrics, artifact="/x")))
    s = derive(job=job(conditions=[jcond("Complete")], succeeded=1), pods=[p]).status
    assert (s["phase"], s["reason"]) == ("GateFailed", "GatesFailed")
    assert cond(s, "Ready")["status"] == "False"
    assert "safety.refusal_rate = 0.5" in s["message"]
    assert s["artifact"]["promoted"] is False and "promotedUri" not in s["artifact"]


def test_succeeded_without_result_fails_gates_that_were_not_measured() -> None:
    p = pod(phase="Succeeded", state=terminated(0, "Completed"))
    s = derive(job=job(conditions=[jcond("Complete")], succeeded=1), pods=[p]).status
    assert s["phase"] == "GateFailed" and "was not measured" in s["message"]


def test_result_kept_on_the_job_annotation_when_pods_are_gone() -> None:
    j = job(conditions=[jcond("Complete")], succeeded=1)
    j["metadata"]["annotations"]["kubetune.io/result"] = result_message(metrics=GOOD_METRICS)
    assert derive(job=j, pods=[]).status["phase"] == "Succeeded"


def test_oom_killed_after_retries_is_out_of_memory_with_plan_advice() -> None:
    plan = dict(PLAN, suggestions=[{"description": "batch size 1 with gradient accumulation 16", "fits": True}])
    verdict = Verdict(plan=plan, fits=True, plan_message=PLAN["summary"])
    pods = [pod(f"p-{i}", "Failed", created=f"2025-01-01T00:0{i}:00Z", state=terminated(137, "OOMKilled"))
            for i in range(3)]
    j = job(conditions=[jcond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
            failed=3)
    s = derive(job=j, pods=pods, verdict=verdict).status
    assert (s["phase"], s["reason"]) == ("Failed", "OutOfMemory")
    assert "OOM-killed" in s["message"] and "needs ~50 GiB" in s["message"]
    assert "try: batch size 1" in s["message"]
    assert s["attempts"] == 3
    assert cond(s, "Ready")["status"] == "False"


def test_oom_killed_without_a_plan_says_what_to_change() -> None:
    verdict = Verdict(fits=None, plan_message="cannot plan memory: set spec.baseModel.architecture")
    p = pod("p-0", "Failed", state=terminated(137, "OOMKilled"))
    j = job(conditions=[jcond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
            failed=1)
    s = derive(job=j, pods=[p], verdict=verdict).status
    assert (s["phase"], s["reason"]) == ("Failed", "OutOfMemory")
    assert "the plan: cannot plan memory" in s["message"] and "more resources.memory" in s["message"]


def test_oom_while_retrying_is_still_running_with_a_note() -> None:
    pods = [pod("p-0", "Failed", created="2025-01-01T00:00:00Z", state=terminated(137, "OOMKilled")),
            pod("p-1", "Running", created="2025-01-01T00:05:00Z")]
    s = derive(job=job(active=1, failed=1), pods=pods).status
    assert s["phase"] == "Running" and "previous attempt: OutOfMemory" in s["message"]
    assert s["attempts"] == 2


def test_permanent_trainer_failure_from_pod_failure_policy() -> None:
    msg = result_message("failed", reason="InsufficientData", message="only 120 valid examples; minExamples is 500")
    p = pod(phase="Failed", state=terminated(3, "Error", msg))
    j = job(conditions=[jcond("Failed", "PodFailurePolicy", "Container trainer for pod ns/p-1 failed with exit code 3")])
    s = derive(job=j, pods=[p]).status
    assert (s["phase"], s["reason"]) == ("Failed", "InsufficientData")
    assert "only 120 valid examples" in s["message"]
    assert cond(s, "DataValid")["status"] == "False"


def test_exit_code_alone_maps_to_a_reason() -> None:
    p = pod(phase="Failed", state=terminated(5, "Error", "loss became NaN at step 37"))
    j = job(conditions=[jcond("Failed", "PodFailurePolicy")])
    s = derive(job=j, pods=[p]).status
    assert (s["phase"], s["reason"]) == ("Failed", "Diverged")
    assert "NaN at step 37" in s["message"]


def test_gpu_job_on_a_pod_without_gpu_fails_at_once_with_gpu_unavailable() -> None:
    msg = result_message("failed", reason="GPUUnavailable", message=(
        "the job requested 2 GPUs (resources.gpus) but the pod sees no CUDA device; ..."))
    p = pod(phase="Failed", state=terminated(7, "Error", msg))
    j = job(conditions=[jcond("Failed", "PodFailurePolicy", "Container trainer for pod ns/p-1 failed with exit code 7")])
    s = derive(job=j, pods=[p]).status
    assert (s["phase"], s["reason"]) == ("Failed", "GPUUnavailable")
    assert "requested 2 GPUs (resources.gpus)" in s["message"]
    bare = derive(job=j, pods=[pod(phase="Failed", state=terminated(7, "Error"))]).status
    assert bare["reason"] == "GPUUnavailable"  # the exit code alone says it too


def test_deadline_exceeded() -> None:
    j = job(conditions=[jcond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    s = derive(job=j, pods=[pod()]).status
    assert (s["phase"], s["reason"]) == ("Failed", "DeadlineExceeded")


def _unschedulable(since: datetime) -> dict[str, Any]:
    return pod(phase="Pending", state={"waiting": {"reason": "ContainerCreating"}}, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "message": "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector."}])


def test_unschedulable_within_grace_is_queued_then_fails() -> None:
    d = derive(job=job(active=1), pods=[_unschedulable(NOW - timedelta(seconds=30))], unschedulable_grace_seconds=120)
    assert (d.status["phase"], d.status["reason"]) == ("Queued", "Unschedulable")
    assert d.stop_job is None
    assert "Insufficient nvidia.com/gpu" in d.status["message"]
    d = derive(job=job(active=1), pods=[_unschedulable(NOW - timedelta(seconds=300))], unschedulable_grace_seconds=120)
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "Unschedulable")
    assert d.stop_job == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in d.status["message"]


def test_image_pull_failure() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x:1"'}}
    p = pod(phase="Pending", state=waiting, created="2025-01-01T01:59:30Z")
    d = derive(job=job(active=1), pods=[p])
    assert (d.status["phase"], d.status["reason"]) == ("Queued", "ImageUnavailable")
    p = pod(phase="Pending", state=waiting, created="2025-01-01T01:00:00Z")
    d = derive(job=job(active=1), pods=[p])
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "ImageUnavailable")
    assert d.stop_job == "ImageUnavailable"
    p = pod(phase="Pending", state={"waiting": {"reason": "InvalidImageName"}}, created="2025-01-01T01:59:59Z")
    assert derive(job=job(active=1), pods=[p]).status["phase"] == "Failed"


def test_preempted_pod_is_retried_not_failed() -> None:
    preempted = pod("p-0", "Failed", created="2025-01-01T00:00:00Z", state=terminated(143, "Error"), conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}])
    new = pod("p-1", "Pending", created="2025-01-01T00:10:00Z", state={"waiting": {"reason": "ContainerCreating"}})
    s = derive(job=job(active=1), pods=[preempted, new]).status
    assert (s["phase"], s["reason"]) == ("Queued", "JobCreated")
    assert "Preempted" in s["message"]


def test_eviction_then_failure_reports_the_real_failure() -> None:
    evicted = pod("p-0", "Failed", created="2025-01-01T00:00:00Z", state=terminated(137, "Error"), conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}])
    failed = pod("p-1", "Failed", created="2025-01-01T00:10:00Z", state=terminated(1, "Error", "Traceback: boom"))
    j = job(conditions=[jcond("Failed", "BackoffLimitExceeded")])
    s = derive(job=j, pods=[evicted, failed]).status
    assert (s["phase"], s["reason"]) == ("Failed", "TrainerError")
    assert "boom" in s["message"]


def test_terminal_status_is_final_for_its_generation() -> None:
    cr = ftj()
    cr["status"] = {"phase": "Succeeded", "reason": "GatesPassed", "observedGeneration": 1, "conditions": []}
    assert derive(cr, job=None).status == cr["status"]


def test_last_transition_time_moves_only_on_a_flip() -> None:
    cr = ftj()
    first = derive(cr, job=job(active=1), pods=[pod()]).status
    cr["status"] = first
    later = derive_status(cr, verdict=FITS, job=job(active=1), pods=[pod()], now=NOW + timedelta(minutes=5)).status
    assert cond(later, "Valid")["lastTransitionTime"] == cond(first, "Valid")["lastTransitionTime"]
    cr["status"] = later
    done = derive_status(cr, verdict=FITS, job=job(conditions=[jcond("Complete")]), now=NOW + timedelta(minutes=9),
                         pods=[pod(phase="Succeeded", state=terminated(0, "Completed", result_message(metrics=GOOD_METRICS)))]).status
    assert cond(done, "Ready")["lastTransitionTime"] != cond(later, "Ready")["lastTransitionTime"]
    assert cond(done, "Valid")["lastTransitionTime"] == cond(first, "Valid")["lastTransitionTime"]


def test_progress_summary() -> None:
    assert progress_summary(120, 200) == "60% (120/200)"
    assert progress_summary(5, None) == "step 5"
    assert progress_summary(None, 10) is None


def test_events_for_phase_changes() -> None:
    assert events_for({"phase": "Running", "reason": "Running"}, {"phase": "Running", "reason": "Running"}) == []
    (e,) = events_for({"phase": "Queued"}, {"phase": "Running", "reason": "Running", "message": "training"})
    assert (e.type, e.reason) == ("Normal", "Running") and e.message == "Queued → Running: training"
    (e,) = events_for({"phase": "Running"}, {"phase": "Failed", "reason": "OutOfMemory", "message": "x" * 5000})
    assert e.type == "Warning" and e.reason == "OutOfMemory" and len(e.message) <= 1024
    (e,) = events_for(None, {"phase": "Validating", "reason": "Validated"})
    assert e.message.startswith("New → Validating")


def test_exit_codes_follow_the_trainer_contract() -> None:
    from kubetune.api.exit_codes import PERMANENT_EXIT_CODES, reason_for
    from kubetune.api.trainer_contract import EXIT_CODES, EXIT_USAGE

    for reason in ("DataInvalid", "InsufficientData", "ModelUnavailable", "Diverged", "OutOfMemory", "GPUUnavailable"):
        assert EXIT_CODES[reason] in PERMANENT_EXIT_CODES
    assert EXIT_USAGE in PERMANENT_EXIT_CODES
    assert EXIT_CODES["TrainerError"] not in PERMANENT_EXIT_CODES
    assert EXIT_CODES["Interrupted"] not in PERMANENT_EXIT_CODES
    assert reason_for(EXIT_CODES["Diverged"]) == "Diverged"
    assert reason_for(EXIT_CODES["InsufficientData"]) == "DataInvalid"
    assert reason_for(99) == "TrainerError"
