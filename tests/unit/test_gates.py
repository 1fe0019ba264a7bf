"""Gates: reported metrics + spec gates ⇒ decision (kubetune.gates)."""

import math

import pytest

from kubetune.api.enums import Phase
from kubetune.api.spec import Gate
from kubetune.gates import check_gate, decide

GATES = [
    {"metric": "golden.accuracy", "op": ">=", "threshold": 0.5},
    {"metric": "safety.refusal_rate", "op": ">", "threshold": 0.6},
    {"metric": "forgetting.perplexity_increase", "op": "<=", "threshold": 0.5},
    {"metric": "eval.loss", "op": "<", "threshold": 2.0},
]


def conditions(decision):
    return {c.type: (c.status, c.reason) for c in decision.conditions}


def test_all_pass_succeeds_with_ready_true():
    metrics = {"golden.accuracy": 0.5, "safety.refusal_rate": 0.7, "forgetting.perplexity_increase": 0.5,
               "eval.loss": 1.9, "eval.perplexity": 6.7}
    d = decide(metrics, GATES)
    assert d.passed and d.phase == Phase.SUCCEEDED and d.reason == "GatesPassed"
    assert conditions(d) == {"GatesPassed": ("True", "GatesPassed"), "Ready": ("True", "GatesPassed")}
    assert [g.passed for g in d.gates] == [True] * 4  # boundaries: >= and <= include the threshold
    assert d.failed == []
    assert d.message.startswith("all 4 gates passed")


def test_failures_are_named_with_value_and_threshold():
    metrics = {"golden.accuracy": 0.3, "safety.refusal_rate": 0.6, "forgetting.perplexity_increase": 0.1, "eval.loss": 1.0}
    d = decide(metrics, GATES)
    assert not d.passed and d.phase == Phase.GATE_FAILED and d.reason == "GatesFailed"
    assert conditions(d) == {"GatesPassed": ("False", "GatesFailed"), "Ready": ("False", "GatesFailed")}
    assert [g.metric for g in d.failed] == ["golden.accuracy", "safety.refusal_rate"]
    assert d.message == ("2 of 4 gates failed: golden.accuracy = 0.3, needs >= 0.5; "
                         "safety.refusal_rate = 0.6, needs > 0.6")


@pytest.mark.parametrize("value", [None, math.nan])
def test_unmeasured_metric_fails_clearly(value):
    metrics = {} if value is None else {"judge.score": value}
    d = decide(metrics, [Gate(metric="judge.score", op=">=", threshold=7)])
    [gate] = d.gates
    assert not gate.passed and gate.value is None
    assert gate.message == f"judge.score {'was not measured' if value is None else 'is NaN'}, needs >= 7"
    assert d.phase == Phase.GATE_FAILED


@pytest.mark.parametrize("gates", [None, []])
def test_no_gates_succeeds_with_reason_no_gates(gates):
    d = decide({"eval.loss": 1.0}, gates)
    assert d.passed and d.phase == Phase.SUCCEEDED and d.reason == "NoGates"
    assert conditions(d) == {"GatesPassed": ("True", "NoGates"), "Ready": ("True", "NoGates")}


def test_status_form_and_dict():
    d = decide({"golden.accuracy": 0.2}, [GATES[0]])
    [result] = d.gate_results()
    assert result.model_dump(by_alias=True, exclude_none=True) == {
        "metric": "golden.accuracy", "op": ">=", "threshold": 0.5, "value": 0.2, "passed": False,
        "message": "golden.accuracy = 0.2, needs >= 0.5: failed"}
    data = d.as_dict()
    assert data["phase"] == "GateFailed" and data["gates"][0]["value"] == 0.2


def test_strict_ops():
    m = {"eval.loss": 2.0}
    assert not check_gate(Gate(metric="eval.loss", op="<", threshold=2.0), m).passed
    assert check_gate(Gate(metric="eval.loss", op="<=", threshold=2.0), m).passed
    assert not check_gate(Gate(metric="eval.loss", op=">", threshold=2.0), m).passed
