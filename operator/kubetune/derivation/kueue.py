"""A Job that Kueue holds suspended ⇒ why, from its Workload (kueue.x-k8s.io, the object Kueue keeps
per Job): still waiting for quota (Kueue's own reason and message, e.g. "insufficient unused quota
for nvidia.com/gpu in flavor h100"), or preempted and waiting for readmission.

Kueue's Workload conditions read here: `QuotaReserved` (False while pending, with why), `Evicted`
(True with reason `Preempted` when a higher-priority workload took the quota; reset to False when the
workload is admitted again). Pure: plain dicts in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.enums import Reason

WORKLOAD_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # Kueue's label on a Job's Workload


def workload_condition(workload: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (workload.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c  # type: ignore[no-any-return]
    return None


def _said(cond: Mapping[str, Any]) -> str:
    return ": ".join(str(p) for p in (cond.get("reason"), cond.get("message")) if p)


def admission_state(workload: Mapping[str, Any] | None) -> tuple[str, str]:
    """(status reason, message) of a queued Job that Kueue keeps suspended."""
    if workload is None:
        return Reason.PENDING_ADMISSION, "waiting for Kueue to admit the Job"
    reserved = workload_condition(workload, "QuotaReserved")
    waiting = f" ({_said(reserved)})" if reserved and reserved.get("status") == "False" else ""
    evicted = workload_condition(workload, "Evicted")
    if evicted and evicted.get("status") == "True":
        if reserved and reserved.get("message") == evicted.get("message"):
            waiting = ""  # Kueue may repeat the eviction's message on QuotaReserved: say it once
        if evicted.get("reason") == "Preempted":
            return (Reason.PREEMPTED, f"preempted by Kueue: {evicted.get('message') or 'no message'}; "
                    f"waiting to be admitted again, then it resumes from its last checkpoint{waiting}")
        return Reason.PENDING_ADMISSION, f"evicted by Kueue ({_said(evicted)}); waiting to be admitted again{waiting}"
    if reserved and reserved.get("status") == "True":
        return Reason.PENDING_ADMISSION, f"admitted by Kueue ({_said(reserved)}); the Job is being started"
    return Reason.PENDING_ADMISSION, f"waiting for Kueue to admit the Job{waiting}"
