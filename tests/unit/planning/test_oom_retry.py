"""spec.training.oomRetry's decision: the next configuration after an out-of-memory failure."""

from __future__ import annotations

import pytest

from kubetune.api.method_defaults import resolve
from kubetune.api.spec import FineTuneJobSpec
from kubetune.planning.oom_retry import Shape, attempt_shapes, next_shape, shape_of, with_shape


@pytest.mark.parametrize(("current", "failed", "expected"), [
    (Shape(8, 2, True), 1, Shape(4, 4, True)),        # half the micro-batch, twice the accumulation
    (Shape(4, 4, True), 2, Shape(2, 8, True)),        # checkpointing already on: halve again
    (Shape(4, 4, False), 1, Shape(2, 8, False)),      # the first retry halves
    (Shape(2, 8, False), 2, Shape(2, 8, True)),       # the second turns on gradient checkpointing
    (Shape(2, 8, True), 3, Shape(1, 16, True)),       # then halving goes on
    (Shape(1, 16, False), 1, Shape(1, 16, True)),     # micro-batch 1 already: checkpointing first
    (Shape(6, 1, True), 1, Shape(3, 2, True)),
    (Shape(3, 2, True), 2, Shape(1, 6, True)),        # odd: by its smallest factor, the effective batch kept
])
def test_next_shape_keeps_the_effective_batch(current: Shape, failed: int, expected: Shape) -> None:
    got = next_shape(current, failed, max_retries=8)
    assert got == expected
    assert got.batch_size * got.gradient_accumulation_steps == current.batch_size * current.gradient_accumulation_steps


def test_nothing_smaller_or_no_retry_left_is_none() -> None:
    assert next_shape(Shape(1, 16, True), 1, max_retries=8) is None
    assert next_shape(Shape(4, 4, True), 3, max_retries=2) is None  # attempt 3 was the second retry
    assert next_shape(Shape(4, 4, True), 2, max_retries=2) == Shape(2, 8, True)


def _spec(**training: object) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}, "method": "lora",
        "dataset": {"uri": "file:///d.jsonl", "format": "chat"}, "output": {"uri": "file:///out"},
        "training": training})


def test_attempt_shapes_follow_the_spec() -> None:
    assert attempt_shapes(resolve(_spec())) == [Shape(4, 4, True)]  # off by default: one attempt
    shapes = attempt_shapes(resolve(_spec(oomRetry={"maxRetries": 3}, batchSize=8, gradientAccumulationSteps=1,
                                          gradientCheckpointing=False)))
    assert shapes == [Shape(8, 1, False), Shape(4, 2, False), Shape(4, 2, True), Shape(2, 4, True)]
    # stops early when nothing smaller is left
    assert attempt_shapes(resolve(_spec(oomRetry={"maxRetries": 5}, batchSize=2))) == [
        Shape(2, 4, True), Shape(1, 8, True)]


def test_with_shape_on_an_unresolved_spec() -> None:
    spec = with_shape(_spec(oomRetry={"maxRetries": 1}), Shape(2, 8, True))
    assert shape_of(resolve(spec)) == Shape(2, 8, True)
    assert spec.training.oom_retry is not None and spec.training.oom_retry.max_retries == 1
    with pytest.raises(ValueError, match="resolved"):
        shape_of(_spec())
