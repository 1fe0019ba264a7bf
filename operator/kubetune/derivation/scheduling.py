"""An unschedulable pod: wait, or fail the job? Plain functions over the pod's age and what the
cluster autoscaler said about it.

cluster-autoscaler posts Events on a pod it considered: reason `TriggeredScaleUp` ("pod triggered
scale-up: [{gpu-pool 0->1 (max: 4)}]") when it is adding a node for it, `NotTriggerScaleUp` ("pod
didn't trigger scale-up: ...") when no node group could host it. While its latest word is a
scale-up — and for at most SCALE_UP_TIMEOUT after it (the autoscaler's own default
max-node-provision-time is 15 min) — the job keeps waiting past its grace period; otherwise it
fails Unschedulable once the grace period is over. The status message says which it waits for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetune.derivation.timeutil import parse_time

SCALE_UP_TIMEOUT = 900.0
TRIGGERED, NOT_TRIGGERED = "TriggeredScaleUp", "NotTriggerScaleUp"


@dataclass(frozen=True)
class ScaleUp:
    """The cluster autoscaler's latest word on one pod."""

    triggered: bool  # TriggeredScaleUp (True) or NotTriggerScaleUp (False)
    at: datetime
    message: str


def autoscaler_signal(events: Iterable[Mapping[str, Any]]) -> ScaleUp | None:
    """The latest TriggeredScaleUp/NotTriggerScaleUp among a pod's core/v1 Events, or None."""
    latest: ScaleUp | None = None
    for ev in events:
        reason = ev.get("reason")
        if reason not in (TRIGGERED, NOT_TRIGGERED):
            continue
        at = (parse_time(ev.get("lastTimestamp")) or parse_time(ev.get("eventTime"))
              or parse_time(ev.get("firstTimestamp")) or parse_time((ev.get("metadata") or {}).get("creationTimestamp")))
        if at is None:
            continue
        if latest is None or at >= latest.at:
            latest = ScaleUp(reason == TRIGGERED, at, str(ev.get("message") or "")[:300])
    return latest


def unschedulable_outcome(elapsed: float, grace: float, signal: ScaleUp | None, now: datetime,
                          scale_up_timeout: float = SCALE_UP_TIMEOUT) -> tuple[bool, str]:
    """(fail now?, what the job waits for or why it fails — a stable phrase, no counters)."""
    scaling = signal is not None and signal.triggered and (now - signal.at).total_seconds() < scale_up_timeout
    if scaling:
        assert signal is not None
        return False, f"waiting for the cluster autoscaler to add a node ({signal.message})"
    if signal is not None and not signal.triggered:
        why = f"the cluster autoscaler will not add a node ({signal.message})"
    elif signal is not None:
        why = f"the cluster autoscaler's scale-up did not bring a node within {int(scale_up_timeout)}s"
    else:
        why = ""
    if elapsed >= grace:
        return True, f"unschedulable for over {int(grace)}s" + (f"; {why}" if why else "")
    return False, why or f"waiting up to {int(grace)}s for a node"
