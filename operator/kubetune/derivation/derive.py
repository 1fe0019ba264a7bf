"""`derive_status`: the whole status of a FineTuneJob / PreferenceAlignment from the world.

Inputs are what the operator observed: the CR (spec, generation; the old conditions are read only
to keep their lastTransitionTime when nothing flipped), the verdict of validation and the memory
plan, the dependency (PreferenceAlignment), the data preflight's batch/v1 Job and its Pod (its
result: the data summary), the trainer's Job, its Pods (phases, conditions, container states,
termination messages) and the trainer's progress annotation. Nothing is incremented from the old
status. Until the trainer's Job exists the preflight's decides the phase (preflight.py); after,
the trainer's does, and the preflight's result still gives `data` until the trainer reports it.

Terminal phases are facts: once Succeeded, GateFailed or Failed for the current generation, the
status stays as it is (the world may forget — pods are garbage-collected, a Job deleted).

Phases: Pending → Validating (spec, then the data in the preflight pod) → (Waiting) → Queued →
Running → Evaluating → Succeeded | GateFailed | Failed; Suspended.

The steps live beside this module: pods.py reads the Pods and the trainer's reports, job.py turns
the Job into a phase, failures.py explains a failure, outcome.py adds what the result and the gates
decide (shared with `kubetune run`), conditions.py keeps the condition list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune.api.enums import TERMINAL_PHASES, ConditionType, Phase, Reason
from kubetune.api.model_cache import ModelCacheReport
from kubetune.api.trainer_contract import TrainerResult
from kubetune.derivation.inputs import DependencyState, Verdict
from kubetune.derivation.job import failure_time, job_state
from kubetune.derivation.outcome import State, outcome_status
from kubetune.derivation.pods import Pods
from kubetune.derivation.preflight import downloading, preflight_state
from kubetune.derivation.retry import retry, training_attempts
from kubetune.derivation.scheduling import ScaleUp
from kubetune.derivation.timeutil import format_time
from kubetune.gates import ConditionUpdate


@dataclass
class Derived:
    status: dict[str, Any]
    stop_job: str | None = None  # a reason: the Job must be stopped (suspended) — a terminal failure
    result: TrainerResult | None = None  # the trainer's final report, when seen
    notes: list[str] = field(default_factory=list)
    stop_preflight: str | None = None  # a reason: the preflight Job must be stopped (its pod cannot start)
    preflight_result: TrainerResult | None = None  # the data preflight's report, when seen
    next_attempt: int | None = None  # spec.training.oomRetry: the attempt whose Job is to be created now


def derive_status(
    cr: Mapping[str, Any],
    *,
    verdict: Verdict,
    dependency: DependencyState | None = None,
    job: Mapping[str, Any] | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
    preflight: Mapping[str, Any] | None = None,
    preflight_pods: Sequence[Mapping[str, Any]] = (),
    now: datetime,
    unschedulable_grace_seconds: float = 120.0,
    image_pull_grace_seconds: float = 120.0,
    job_name: str | None = None,
    workload: Mapping[str, Any] | None = None,
    scale_ups: Mapping[str, ScaleUp] | None = None,
) -> Derived:
    """`unschedulable_grace_seconds`: the operator's, unless the job sets
    spec.resources.unschedulableGraceSeconds; `scale_ups`: the cluster autoscaler's latest word on
    each unschedulable pod, by pod name (derivation/scheduling.py)."""
    meta = cr.get("metadata") or {}
    spec = cr.get("spec") or {}
    old = dict(cr.get("status") or {})
    generation = meta.get("generation")
    own_grace = (spec.get("resources") or {}).get("unschedulableGraceSeconds")
    if own_grace is not None:
        unschedulable_grace_seconds = float(own_grace)

    # A terminal phase of this generation is final.
    if old.get("phase") in TERMINAL_PHASES and old.get("observedGeneration") == generation:
        return Derived(status=old)

    pods_ = Pods.of(pods)
    progress = pods_.progress()
    result = pods_.result(job)
    checks = Pods.of(preflight_pods)
    checked = checks.result(preflight) if preflight is not None else None
    status: dict[str, Any] = {"observedGeneration": generation}
    stop: str | None = None
    stop_preflight: str | None = None
    next_attempt: int | None = None
    if verdict.plan is not None:
        status["plan"] = dict(verdict.plan)

    # 1. validation and the plan; 2. the dependency (PreferenceAlignment.spec.fineTuneJobRef)
    conds, state = _from_verdict(verdict)
    if state.phase != Phase.FAILED:
        state = _from_dependency(dependency or DependencyState(), job, conds, state)

    # 3. the data preflight, until the trainer's Job exists
    if job is None and preflight is not None and state.phase not in (Phase.FAILED, Phase.WAITING):
        state, stop_preflight = preflight_state(
            preflight, checks, checked, suspend_wanted=bool(spec.get("suspend")), now=now,
            unschedulable_grace=unschedulable_grace_seconds, image_pull_grace=image_pull_grace_seconds,
            scale_ups=scale_ups)
        # Unknown until the data is known (outcome_status sets True or False then)
        conds.append(ConditionUpdate(ConditionType.DATA_VALID, "Unknown", state.reason, state.message))

    # 4. the trainer's Job and its pods
    if job is not None and state.phase not in (Phase.FAILED,):
        state, stop = job_state(job, pods_, result, progress, verdict, bool(spec.get("suspend")),
                                bool(spec.get("queueName")), now, unschedulable_grace_seconds,
                                image_pull_grace_seconds, workload, scale_ups=scale_ups)
        again = retry(job, pods_, state, verdict, suspend_wanted=bool(spec.get("suspend")))
        if again is not None:  # out of memory, and spec.training.oomRetry allows a smaller attempt
            state, next_attempt = again.state, again.next_attempt
            stop = stop or (Reason.RETRYING_SMALLER if again.stop_job else None)
        status["trainingAttempts"] = training_attempts(verdict, job, state)
        js = job.get("status") or {}
        status["jobName"] = (job.get("metadata") or {}).get("name")
        # a deleted or preempted pod is counted nowhere in the Job: the trainer counts its starts
        status["attempts"] = max(len(pods_.ordered), int(js.get("failed") or 0) + int(js.get("succeeded") or 0)
                                 + int(js.get("active") or 0), (progress.attempt if progress else None) or 0)
        if js.get("startTime"):
            status["startTime"] = js["startTime"]
    elif job_name:
        status["jobName"] = job_name

    # 5. progress, data, metrics, gates, artifact and the remaining conditions
    output = spec.get("output") or {}
    status |= outcome_status(
        state, result=result, progress=progress, gates=(spec.get("evaluation") or {}).get("gates"),
        output_uri=output.get("uri"), conditions=conds,
        old_conditions=old.get("conditions") or [], generation=generation, now=now,
        data=checked.data if checked is not None else None)
    status["modelCache"] = model_cache_status(checked, checks)
    if status["phase"] in TERMINAL_PHASES:
        status["completionTime"] = (
            ((job or {}).get("status") or {}).get("completionTime") if status["phase"] != Phase.FAILED else None
        ) or failure_time(job or preflight) or format_time(now)
    return Derived(status={k: v for k, v in status.items() if v is not None}, stop_job=stop, result=result,
                   stop_preflight=stop_preflight, preflight_result=checked, next_attempt=next_attempt)


def model_cache_status(checked: TrainerResult | None, checks: Pods | None = None) -> dict[str, Any] | None:
    """status.modelCache: what the data preflight pod reported of the model cache (details.modelCache);
    before its report, while it downloads the base model, the download's progress from its pod's
    progress annotation (uri, used, progress: bytesDone, bytesTotal, etaSeconds)."""
    if checked is None:  # only while its pod runs: a pod that ended without a report left a stale download
        download = downloading(checks) if checks is not None and checks.phase("Running") else None
        return download.model_dump(by_alias=True, exclude_none=True, mode="json") if download is not None else None
    raw = (checked.details or {}).get("modelCache")
    if not isinstance(raw, dict):
        return None
    try:
        return ModelCacheReport.model_validate(raw).model_dump(by_alias=True, exclude_none=True, mode="json")
    except ValueError:
        return None


def _from_verdict(verdict: Verdict) -> tuple[list[ConditionUpdate], State]:
    if verdict.problems:
        msg = "; ".join(verdict.problems)
        return ([ConditionUpdate(ConditionType.VALID, "False", Reason.INVALID_SPEC, msg)],
                State(Phase.FAILED, Reason.INVALID_SPEC, msg))
    conds = [ConditionUpdate(ConditionType.VALID, "True", Reason.VALIDATED, "the spec passed validation")]
    if verdict.fits is False:
        msg = verdict.plan_message or "the memory plan does not fit spec.resources.gpuMemory"
        conds.append(ConditionUpdate(ConditionType.RESOURCES_FIT, "False", Reason.DOES_NOT_FIT, msg))
        return conds, State(Phase.FAILED, Reason.DOES_NOT_FIT, msg)
    if verdict.fits is True:
        conds.append(ConditionUpdate(ConditionType.RESOURCES_FIT, "True", Reason.FITS, verdict.plan_message or "fits"))
    else:
        conds.append(ConditionUpdate(ConditionType.RESOURCES_FIT, "Unknown", Reason.CANNOT_PLAN,
                                     verdict.plan_message or "no memory plan"))
    return conds, State(Phase.VALIDATING, Reason.VALIDATED, "validated; creating the data preflight Job")


def _from_dependency(dep: DependencyState, job: Mapping[str, Any] | None, conds: list[ConditionUpdate],
                     state: State) -> State:
    """Adds DependencyReady to `conds`; without a Job yet, a dependency not ready decides the phase."""
    if dep.state == "ready":
        conds.append(ConditionUpdate(ConditionType.DEPENDENCY_READY, "True", Reason.DEPENDENCY_SUCCEEDED, dep.message))
    elif dep.state == "failed":
        conds.append(ConditionUpdate(ConditionType.DEPENDENCY_READY, "False", Reason.DEPENDENCY_FAILED, dep.message))
        if job is None:
            return State(Phase.FAILED, Reason.DEPENDENCY_FAILED, dep.message)
    elif dep.state == "waiting":
        conds.append(ConditionUpdate(ConditionType.DEPENDENCY_READY, "False", Reason.WAITING_FOR_DEPENDENCY,
                                     dep.message))
        if job is None:
            return State(Phase.WAITING, Reason.WAITING_FOR_DEPENDENCY, dep.message)
    return state
