"""A failed trainer pod or Job, in words: the reason (a documented constant) and a message that says
what happened and, for an out-of-memory kill, what the plan predicted and what to try."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.enums import Reason
from kubetune.api.exit_codes import PERMANENT_EXIT_CODES, reason_for
from kubetune.derivation.inputs import Verdict
from kubetune.derivation.pods import Pods, disrupted, parse_result, terminated


def pod_failure(pod: Mapping[str, Any], verdict: Verdict) -> tuple[str, str]:
    """(reason, message) for a Failed pod."""
    term = terminated(pod) or {}
    code = term.get("exitCode")
    result = parse_result(term.get("message"))
    name = (pod.get("metadata") or {}).get("name", "?")
    if term.get("reason") == "OOMKilled":
        msg = f"the trainer was OOM-killed (exit {code}) in pod {name}"
        return Reason.OUT_OF_MEMORY, msg + oom_advice(verdict)
    disruption = disrupted(pod)
    if disruption:
        return Reason.PREEMPTED, f"pod {name} was disrupted ({disruption.get('reason')}): {disruption.get('message', '')}"
    if result is not None and result.outcome == "failed":
        reason = result.reason or (reason_for(int(code)) if code is not None else Reason.TRAINER_ERROR)
        msg = result.message or f"the trainer failed with exit code {code}"
        if reason == Reason.OUT_OF_MEMORY:
            msg += oom_advice(verdict)
        return reason, msg
    if code is not None:
        text = (term.get("message") or "").strip()
        msg = f"the trainer exited with code {code} in pod {name}" + (f": {text}" if text else "")
        reason = reason_for(int(code))
        return reason, msg + (oom_advice(verdict) if reason == Reason.OUT_OF_MEMORY else "")
    status = pod.get("status") or {}
    return Reason.TRAINER_ERROR, f"pod {name} failed: {status.get('reason') or ''} {status.get('message') or ''}".strip()


def oom_advice(verdict: Verdict) -> str:
    parts = []
    if verdict.plan_message:
        parts.append(f"; the plan: {verdict.plan_message}")
    best = verdict.best_suggestion
    if best:
        parts.append(f"; try: {best}")
    elif verdict.plan and verdict.plan.get("fits"):
        parts.append("; try a smaller training.batchSize or training.maxSeqLength, or more resources.memory "
                     "for the host process")
    elif verdict.fits is None:  # no plan to go by (e.g. a pvc:// model without spec.baseModel.architecture)
        parts.append("; try a smaller training.batchSize or training.maxSeqLength, more resources.memory (a CPU "
                     "job) or a GPU with more memory, and set spec.baseModel.architecture for a memory plan")
    return "".join(parts)


def job_failure(cond: Mapping[str, Any], pods: Pods, verdict: Verdict) -> tuple[str, str]:
    """(reason, message) for a Job whose Failed (or FailureTarget) condition is `cond`."""
    jreason = cond.get("reason") or ""
    jmsg = cond.get("message") or ""
    if jreason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, f"the training Job ran past spec.activeDeadlineSeconds: {jmsg}".strip()
    failed = pods.phase("Failed")
    if jreason == "PodFailurePolicy":
        for pod in reversed(failed):
            code = (terminated(pod) or {}).get("exitCode")
            if code in PERMANENT_EXIT_CODES:
                return pod_failure(pod, verdict)
    # BackoffLimitExceeded (or anything else): the last failed attempt says why
    for pod in reversed(failed):
        if disrupted(pod):
            continue
        reason, msg = pod_failure(pod, verdict)
        if jreason == "BackoffLimitExceeded":
            msg += " (retries exhausted: spec.backoffLimit)"
        return reason, msg
    if jreason == "BackoffLimitExceeded":
        return Reason.BACKOFF_LIMIT_EXCEEDED, jmsg or "retries exhausted (spec.backoffLimit)"
    return Reason.TRAINER_ERROR, f"the training Job failed: {jreason}: {jmsg}".strip()
