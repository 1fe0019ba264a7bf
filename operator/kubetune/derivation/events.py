"""Events announcing a status change: the diff between the old and the new phase/reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api.enums import Phase

EVENT_MESSAGE_LIMIT = 1024  # the API server refuses longer Event messages
EVENT_REASON_LIMIT = 128  # and longer reasons (events.k8s.io); a condition's reason may have 1024
FAILURE_PHASES = {Phase.FAILED, Phase.GATE_FAILED}


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def events_for(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[EventSpec]:
    """One Event per phase change (or reason change within a phase): Warning for failures.
    Conditions alone never make one: they restate the phase (Reconciling, Stalled, Training, ...) — except
    TrackingAvailable turning False (spec.tracking: the run was not logged; the phase does not show it)."""
    old = old or {}
    return _tracking_events(old, new) + _phase_events(old, new)


def _condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def _tracking_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    now = _condition(new, "TrackingAvailable")
    if now.get("status") != "False" or _condition(old, "TrackingAvailable").get("status") == "False":
        return []
    text = "experiment tracking is unavailable; training went on without it: " + str(now.get("message") or "")
    return [EventSpec("Warning", str(now.get("reason") or "TrackingUnavailable")[:EVENT_REASON_LIMIT],
                      truncate(text, EVENT_MESSAGE_LIMIT))]


def _phase_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    phase, reason = new.get("phase"), new.get("reason")
    if not phase or (phase == old.get("phase") and reason == old.get("reason")):
        return []
    warning = phase in FAILURE_PHASES or reason in ("Unschedulable", "ImageUnavailable", "OutOfMemory")
    label = str(reason or phase)[:EVENT_REASON_LIMIT]
    text = f"{old.get('phase') or 'New'} → {phase}"
    if new.get("message"):
        text += f": {new['message']}"
    return [EventSpec("Warning" if warning else "Normal", label, truncate(text, EVENT_MESSAGE_LIMIT))]
