"""The condition list, as Kubernetes API conventions keep it: keyed by type, `lastTransitionTime`
moves only when a condition's status flips, every condition stamped with the generation it was
computed for, reasons in the shape metav1.Condition requires, messages cut to the API's limit —
and the two conditions GitOps tools read (`health_conditions`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.api.enums import ConditionType, Phase
from kubetune.derivation.events import truncate
from kubetune.gates import ConditionUpdate

CONDITION_MESSAGE_LIMIT = 4096
REASON_LIMIT = 1024  # metav1.Condition.reason (kubetune.api.status.REASON_PATTERN is its shape)
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
NO_REASON = "Unspecified"


def condition_reason(text: str | None) -> str:
    """`text` as a condition reason: CamelCase, 1 to REASON_LIMIT characters. Our own reasons
    (kubetune.api.enums.Reason) are that already and stay as they are; anything else — a
    trainer's free text such as "CUDA error: out of memory" — becomes its words in CamelCase
    ("CUDAErrorOutOfMemory"), cut to the limit. Without it one long or odd reason made every
    status patch fail (422) and the job's status froze."""
    if text and CAMEL_CASE.match(text) and len(text) <= REASON_LIMIT:
        return text
    words = re.findall(r"[A-Za-z0-9]+", text or "")
    camel = re.sub(r"^[0-9]+", "", "".join(w[:1].upper() + w[1:] for w in words))
    return camel[:REASON_LIMIT] or NO_REASON


def health_conditions(phase: str, reason: str, message: str) -> list[ConditionUpdate]:
    """kstatus' pair (sigs.k8s.io/cli-utils, what Flux and kubectl-based pipelines compute health
    from): `Reconciling=True` while the outcome is open (Pending through Evaluating, and
    Suspended), `Stalled=True` for Failed and GateFailed, with the phase's reason and message;
    neither once Succeeded. kstatus reads an absent condition as False ("abnormal-true"), so the
    one that does not hold is left out rather than set False."""
    if phase == Phase.SUCCEEDED:
        return []
    ctype = ConditionType.STALLED if phase in (Phase.FAILED, Phase.GATE_FAILED) else ConditionType.RECONCILING
    return [ConditionUpdate(ctype, "True", reason, message)]


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
        cond: dict[str, Any] = {"type": c.type, "status": c.status, "reason": condition_reason(c.reason),
                                "message": truncate(c.message, CONDITION_MESSAGE_LIMIT),
                                "lastTransitionTime": ltt}
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out
