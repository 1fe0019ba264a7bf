"""Evaluation gates: reported metrics + `spec.evaluation.gates` ⇒ a decision. Pure.

The operator and `kubetune run` both call :func:`decide`, so a cluster and a laptop promote on the
same rule:

- every gate passes ⇒ phase Succeeded, conditions GatesPassed=True and Ready=True (reason
  GatesPassed; NoGates when the spec has none), the artifact may be promoted;
- any gate fails ⇒ phase GateFailed, GatesPassed=False and Ready=False with reason GatesFailed
  and a message naming each failed gate with its value and threshold; nothing is promoted.

A gate whose metric was not measured (absent from the report, or NaN) fails with a message
saying so: a gate never passes silently.
"""

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kubetune.api.enums import ConditionType, GateOp, Phase, Reason
from kubetune.api.spec import Gate
from kubetune.api.status import GateResult
from kubetune.api.trainer_contract import TrainerResult

_OPS: dict[str, Callable[[float, float], bool]] = {
    GateOp.GE: operator.ge,
    GateOp.GT: operator.gt,
    GateOp.LE: operator.le,
    GateOp.LT: operator.lt,
}


@dataclass(frozen=True)
class GateOutcome:
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool
    message: str

    def as_status(self) -> GateResult:
        return GateResult(metric=self.metric, op=self.op, threshold=self.threshold, value=self.value,
                          passed=self.passed, message=None if self.passed else self.message)


@dataclass(frozen=True)
class ConditionUpdate:
    """A condition to set; the caller stamps lastTransitionTime/observedGeneration."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    phase: Phase
    reason: str
    message: str
    gates: list[GateOutcome] = field(default_factory=list)
    conditions: list[ConditionUpdate] = field(default_factory=list)

    @property
    def failed(self) -> list[GateOutcome]:
        return [g for g in self.gates if not g.passed]

    def gate_results(self) -> list[GateResult]:
        return [g.as_status() for g in self.gates]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "phase": str(self.phase),
            "reason": self.reason,
            "message": self.message,
            "gates": [asdict(g) for g in self.gates],
            "conditions": [asdict(c) for c in self.conditions],
        }


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check_gate(gate: Gate, metrics: Mapping[str, float]) -> GateOutcome:
    metric, op, threshold = str(gate.metric), str(gate.op), float(gate.threshold)
    raw = metrics.get(metric)
    value = None if raw is None else float(raw)
    if value is None or math.isnan(value):
        why = "was not measured" if value is None else "is NaN"
        return GateOutcome(metric, op, threshold, None, False,
                           f"{metric} {why}, needs {op} {_fmt(threshold)}")
    passed = _OPS[GateOp(op)](value, threshold)
    verdict = "passed" if passed else "failed"
    return GateOutcome(metric, op, threshold, value, passed,
                       f"{metric} = {_fmt(value)}, needs {op} {_fmt(threshold)}: {verdict}")


def promotion_decision(result: TrainerResult, gates: Sequence[Gate | Mapping[str, Any]] | None) -> Decision:
    """The decision on a finished run, from its result as reported. The trainer calls it on the
    TrainerResult it is about to report (and promotes when it passed); the operator and `kubetune
    run` call it on the same result as they read it back (its metrics survive the JSON round trip
    exactly, NaN and infinities included), with the same gates — so the two cannot disagree."""
    return decide(result.metrics, gates)


def decide(metrics: Mapping[str, float], gates: Sequence[Gate | Mapping[str, Any]] | None) -> Decision:
    """The promotion decision for one finished training run."""
    specs = [g if isinstance(g, Gate) else Gate.model_validate(g) for g in (gates or [])]
    if not specs:
        message = "training and evaluation finished; no gates configured"
        return Decision(True, Phase.SUCCEEDED, Reason.NO_GATES, message, [], [
            ConditionUpdate(ConditionType.GATES_PASSED, "True", Reason.NO_GATES, message),
            ConditionUpdate(ConditionType.READY, "True", Reason.NO_GATES, message),
        ])
    outcomes = [check_gate(g, metrics) for g in specs]
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        message = f"all {len(outcomes)} gates passed: " + "; ".join(
            f"{o.metric} = {_fmt(o.value or 0.0)} {o.op} {_fmt(o.threshold)}" for o in outcomes)
        return Decision(True, Phase.SUCCEEDED, Reason.GATES_PASSED, message, outcomes, [
            ConditionUpdate(ConditionType.GATES_PASSED, "True", Reason.GATES_PASSED, message),
            ConditionUpdate(ConditionType.READY, "True", Reason.GATES_PASSED, message),
        ])
    message = f"{len(failed)} of {len(outcomes)} gates failed: " + "; ".join(o.message.removesuffix(": failed")
                                                                            for o in failed)
    return Decision(False, Phase.GATE_FAILED, Reason.GATES_FAILED, message, outcomes, [
        ConditionUpdate(ConditionType.GATES_PASSED, "False", Reason.GATES_FAILED, message),
        ConditionUpdate(ConditionType.READY, "False", Reason.GATES_FAILED, message),
    ])
