"""The data preflight's Job and pod ⇒ the phase while the data is checked, before any GPU is
requested: Validating (CheckingData) while it runs, Failed with the data's reason (DataInvalid,
InsufficientData: its result in the termination message) or with what stopped its pod
(Unschedulable, ImageUnavailable, OutOfMemory, DeadlineExceeded, ...), or passed — the reconciler
then creates the trainer's Job, whose state takes over."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubetune.api.enums import Phase, Reason
from kubetune.api.exit_codes import reason_for
from kubetune.api.model_cache import ModelCacheReport
from kubetune.api.trainer_contract import TrainerResult
from kubetune.derivation.job import job_condition, pending_state
from kubetune.derivation.outcome import State
from kubetune.derivation.pods import Pods, disrupted, parse_result, terminated
from kubetune.derivation.scheduling import ScaleUp

WHAT = "data preflight"
RESOURCES_HINT = "trainer.preflight.resources in the chart (KUBETUNE_PREFLIGHT_RESOURCES)"


def passed(job: Mapping[str, Any], pods: Pods) -> bool:
    """Whether the data preflight Job finished with the data ok: the trainer's Job may be created."""
    done = job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet")
    result = pods.result(job)
    return bool(done) and not (result is not None and result.outcome == "failed")


def preflight_state(job: Mapping[str, Any], pods: Pods, result: TrainerResult | None, *, suspend_wanted: bool,
                    now: datetime, unschedulable_grace: float, image_pull_grace: float,
                    scale_ups: Mapping[str, ScaleUp] | None = None) -> tuple[State, str | None]:
    """(the state, the reason to stop the preflight Job or None). Passed: Validating with reason
    Validated — the trainer's Job is next."""
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        if result is not None and result.outcome == "failed":
            return State(Phase.FAILED, result.reason or Reason.DATA_INVALID, result.message or "the data is not ok"), None
        msg = f"the data passed the preflight ({result.message})" if result is not None and result.message else \
            "the data passed the preflight"
        return State(Phase.VALIDATING, Reason.VALIDATED, msg + "; creating the training Job"), None
    failed = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    if failed:
        return State(Phase.FAILED, *_failure(failed, pods, result)), None
    if suspend_wanted:
        return State(Phase.SUSPENDED, Reason.SUSPENDED, "suspended (spec.suspend) before the data was checked"), None
    running = pods.phase("Running")
    if running:
        name = (running[-1].get("metadata") or {}).get("name", "?")
        download = downloading(pods)
        doing = (f"downloading the base model {download.uri} into the model cache: {download.progress.line()}, "
                 f"in pod {name}") if download is not None and download.progress is not None else \
            f"checking the data in pod {name}"
        return State(Phase.VALIDATING, Reason.CHECKING_DATA,
                     f"{doing} (CPU only: no GPU is requested until the data passes)"), None
    stuck = pending_state(pods, now, unschedulable_grace, image_pull_grace, what=WHAT, phase=Phase.VALIDATING,
                          scale_ups=scale_ups)
    if stuck is not None:
        return stuck
    return State(Phase.VALIDATING, Reason.CHECKING_DATA, "the data preflight Job was created"), None


def downloading(pods: Pods) -> ModelCacheReport | None:
    """The base model's download into the model cache as the preflight pod last reported it (its
    kubetune.io/progress annotation: modelCache with progress), None when it reported none."""
    progress = pods.progress()
    cache = progress.model_cache if progress is not None else None
    return cache if cache is not None and cache.progress is not None else None


def _failure(cond: Mapping[str, Any], pods: Pods, result: TrainerResult | None) -> tuple[str, str]:
    """(reason, message) for a failed preflight Job: its result says why when it ran to the end;
    otherwise its last failed pod or the Job's condition."""
    if result is not None and result.outcome == "failed":
        return result.reason or Reason.DATA_INVALID, result.message or "the data is not ok"
    if cond.get("reason") == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, (
            f"the data preflight ran past spec.activeDeadlineSeconds: {cond.get('message') or ''}".strip())
    for pod in reversed(pods.phase("Failed")):
        if disrupted(pod):
            continue
        term = terminated(pod) or {}
        name = (pod.get("metadata") or {}).get("name", "?")
        code = term.get("exitCode")
        if term.get("reason") == "OOMKilled":
            return Reason.OUT_OF_MEMORY, (f"the data preflight was OOM-killed (exit {code}) in pod {name}; "
                                          f"give it more memory: {RESOURCES_HINT}")
        pod_result = parse_result(term.get("message"))
        if pod_result is not None and pod_result.outcome == "failed":
            return pod_result.reason or reason_for(int(code or 1)), pod_result.message or "the data preflight failed"
        if code is not None:
            text = (term.get("message") or "").strip()
            return reason_for(int(code)), (f"the data preflight exited with code {code} in pod {name}"
                                           + (f": {text}" if text else ""))
    return Reason.TRAINER_ERROR, (f"the data preflight Job failed: {cond.get('reason') or ''}: "
                                  f"{cond.get('message') or ''}").strip()
