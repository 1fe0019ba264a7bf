"""`derive_status`: the whole status of a FineTuneJob / PreferenceAlignment from the world.

Inputs are what the operator observed: the CR (spec, generation; the old conditions are read only
to keep their lastTransitionTime when nothing flipped), the verdict of validation and the memory
plan, the dependency (PreferenceAlignment), the batch/v1 Job, its Pods (phases, conditions,
container states, termination messages) and the trainer's progress annotation. Nothing is
incremented from the old status.

Terminal phases are facts: once Succeeded, GateFailed or Failed for the current generation, the
status stays as it is (the world may forget — pods are garbage-collected, a Job deleted).

Phases: Pending → Validating → (Waiting) → Queued → Running → Evaluating → Succeeded | GateFailed |
Failed; Suspended.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.api.enums import TERMINAL_PHASES, ConditionType, Phase, Reason
from kubetune.api.exit_codes import PERMANENT_EXIT_CODES, reason_for
from kubetune.api.trainer_contract import ProgressReport, TrainerResult
from kubetune.gates import decide
from kubetune.render.sources import to_uri
from kubetune.status.events import truncate
from kubetune.status.timeutil import format_time, parse_time

CONDITION_MESSAGE_LIMIT = 4096
ANNOTATION_PROGRESS = "kubetune.io/progress"
ANNOTATION_RESULT = "kubetune.io/result"
CONTAINER = "trainer"
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
PERMANENT_IMAGE_REASONS = ("InvalidImageName", "ErrImageNeverPull")
EVALUATING_STAGES = ("evaluating", "exporting")


@dataclass(frozen=True)
class Verdict:
    """Validation and memory-plan result for the current generation."""

    problems: Sequence[str] = ()  # errors from kubetune.api.validate (empty: valid)
    plan: Mapping[str, Any] | None = None  # Plan.to_dict()
    fits: bool | None = None  # None: could not plan (unknown architecture)
    plan_message: str | None = None  # Plan.summary(), or why it cannot plan

    @property
    def best_suggestion(self) -> str | None:
        for s in (self.plan or {}).get("suggestions", []):
            if s.get("fits"):
                return str(s.get("description"))
        return None


@dataclass(frozen=True)
class DependencyState:
    """A PreferenceAlignment's referenced FineTuneJob."""

    state: Literal["none", "waiting", "ready", "failed"] = "none"
    message: str = ""


@dataclass
class Derived:
    status: dict[str, Any]
    stop_job: str | None = None  # a reason: the Job must be stopped (suspended) — a terminal failure
    result: TrainerResult | None = None  # the trainer's final report, when seen
    notes: list[str] = field(default_factory=list)


@dataclass
class _State:
    phase: Phase
    reason: str
    message: str


# ---------------------------------------------------------------------------------------------------
# Reading pods


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER:
            return cs  # type: ignore[no-any-return]
    return statuses[0] if statuses else None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = _container_status(pod)
    if not cs:
        return None
    state = cs.get("state") or {}
    term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return term


def _waiting(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = _container_status(pod)
    return ((cs or {}).get("state") or {}).get("waiting")


def _pod_condition(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c  # type: ignore[no-any-return]
    return None


def _disrupted(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    c = _pod_condition(pod, "DisruptionTarget")
    return c if c and c.get("status") == "True" else None


def parse_result(text: str | None) -> TrainerResult | None:
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        return TrainerResult.parse(text)
    except (ValidationError, ValueError):
        return None


def parse_progress(text: str | None) -> ProgressReport | None:
    if not text:
        return None
    try:
        return ProgressReport.model_validate(json.loads(text))
    except (ValidationError, ValueError, TypeError):
        return None


def _completion_index(pod: Mapping[str, Any]) -> str | None:
    """The pod's index in an Indexed Job (multi-node: its node rank), None otherwise."""
    meta = pod.get("metadata") or {}
    key = "batch.kubernetes.io/job-completion-index"
    return (meta.get("annotations") or {}).get(key) or (meta.get("labels") or {}).get(key)


def _created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def progress_summary(step: int | None, total: int | None) -> str | None:
    if step is None:
        return None
    if total:
        return f"{min(100, int(100 * step / total))}% ({step}/{total})"
    return f"step {step}"


@dataclass
class _Pods:
    ordered: list[Mapping[str, Any]]

    @property
    def newest(self) -> Mapping[str, Any] | None:
        return self.ordered[-1] if self.ordered else None

    def phase(self, phase: str) -> list[Mapping[str, Any]]:
        return [p for p in self.ordered if (p.get("status") or {}).get("phase") == phase]

    def progress(self) -> ProgressReport | None:
        for pod in reversed(self.ordered):
            p = parse_progress(((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PROGRESS))
            if p is not None:
                return p
        return None

    def result(self, job: Mapping[str, Any] | None) -> TrainerResult | None:
        """The final report: a Succeeded pod's termination message first — of a multi-node Job,
        completion index 0 (global rank 0, the one that evaluates and exports; the other ranks
        report only their own end) — then the newest failed one (the rank that failed names the
        reason), then the copy the operator keeps on the Job."""
        succeeded = sorted(self.phase("Succeeded"), key=lambda p: _completion_index(p) == "0")
        for group in (succeeded, self.phase("Failed")):
            for pod in reversed(group):
                term = _terminated(pod)
                r = parse_result((term or {}).get("message"))
                if r is not None:
                    return r
        ann = (((job or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_RESULT)
        return parse_result(ann)


# ---------------------------------------------------------------------------------------------------
# Conditions


def _conditions(old: Sequence[Mapping[str, Any]], new: list[tuple[str, str, str, str]], now: str,
                generation: int | None) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in old}
    out = []
    for ctype, status, reason, message in new:
        prev = before.get(ctype)
        flipped = prev is None or prev.get("status") != status
        ltt = now if flipped or not (prev or {}).get("lastTransitionTime") else prev["lastTransitionTime"]  # type: ignore[index]
        cond: dict[str, Any] = {"type": ctype, "status": status, "reason": reason,
                                "message": truncate(message, CONDITION_MESSAGE_LIMIT),
                                "lastTransitionTime": ltt}
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


# ---------------------------------------------------------------------------------------------------
# The failure of a pod, in words


def _pod_failure(pod: Mapping[str, Any], verdict: Verdict) -> tuple[str, str]:
    """(reason, message) for a Failed pod."""
    term = _terminated(pod) or {}
    code = term.get("exitCode")
    result = parse_result(term.get("message"))
    name = (pod.get("metadata") or {}).get("name", "?")
    if term.get("reason") == "OOMKilled":
        msg = f"the trainer was OOM-killed (exit {code}) in pod {name}"
        return Reason.OUT_OF_MEMORY, msg + _oom_advice(verdict)
    disrupted = _disrupted(pod)
    if disrupted:
        return Reason.PREEMPTED, f"pod {name} was disrupted ({disrupted.get('reason')}): {disrupted.get('message', '')}"
    if result is not None and result.outcome == "failed":
        reason = result.reason or (reason_for(int(code)) if code is not None else Reason.TRAINER_ERROR)
        msg = result.message or f"the trainer failed with exit code {code}"
        if reason == Reason.OUT_OF_MEMORY:
            msg += _oom_advice(verdict)
        return reason, msg
    if code is not None:
        text = (term.get("message") or "").strip()
        msg = f"the trainer exited with code {code} in pod {name}" + (f": {text}" if text else "")
        reason = reason_for(int(code))
        return reason, msg + (_oom_advice(verdict) if reason == Reason.OUT_OF_MEMORY else "")
    status = pod.get("status") or {}
    return Reason.TRAINER_ERROR, f"pod {name} failed: {status.get('reason') or ''} {status.get('message') or ''}".strip()


def _oom_advice(verdict: Verdict) -> str:
    parts = []
    if verdict.plan_message:
        parts.append(f"; the plan: {verdict.plan_message}")
    best = verdict.best_suggestion
    if best:
        parts.append(f"; try: {best}")
    elif verdict.plan and verdict.plan.get("fits"):
        parts.append("; try a smaller training.batchSize or training.maxSeqLength, or more resources.memory "
                     "for the host process")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------


def derive_status(
    cr: Mapping[str, Any],
    *,
    verdict: Verdict,
    dependency: DependencyState | None = None,
    job: Mapping[str, Any] | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
    now: datetime,
    unschedulable_grace_seconds: float = 120.0,
    image_pull_grace_seconds: float = 120.0,
    job_name: str | None = None,
) -> Derived:
    meta = cr.get("metadata") or {}
    spec = cr.get("spec") or {}
    old = dict(cr.get("status") or {})
    generation = meta.get("generation")
    now_s = format_time(now)

    # A terminal phase of this generation is final.
    if old.get("phase") in TERMINAL_PHASES and old.get("observedGeneration") == generation:
        return Derived(status=old)

    pods_ = _Pods(sorted(pods, key=_created))
    progress = pods_.progress()
    result = pods_.result(job)
    status: dict[str, Any] = {"observedGeneration": generation}
    conds: list[tuple[str, str, str, str]] = []
    stop: str | None = None
    dep = dependency or DependencyState()
    suspend_wanted = bool(spec.get("suspend"))

    if verdict.plan is not None:
        status["plan"] = dict(verdict.plan)

    # 1. validation and the plan
    if verdict.problems:
        msg = "; ".join(verdict.problems)
        conds.append((ConditionType.VALID, "False", Reason.INVALID_SPEC, msg))
        state = _State(Phase.FAILED, Reason.INVALID_SPEC, msg)
    else:
        conds.append((ConditionType.VALID, "True", Reason.VALIDATED, "the spec passed validation"))
        if verdict.fits is False:
            msg = verdict.plan_message or "the memory plan does not fit spec.resources.gpuMemory"
            conds.append((ConditionType.RESOURCES_FIT, "False", Reason.DOES_NOT_FIT, msg))
            state = _State(Phase.FAILED, Reason.DOES_NOT_FIT, msg)
        else:
            if verdict.fits is True:
                conds.append((ConditionType.RESOURCES_FIT, "True", Reason.FITS, verdict.plan_message or "fits"))
            else:
                conds.append((ConditionType.RESOURCES_FIT, "Unknown", Reason.CANNOT_PLAN,
                              verdict.plan_message or "no memory plan"))
            state = _State(Phase.VALIDATING, Reason.VALIDATED, "validated; creating the training Job")

    # 2. the dependency (PreferenceAlignment.spec.fineTuneJobRef)
    if dep.state != "none" and state.phase != Phase.FAILED:
        if dep.state == "ready":
            conds.append((ConditionType.DEPENDENCY_READY, "True", Reason.DEPENDENCY_SUCCEEDED, dep.message))
        elif dep.state == "failed":
            conds.append((ConditionType.DEPENDENCY_READY, "False", Reason.DEPENDENCY_FAILED, dep.message))
            if job is None:
                state = _State(Phase.FAILED, Reason.DEPENDENCY_FAILED, dep.message)
        else:
            conds.append((ConditionType.DEPENDENCY_READY, "False", Reason.WAITING_FOR_DEPENDENCY, dep.message))
            if job is None:
                state = _State(Phase.WAITING, Reason.WAITING_FOR_DEPENDENCY, dep.message)

    # 3. the Job and its pods
    if job is not None and state.phase not in (Phase.FAILED,):
        state, stop = _from_job(job, pods_, result, progress, verdict, suspend_wanted, bool(spec.get("queueName")),
                                now, unschedulable_grace_seconds, image_pull_grace_seconds)
        js = job.get("status") or {}
        status["jobName"] = (job.get("metadata") or {}).get("name")
        status["attempts"] = max(len(pods_.ordered), int(js.get("failed") or 0) + int(js.get("succeeded") or 0)
                                 + int(js.get("active") or 0))
        if js.get("startTime"):
            status["startTime"] = js["startTime"]
    elif job_name:
        status["jobName"] = job_name

    # 4. progress, data, metrics, gates
    if progress is not None or (result is not None and result.progress is not None):
        p = (result.progress if result is not None and result.progress is not None else progress)
        assert p is not None
        pd = p.model_dump(by_alias=True, exclude_none=True, mode="json")
        pd.pop("data", None)
        if progress is not None and result is not None and result.progress is not None:
            pd.setdefault("updatedAt", progress.updated_at)
        pd["summary"] = progress_summary(p.step, p.total_steps) or p.stage or ""
        if state.phase == Phase.SUCCEEDED or state.phase == Phase.GATE_FAILED:
            pd["stage"] = "done"
        status["progress"] = {k: v for k, v in pd.items() if v is not None}
    data = (result.data if result is not None and result.data is not None else (progress.data if progress else None))
    if data is not None:
        status["data"] = data.model_dump(by_alias=True, exclude_none=True, mode="json")

    gates_spec = (spec.get("evaluation") or {}).get("gates")
    complete = state.phase in (Phase.SUCCEEDED, Phase.GATE_FAILED)
    if result is not None and result.metrics:
        status["metrics"] = dict(result.metrics)
    if complete:
        decision = decide(result.metrics if result is not None else {}, gates_spec)
        state = _State(decision.phase, decision.reason, decision.message)
        status["gates"] = [g.model_dump(by_alias=True, exclude_none=True, mode="json") for g in decision.gate_results()]
        if result is not None and result.artifact:
            promoted = decision.passed and (result.details or {}).get("promoted", True) is not False
            artifact: dict[str, Any] = {"uri": to_uri(result.artifact), "promoted": bool(promoted)}
            promoted_uri = (spec.get("output") or {}).get("promotedUri")
            if promoted and promoted_uri:
                artifact["promotedUri"] = promoted_uri
            status["artifact"] = artifact
        for c in decision.conditions:
            conds.append((c.type, c.status, c.reason, c.message))
        conds.append((ConditionType.COMPLETE, "True", Reason.SUCCEEDED, "training and evaluation finished"))
    else:
        if state.phase == Phase.FAILED:
            conds.append((ConditionType.COMPLETE, "False", state.reason, state.message))
        if gates_spec:
            conds.append((ConditionType.GATES_PASSED, "Unknown", Reason.IN_PROGRESS, "not evaluated yet"))
        ready_status = "False" if state.phase == Phase.FAILED else "Unknown"
        # Ready=False on failure; Unknown while the outcome is open (kubectl wait keeps waiting).
        conds.append((ConditionType.READY, ready_status, state.reason, state.message))

    # DataValid: from the trainer's preflight
    if state.reason in (Reason.DATA_INVALID, Reason.INSUFFICIENT_DATA):
        conds.append((ConditionType.DATA_VALID, "False", state.reason, state.message))
    elif data is not None or (progress is not None and progress.stage not in (None, "preflight", "loading")):
        conds.append((ConditionType.DATA_VALID, "True", Reason.VALIDATED, "the data preflight passed"))

    training = state.phase in (Phase.RUNNING,)
    conds.append((ConditionType.TRAINING, "True" if training else "False",
                  Reason.RUNNING if training else state.reason,
                  "the trainer is training" if training else state.message))
    suspended = state.phase == Phase.SUSPENDED
    conds.append((ConditionType.SUSPENDED, "True" if suspended else "False",
                  Reason.SUSPENDED if suspended else "NotSuspended",
                  "spec.suspend is true" if suspended else "not suspended"))

    status["phase"] = str(state.phase)
    status["reason"] = state.reason
    status["message"] = truncate(state.message, CONDITION_MESSAGE_LIMIT)
    status["conditions"] = _conditions(old.get("conditions") or [], _dedupe(conds), now_s, generation)
    if state.phase in TERMINAL_PHASES:
        status["completionTime"] = (
            ((job or {}).get("status") or {}).get("completionTime") if state.phase != Phase.FAILED else None
        ) or _failure_time(job) or now_s
    return Derived(status={k: v for k, v in status.items() if v is not None}, stop_job=stop, result=result)


def _dedupe(conds: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """Last write wins per type; order of first appearance kept."""
    seen: dict[str, tuple[str, str, str, str]] = {}
    for c in conds:
        seen[c[0]] = c
    return list(seen.values())


def _failure_time(job: Mapping[str, Any] | None) -> str | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return c.get("lastTransitionTime")  # type: ignore[no-any-return]
    return None


def _job_condition(job: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c  # type: ignore[no-any-return]
    return None


def _from_job(job: Mapping[str, Any], pods: _Pods, result: TrainerResult | None, progress: ProgressReport | None,
              verdict: Verdict, suspend_wanted: bool, queued: bool, now: datetime,
              unschedulable_grace: float, image_pull_grace: float) -> tuple[_State, str | None]:
    # Finished
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        if result is not None and result.outcome == "failed":
            return _State(Phase.FAILED, result.reason or Reason.TRAINER_ERROR, result.message or "the trainer failed"), None
        return _State(Phase.SUCCEEDED, Reason.SUCCEEDED, "training finished"), None
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed:
        return _State(Phase.FAILED, *_job_failure(failed, pods, verdict)), None

    # Suspended (by the user, or waiting for Kueue's admission)
    spec_suspended = bool((job.get("spec") or {}).get("suspend"))
    if suspend_wanted:
        return _State(Phase.SUSPENDED, Reason.SUSPENDED,
                      "suspended (spec.suspend); resuming continues from the last checkpoint"), None
    if spec_suspended:
        why = "waiting for Kueue to admit the Job" if queued else "the Job is suspended"
        return _State(Phase.QUEUED, Reason.PENDING_ADMISSION, why), None

    # Active
    previous = ""
    for pod in pods.phase("Failed"):
        reason, msg = _pod_failure(pod, verdict)
        previous = f" (previous attempt: {reason}: {msg})"
    running = pods.phase("Running")
    if running:
        stage = progress.stage if progress is not None else None
        if stage in EVALUATING_STAGES:
            return _State(Phase.EVALUATING, Reason.EVALUATING, "evaluating the trained model"), None
        step = progress_summary(progress.step, progress.total_steps) if progress is not None else None
        msg = f"training: {step}" if step else f"the trainer is running ({stage or 'starting'})"
        return _State(Phase.RUNNING, Reason.RUNNING, msg + previous), None
    pending = pods.phase("Pending")
    for pod in pending:
        sched = _pod_condition(pod, "PodScheduled")
        if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
            since = parse_time(sched.get("lastTransitionTime")) or parse_time(_created(pod)) or now
            msg = f"no node can run the trainer pod: {sched.get('message', '')}".strip()
            if (now - since).total_seconds() >= unschedulable_grace:
                return _State(Phase.FAILED, Reason.UNSCHEDULABLE,
                              msg + f" (unschedulable for over {int(unschedulable_grace)}s)"), Reason.UNSCHEDULABLE
            return _State(Phase.QUEUED, Reason.UNSCHEDULABLE, msg), None
        waiting = _waiting(pod)
        if waiting and waiting.get("reason") in IMAGE_PULL_REASONS:
            since = parse_time((pod.get("status") or {}).get("startTime")) or parse_time(_created(pod)) or now
            msg = f"cannot pull the trainer image ({waiting.get('reason')}): {waiting.get('message', '')}".strip()
            if (waiting.get("reason") in PERMANENT_IMAGE_REASONS
                    or (now - since).total_seconds() >= image_pull_grace):
                return _State(Phase.FAILED, Reason.IMAGE_UNAVAILABLE, msg), Reason.IMAGE_UNAVAILABLE
            return _State(Phase.QUEUED, Reason.IMAGE_UNAVAILABLE, msg), None
    if pending:
        return _State(Phase.QUEUED, Reason.JOB_CREATED, "the trainer pod is starting" + previous), None
    return _State(Phase.QUEUED, Reason.JOB_CREATED, "the training Job was created" + previous), None


def _job_failure(cond: Mapping[str, Any], pods: _Pods, verdict: Verdict) -> tuple[str, str]:
    jreason = cond.get("reason") or ""
    jmsg = cond.get("message") or ""
    if jreason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, f"the training Job ran past spec.activeDeadlineSeconds: {jmsg}".strip()
    failed = pods.phase("Failed")
    if jreason == "PodFailurePolicy":
        for pod in reversed(failed):
            code = (_terminated(pod) or {}).get("exitCode")
            if code in PERMANENT_EXIT_CODES:
                return _pod_failure(pod, verdict)
    # BackoffLimitExceeded (or anything else): the last failed attempt says why
    for pod in reversed(failed):
        if _disrupted(pod):
            continue
        reason, msg = _pod_failure(pod, verdict)
        if jreason == "BackoffLimitExceeded":
            msg += " (retries exhausted: spec.backoffLimit)"
        return reason, msg
    if jreason == "BackoffLimitExceeded":
        return Reason.BACKOFF_LIMIT_EXCEEDED, jmsg or "retries exhausted (spec.backoffLimit)"
    return Reason.TRAINER_ERROR, f"the training Job failed: {jreason}: {jmsg}".strip()
