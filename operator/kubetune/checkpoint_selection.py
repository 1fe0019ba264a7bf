"""Which checkpoint becomes the artifact (spec.evaluation.checkpoints). Pure.

The trainer evaluates the model every ``everySteps`` steps on a cheap subset of the evaluation sets
and keeps one :class:`~kubetune.api.status.CheckpointMetrics` row per evaluation (:func:`row`).
:func:`choose` picks the step to promote from that table:

- only the gates whose metric the checkpoint evaluation measured are checked at a checkpoint (a
  gate on another metric is decided by the final, full evaluation);
- among the rows that pass every such gate, the best by ``selectBy`` (:func:`higher_is_better`
  says which way); ties go to the later step (more training at the same quality);
- when no row passes, the best of all rows by ``selectBy``: its full evaluation then decides the
  gates (and fails them, unless the full sets disagree with the subset);
- a row whose ``selectBy`` was not measured (absent or NaN) is never chosen over one where it was.

:func:`evaluations_without_improvement` counts the evaluations since ``selectBy`` last improved,
for early stopping (``patience``).

Choosing is incremental: adding a row to the table leaves the choice where it was or moves it to
the new row (the best of a set grows only by its new member), so the trainer keeps the weights of
the current choice and nothing else.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubetune.api.enums import Metric
from kubetune.api.spec import Gate
from kubetune.api.status import CheckpointMetrics
from kubetune.gates import check_gate

# Which way is better, for each metric a gate or selectBy may name.
HIGHER_IS_BETTER: dict[str, bool] = {
    Metric.GOLDEN_ACCURACY: True,
    Metric.SAFETY_REFUSAL_RATE: True,
    Metric.FORGETTING_PERPLEXITY_INCREASE: False,
    Metric.FORGETTING_ACCURACY_DROP: False,
    Metric.EVAL_LOSS: False,
    Metric.EVAL_PERPLEXITY: False,
    Metric.JUDGE_SCORE: True,
    Metric.PREFERENCE_ACCURACY: True,
    Metric.PREFERENCE_MARGIN: True,
}


def higher_is_better(metric: str) -> bool:
    """True when a larger value of ``metric`` is better (accuracies, rates, scores, margins)."""
    return HIGHER_IS_BETTER[Metric(metric)]


def row(step: int, metrics: Mapping[str, float], gates: Sequence[Gate] | None) -> CheckpointMetrics:
    """The table row of one checkpoint evaluation: the gates whose metric it measured, checked. The row
    keeps the tuned model's metrics to 4 decimals (the base's are the same at every step, and the whole
    table must fit the trainer's 4 KiB termination message beside the result)."""
    outcomes = [check_gate(g, metrics) for g in gates or [] if str(g.metric) in metrics]
    failed = [o.metric for o in outcomes if not o.passed]
    kept = {k: round(float(v), 4) for k, v in metrics.items() if not k.endswith("_base")}
    return CheckpointMetrics(step=step, metrics=kept, passed=not failed, failed=failed or None)


@dataclass(frozen=True)
class Choice:
    step: int | None  # None: an empty table
    reason: str


def _value(r: CheckpointMetrics, metric: str) -> float | None:
    v = r.metrics.get(metric)
    return None if v is None or math.isnan(v) else float(v)


def _key(r: CheckpointMetrics, metric: str) -> tuple[bool, float, int]:
    """Sort key, larger is better: measured first, then the metric in its good direction, then the later step."""
    v = _value(r, metric)
    if v is None:
        return (False, 0.0, r.step)
    return (True, v if higher_is_better(metric) else -v, r.step)


def _fmt(v: float | None) -> str:
    return "not measured" if v is None else f"{v:.4g}"


def choose(rows: Sequence[CheckpointMetrics], select_by: str) -> Choice:
    """The step to promote; see the module docstring."""
    if not rows:
        return Choice(None, "no checkpoint was evaluated")
    way = "highest" if higher_is_better(select_by) else "lowest"
    passing = [r for r in rows if r.passed and _value(r, select_by) is not None]
    pool = passing or list(rows)
    best = max(pool, key=lambda r: _key(r, select_by))
    value = _fmt(_value(best, select_by))
    if passing:
        why = (f"step {best.step}: {way} {select_by} ({value}) of the {len(passing)} of {len(rows)} checkpoint "
               f"evaluations that passed every gate measured there")
    else:
        why = (f"step {best.step}: {way} {select_by} ({value}) of {len(rows)} checkpoint evaluations; none passed "
               f"every gate measured there, so the full evaluation decides")
    return Choice(best.step, why)


def evaluations_without_improvement(rows: Sequence[CheckpointMetrics], select_by: str) -> int:
    """How many evaluations in a row, at the end of the table, did not improve on the best before them."""
    best: tuple[bool, float] | None = None
    since = 0
    for r in rows:
        key = _key(r, select_by)[:2]
        if best is None or (key[0] and (not best[0] or key[1] > best[1])):
            best, since = key, 0
        else:
            since += 1
    return since


def should_stop(rows: Sequence[CheckpointMetrics], select_by: str, patience: int | None) -> bool:
    """Early stop: ``patience`` evaluations in a row without improvement of ``select_by``."""
    return patience is not None and evaluations_without_improvement(rows, select_by) >= patience


__all__ = ["HIGHER_IS_BETTER", "Choice", "choose", "evaluations_without_improvement", "higher_is_better", "row",
           "should_stop"]
