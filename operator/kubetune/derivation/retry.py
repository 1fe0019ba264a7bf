"""spec.training.oomRetry in status: whether the current attempt ran out of memory and a smaller one is
due (the reconciler then creates that attempt's Job), and status.trainingAttempts.

Every attempt is a Job of its own with a deterministic name (kubetune.render.names.job_name) and the
label kubetune.io/attempt, so the world alone says which attempt runs: a restarted operator finds the
newest attempt's Job, and creating the next one twice finds the first (same name, same owner).
The configurations come from kubetune.planning.oom_retry (one decision for the operator and
`kubetune run`), with their Job names and plans, in the verdict (`Verdict.attempts`). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.constants import LABEL_ATTEMPT
from kubetune.api.enums import Phase, Reason
from kubetune.derivation.failures import pod_failure
from kubetune.derivation.inputs import Verdict
from kubetune.derivation.job import job_condition
from kubetune.derivation.outcome import State
from kubetune.derivation.pods import Pods, disrupted


@dataclass(frozen=True)
class Retry:
    """The state to report and the attempt to start."""

    state: State
    next_attempt: int
    stop_job: bool  # the current attempt's Job is still active (its own retries would run out of memory again)


def job_attempt(job: Mapping[str, Any]) -> int:
    """The attempt a trainer Job runs (label kubetune.io/attempt; 1 without it)."""
    try:
        return int(((job.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT) or 1)
    except ValueError:
        return 1


def out_of_memory(job: Mapping[str, Any], pods: Pods, state: State, verdict: Verdict) -> str | None:
    """The message of the current attempt's out-of-memory failure: the Job failed with OutOfMemory, or
    one of its pods did while the Job would retry it as it is; None otherwise (or once it finished)."""
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        return None
    if state.phase == Phase.FAILED:
        return state.message if state.reason == Reason.OUT_OF_MEMORY else None
    for pod in reversed(pods.phase("Failed")):
        if disrupted(pod):
            continue
        reason, message = pod_failure(pod, verdict)
        if reason == Reason.OUT_OF_MEMORY:
            return message
    return None


def retry(job: Mapping[str, Any], pods: Pods, state: State, verdict: Verdict, *, suspend_wanted: bool) -> Retry | None:
    """A smaller attempt is due: the current one ran out of memory and spec.training.oomRetry allows
    another (`verdict.attempts` lists the configurations). None otherwise."""
    attempts = list(verdict.attempts)
    current = job_attempt(job)
    if suspend_wanted or current >= len(attempts):
        return None
    why = out_of_memory(job, pods, state, verdict)
    if why is None:
        return None
    nxt = attempts[current]
    msg = (f"attempt {current} ran out of memory ({why}); starting attempt {current + 1} of {len(attempts)} with "
           f"{describe(nxt)}, resuming from the newest checkpoint")
    finished = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    return Retry(State(Phase.QUEUED, Reason.RETRYING_SMALLER, msg), current + 1, stop_job=not finished)


def describe(attempt: Mapping[str, Any]) -> str:
    gc = "on" if attempt.get("gradientCheckpointing") else "off"
    text = (f"batchSize {attempt.get('batchSize')}, gradientAccumulationSteps "
            f"{attempt.get('gradientAccumulationSteps')}, gradientCheckpointing {gc}")
    if attempt.get("plan"):
        text += f" (plan: {attempt['plan']})"
    return text


def training_attempts(verdict: Verdict, job: Mapping[str, Any] | None, state: State) -> list[dict[str, Any]] | None:
    """status.trainingAttempts: attempts 1 to the current one, each with its configuration and plan;
    the earlier ones ended OutOfMemory (that is what started the next), the current one as `state` says
    once it ended. None without spec.training.oomRetry or before the first Job."""
    if len(verdict.attempts) < 2 or job is None:
        return None
    current = job_attempt(job)
    out = []
    for i, conf in enumerate(verdict.attempts[:current], start=1):
        entry = {"attempt": i, **conf}
        if i < current:
            entry["reason"] = Reason.OUT_OF_MEMORY
        elif state.phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.GATE_FAILED):
            entry["reason"], entry["message"] = state.reason, state.message[:4096]
        out.append({k: v for k, v in entry.items() if v is not None})
    return out


__all__ = ["Retry", "describe", "job_attempt", "out_of_memory", "retry", "training_attempts"]
