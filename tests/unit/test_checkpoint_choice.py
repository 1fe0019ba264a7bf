"""Which checkpoint becomes the artifact (kubetune.checkpoint_selection)."""

import math

import pytest

from kubetune.api.enums import Metric
from kubetune.api.spec import Gate
from kubetune.checkpoint_selection import (
    HIGHER_IS_BETTER,
    choose,
    evaluations_without_improvement,
    higher_is_better,
    row,
    should_stop,
)

GATES = [Gate(metric="golden.accuracy", op=">=", threshold=0.5),
         Gate(metric="safety.refusal_rate", op=">=", threshold=0.9),
         Gate(metric="judge.score", op=">=", threshold=7)]  # not measured at checkpoints


def table(*rows):
    return [row(step, metrics, GATES) for step, metrics in rows]


def test_every_gate_metric_has_a_direction():
    assert set(HIGHER_IS_BETTER) == set(Metric)
    assert higher_is_better("golden.accuracy") and higher_is_better("preference.margin")
    assert not higher_is_better("eval.loss") and not higher_is_better("forgetting.perplexity_increase")


def test_row_checks_only_the_gates_it_measured():
    r = row(20, {"golden.accuracy": 0.6, "safety.refusal_rate": 0.8, "golden.accuracy_base": 0.1}, GATES)
    assert r.metrics == {"golden.accuracy": 0.6, "safety.refusal_rate": 0.8}  # the base's are in status.metrics
    assert r.step == 20 and not r.passed and r.failed == ["safety.refusal_rate"]  # judge.score: the final evaluation's
    ok = row(40, {"golden.accuracy": 0.6, "safety.refusal_rate": 0.95}, GATES)
    assert ok.passed and ok.failed is None
    close = row(60, {"golden.accuracy": 0.49996, "safety.refusal_rate": 0.95}, GATES)  # checked before rounding
    assert not close.passed and close.metrics["golden.accuracy"] == 0.5


def test_the_quickstarts_table_of_five_rows_fits_the_termination_message():
    from kubetune.api.status import CheckpointSelection
    from kubetune.api.trainer_contract import TrainerResult

    metrics = {f"{m}{s}": 0.123456789 for m in ("golden.accuracy", "safety.refusal_rate", "eval.loss", "eval.perplexity",
                                                "forgetting.perplexity", "forgetting.perplexity_increase",
                                                "forgetting.accuracy", "forgetting.accuracy_drop")
               for s in ("", "_base")}
    rows = [row(20 * i, metrics, GATES) for i in range(1, 6)]
    result = TrainerResult(outcome="succeeded", metrics=metrics, checkpoints=CheckpointSelection(
        select_by="golden.accuracy", evaluations=rows, chosen_step=60, last_step=100, reason="x" * 200))
    assert '"checkpoints"' in result.termination_message()


def test_best_passing_checkpoint_wins_over_a_better_failing_and_the_last():
    rows = table((20, {"golden.accuracy": 0.5, "safety.refusal_rate": 1.0}),
                 (40, {"golden.accuracy": 0.8, "safety.refusal_rate": 0.8}),   # best golden, fails refusal
                 (60, {"golden.accuracy": 0.7, "safety.refusal_rate": 0.9}),   # best that passes
                 (80, {"golden.accuracy": 0.6, "safety.refusal_rate": 0.95}))  # the last
    c = choose(rows, "golden.accuracy")
    assert c.step == 60
    assert c.reason == ("step 60: highest golden.accuracy (0.7) of the 3 of 4 checkpoint evaluations that passed "
                        "every gate measured there")


def test_lower_is_better_metrics_and_ties_go_to_the_later_step():
    rows = table((10, {"eval.loss": 1.2}), (20, {"eval.loss": 0.9}), (30, {"eval.loss": 0.9}), (40, {"eval.loss": 1.0}))
    c = choose(rows, "eval.loss")
    assert c.step == 30 and c.reason.startswith("step 30: lowest eval.loss (0.9)")


def test_none_passing_takes_the_best_of_all_and_says_the_full_evaluation_decides():
    rows = table((20, {"golden.accuracy": 0.2, "safety.refusal_rate": 0.1}),
                 (40, {"golden.accuracy": 0.4, "safety.refusal_rate": 0.2}))
    c = choose(rows, "golden.accuracy")
    assert c.step == 40 and "none passed every gate measured there, so the full evaluation decides" in c.reason


def test_unmeasured_or_nan_metric_is_never_preferred():
    rows = table((20, {"golden.accuracy": math.nan}), (40, {"golden.accuracy": 0.1}), (60, {}))
    assert choose(rows, "golden.accuracy").step == 40
    assert choose([], "golden.accuracy").step is None


def test_choice_moves_only_to_the_new_row():
    """The trainer keeps only the current choice's weights: adding a row must never revive an older one."""
    metrics = [{"golden.accuracy": g, "safety.refusal_rate": s} for g, s in
               [(0.3, 0.5), (0.6, 0.95), (0.9, 0.5), (0.6, 0.99), (0.4, 1.0), (0.8, 0.9), (0.8, 0.5)]]
    rows = []
    previous = None
    for i, m in enumerate(metrics):
        rows.append(row(10 * (i + 1), m, GATES))
        step = choose(rows, "golden.accuracy").step
        assert step in (previous, rows[-1].step)
        previous = step
    assert previous == 60


@pytest.mark.parametrize(("values", "since"), [
    ([0.1, 0.2, 0.3], 0), ([0.3, 0.2, 0.3], 2), ([0.3, 0.4, 0.4, 0.1], 2), ([], 0)])
def test_evaluations_without_improvement(values, since):
    rows = table(*[(10 * i, {"golden.accuracy": v}) for i, v in enumerate(values, 1)])
    assert evaluations_without_improvement(rows, "golden.accuracy") == since


def test_should_stop_after_patience_evaluations_without_improvement():
    rows = table((10, {"eval.loss": 1.0}), (20, {"eval.loss": 0.8}), (30, {"eval.loss": 0.85}), (40, {"eval.loss": 0.8}))
    assert should_stop(rows, "eval.loss", 2)
    assert not should_stop(rows, "eval.loss", 3)
    assert not should_stop(rows, "eval.loss", None)
