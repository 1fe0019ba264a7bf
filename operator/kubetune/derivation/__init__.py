"""Status from the world: the CR, its plan verdict, its dependency, its two Jobs (the data
preflight's, the trainer's) and their Pods, and their reports ⇒ phase, conditions, progress, metrics, gates (`derive_status`), and the Events
that announce the change (`events_for`). `outcome_status` is the part a trainer's result and the
gates decide, shared with `kubetune run`. Pure: plain dicts in, plain dicts out."""

from kubetune.derivation.derive import Derived, derive_status
from kubetune.derivation.events import EVENT_MESSAGE_LIMIT, EventSpec, events_for
from kubetune.derivation.inputs import DependencyState, Verdict
from kubetune.derivation.outcome import State, dependent_adapter, finished_state, outcome_status
from kubetune.derivation.pods import ANNOTATION_PROGRESS, ANNOTATION_RESULT, Pods, progress_summary
from kubetune.derivation.preflight import passed as preflight_passed
from kubetune.derivation.timeutil import format_time, parse_time

__all__ = [
    "ANNOTATION_PROGRESS",
    "ANNOTATION_RESULT",
    "EVENT_MESSAGE_LIMIT",
    "DependencyState",
    "Derived",
    "EventSpec",
    "Pods",
    "State",
    "Verdict",
    "dependent_adapter",
    "derive_status",
    "events_for",
    "finished_state",
    "format_time",
    "outcome_status",
    "parse_time",
    "preflight_passed",
    "progress_summary",
]
