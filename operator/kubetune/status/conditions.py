"""The condition list, as Kubernetes API conventions keep it: keyed by type, `lastTransitionTime`
moves only when a condition's status flips, every condition stamped with the generation it was
computed for, messages cut to the API's limit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.gates import ConditionUpdate
from kubetune.status.events import truncate

CONDITION_MESSAGE_LIMIT = 4096


def dedupe(conds: Sequence[ConditionUpdate]) -> list[ConditionUpdate]:
    """Last write wins per type; order of first appearance kept."""
    seen: dict[str, ConditionUpdate] = {}
    for c in conds:
        seen[c.type] = c
    return list(seen.values())


def stamp(old: Sequence[Mapping[str, Any]], new: Sequence[ConditionUpdate], now: str,
          generation: int | None) -> list[dict[str, Any]]:
    """The conditions in wire form, one per type (the last one set wins); each keeps its old
    lastTransitionTime unless its status flipped."""
    before = {c.get("type"): c for c in old}
    out = []
    for c in dedupe(new):
        prev = before.get(c.type)
        flipped = prev is None or prev.get("status") != c.status
        ltt = now if flipped or not (prev or {}).get("lastTransitionTime") else prev["lastTransitionTime"]  # type: ignore[index]
        cond: dict[str, Any] = {"type": c.type, "status": c.status, "reason": c.reason,
                                "message": truncate(c.message, CONDITION_MESSAGE_LIMIT),
                                "lastTransitionTime": ltt}
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out
