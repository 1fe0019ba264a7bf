"""The training Job and its Pods ⇒ the phase they are in: finished (the trainer's result says how),
failed (the pod or Job failure says why), suspended or waiting for Kueue, running or evaluating
(the progress report says which), or queued — and whether the Job must be stopped because it can
never start (unschedulable, or an image that cannot be pulled, past the grace period)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubetune.api.enums import Phase, Reason
from kubetune.api.trainer_contract import ProgressReport, TrainerResult
from kubetune.derivation.failures import job_failure, pod_failure
from kubetune.derivation.inputs import Verdict
from kubetune.derivation.kueue import admission_state
from kubetune.derivation.outcome import State, finished_state
from kubetune.derivation.pods import Pods, created, pod_condition, progress_summary, waiting
from kubetune.derivation.scheduling import ScaleUp, unschedulable_outcome
from kubetune.derivation.timeutil import parse_time

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
PERMANENT_IMAGE_REASONS = ("InvalidImageName", "ErrImageNeverPull")
EVALUATING_STAGES = ("evaluating", "exporting")


def job_condition(job: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The Job's condition of that type when it is True."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c  # type: ignore[no-any-return]
    return None


def failure_time(job: Mapping[str, Any] | None) -> str | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return c.get("lastTransitionTime")  # type: ignore[no-any-return]
    return None


def job_state(job: Mapping[str, Any], pods: Pods, result: TrainerResult | None, progress: ProgressReport | None,
              verdict: Verdict, suspend_wanted: bool, queued: bool, now: datetime,
              unschedulable_grace: float, image_pull_grace: float,
              workload: Mapping[str, Any] | None = None, *,
              scale_ups: Mapping[str, ScaleUp] | None = None) -> tuple[State, str | None]:
    """(the state, the reason to stop the Job or None). `workload`: Kueue's Workload of a queued Job;
    `scale_ups`: what the cluster autoscaler said about each unschedulable pod."""
    # Finished
    done = job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet")
    if done:
        if result is None and not result_overdue(job, done, now):
            # Job and pod events come on separate watches (and after a restart, separate lists): the
            # pod's termination message may not be seen yet; deciding now would end it without metrics
            return State(Phase.EVALUATING, Reason.EVALUATING,
                         "the trainer finished; reading its result (the pod's termination message)"), None
        return finished_state(result), None
    failed = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    if failed:
        return State(Phase.FAILED, *job_failure(failed, pods, verdict)), None

    # Suspended (by the user, or waiting for Kueue's admission)
    spec_suspended = bool((job.get("spec") or {}).get("suspend"))
    if suspend_wanted:
        return State(Phase.SUSPENDED, Reason.SUSPENDED,
                     "suspended (spec.suspend); resuming continues from the last checkpoint"), None
    if spec_suspended:
        if queued:
            return State(Phase.QUEUED, *admission_state(workload)), None
        return State(Phase.QUEUED, Reason.PENDING_ADMISSION, "the Job is suspended"), None

    # Active
    previous = ""
    for pod in pods.phase("Failed"):
        reason, msg = pod_failure(pod, verdict)
        previous = f" (previous attempt: {reason}: {msg})"
    running = pods.phase("Running")
    if running:
        stage = progress.stage if progress is not None else None
        if stage in EVALUATING_STAGES:
            return State(Phase.EVALUATING, Reason.EVALUATING, "evaluating the trained model"), None
        step = progress_summary(progress.step, progress.total_steps) if progress is not None else None
        msg = f"training: {step}" if step else f"the trainer is running ({stage or 'starting'})"
        return State(Phase.RUNNING, Reason.RUNNING, msg + previous), None
    stuck = pending_state(pods, now, unschedulable_grace, image_pull_grace, what="trainer", phase=Phase.QUEUED,
                          scale_ups=scale_ups)
    if stuck is not None:
        return stuck
    if pods.phase("Pending"):
        return State(Phase.QUEUED, Reason.JOB_CREATED, "the trainer pod is starting" + previous), None
    return State(Phase.QUEUED, Reason.JOB_CREATED, "the training Job was created" + previous), None


RESULT_WAIT_SECONDS = 60.0


def result_overdue(job: Mapping[str, Any], done: Mapping[str, Any], now: datetime) -> bool:
    """A finished Job's result is given up on RESULT_WAIT_SECONDS after it finished (its pod gone
    before the operator read it, and none kept on the Job): the run then ends on what is known."""
    at = parse_time((job.get("status") or {}).get("completionTime")) or parse_time(done.get("lastTransitionTime"))
    return at is None or (now - at).total_seconds() >= RESULT_WAIT_SECONDS


def pending_state(pods: Pods, now: datetime, unschedulable_grace: float, image_pull_grace: float, *, what: str,
                  phase: Phase, scale_ups: Mapping[str, ScaleUp] | None = None) -> tuple[State, str | None] | None:
    """A pending pod that cannot start — no node for it, or its image cannot be pulled: in `phase`
    while within the grace period (or, unschedulable, while the cluster autoscaler is adding a node
    for it: `scale_ups`, by pod name, see scheduling.py), then Failed with the reason to stop its Job.
    None when no pod is stuck. `what` names the pod ("trainer", "data preflight")."""
    for pod in pods.phase("Pending"):
        sched = pod_condition(pod, "PodScheduled")
        if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
            since = parse_time(sched.get("lastTransitionTime")) or parse_time(created(pod)) or now
            msg = f"no node can run the {what} pod: {sched.get('message', '')}".strip()
            signal = (scale_ups or {}).get(str((pod.get("metadata") or {}).get("name")))
            fail, note = unschedulable_outcome((now - since).total_seconds(), unschedulable_grace, signal, now)
            if fail:
                return State(Phase.FAILED, Reason.UNSCHEDULABLE, f"{msg} ({note})"), Reason.UNSCHEDULABLE
            return State(phase, Reason.UNSCHEDULABLE, f"{msg}; {note}"), None
        wait = waiting(pod)
        if wait and wait.get("reason") in IMAGE_PULL_REASONS:
            since = parse_time((pod.get("status") or {}).get("startTime")) or parse_time(created(pod)) or now
            msg = f"cannot pull the trainer image ({wait.get('reason')}): {wait.get('message', '')}".strip()
            if (wait.get("reason") in PERMANENT_IMAGE_REASONS
                    or (now - since).total_seconds() >= image_pull_grace):
                return State(Phase.FAILED, Reason.IMAGE_UNAVAILABLE, msg), Reason.IMAGE_UNAVAILABLE
            return State(phase, Reason.IMAGE_UNAVAILABLE, msg), None
    return None
