"""Events announcing a status change: the diff between the old and the new phase/reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api.enums import Phase

EVENT_MESSAGE_LIMIT = 1024  # the API server refuses longer Event messages
FAILURE_PHASES = {Phase.FAILED, Phase.GATE_FAILED}


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def events_for(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[EventSpec]:
    """One Event per phase change (or reason change within a phase): Warning for failures."""
    old = old or {}
    phase, reason = new.get("phase"), new.get("reason")
    if not phase or (phase == old.get("phase") and reason == old.get("reason")):
        return []
    warning = phase in FAILURE_PHASES or reason in ("Unschedulable", "ImageUnavailable", "OutOfMemory")
    label = reason or phase
    text = f"{old.get('phase') or 'New'} → {phase}"
    if new.get("message"):
        text += f": {new['message']}"
    return [EventSpec("Warning" if warning else "Normal", str(label), truncate(text, EVENT_MESSAGE_LIMIT))]
