"""Reading the trainer's Pods: container states, pod conditions, and the trainer's two reports on
them — the progress annotation and the result in the termination message (docs/trainer-channel.md).
Pure: plain dicts in."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune.api.trainer_contract import ProgressReport, TrainerResult

ANNOTATION_PROGRESS = "kubetune.io/progress"
ANNOTATION_RESULT = "kubetune.io/result"
CONTAINER = "trainer"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def container_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER:
            return cs  # type: ignore[no-any-return]
    return statuses[0] if statuses else None


def terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = container_status(pod)
    if not cs:
        return None
    state = cs.get("state") or {}
    term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return term


def waiting(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = container_status(pod)
    return ((cs or {}).get("state") or {}).get("waiting")


def pod_condition(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c  # type: ignore[no-any-return]
    return None


def disrupted(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    c = pod_condition(pod, "DisruptionTarget")
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


def progress_summary(step: int | None, total: int | None) -> str | None:
    if step is None:
        return None
    if total:
        return f"{min(100, int(100 * step / total))}% ({step}/{total})"
    return f"step {step}"


def completion_index(pod: Mapping[str, Any]) -> str | None:
    """The pod's index in an Indexed Job (multi-node: its node rank), None otherwise."""
    meta = pod.get("metadata") or {}
    return (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)


def created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


@dataclass
class Pods:
    """A Job's pods, oldest first."""

    ordered: list[Mapping[str, Any]]

    @classmethod
    def of(cls, pods: Iterable[Mapping[str, Any]]) -> Pods:
        return cls(sorted(pods, key=created))

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
        succeeded = sorted(self.phase("Succeeded"), key=lambda p: completion_index(p) == "0")
        for group in (succeeded, self.phase("Failed")):
            for pod in reversed(group):
                term = terminated(pod)
                r = parse_result((term or {}).get("message"))
                if r is not None:
                    return r
        ann = (((job or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_RESULT)
        return parse_result(ann)
