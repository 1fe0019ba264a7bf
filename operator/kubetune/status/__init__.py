"""Status from the world: the CR, its plan verdict, its dependency, its Job and Pods, and the
trainer's reports ⇒ phase, conditions, progress, metrics, gates (`derive_status`), and the Events
that announce the change (`events_for`). Pure: plain dicts in, plain dicts out."""

from kubetune.status.derive import (
    DependencyState,
    Derived,
    Verdict,
    derive_status,
    progress_summary,
)
from kubetune.status.events import EVENT_MESSAGE_LIMIT, EventSpec, events_for
from kubetune.status.timeutil import format_time, parse_time

__all__ = [
    "EVENT_MESSAGE_LIMIT",
    "DependencyState",
    "Derived",
    "EventSpec",
    "Verdict",
    "derive_status",
    "events_for",
    "format_time",
    "parse_time",
    "progress_summary",
]
