"""spec.training.oomRetry: which configuration the next attempt runs after an out-of-memory failure.

One decision, used by the operator (the Job of each attempt, status.trainingAttempts) and by
`kubetune run` (its trainer subprocess started again):

- a micro-batch above 1 is divided by its smallest factor (halved when even) and
  gradientAccumulationSteps multiplied by that factor, so the effective batch
  (batchSize × gradientAccumulationSteps) stays exactly the same and every retry trains the same model
  from the same checkpoint;
- gradient checkpointing is turned on (when off) at the second retry, or at the first when the
  micro-batch is 1 already;
- nothing is left to try (micro-batch 1, checkpointing on) or spec.training.oomRetry.maxRetries
  retries were spent: None, the failure stands.

Pure: specs in, specs out.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec


@dataclass(frozen=True)
class Shape:
    """What a retry changes."""

    batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool

    def describe(self) -> str:
        gc = "on" if self.gradient_checkpointing else "off"
        return (f"batchSize {self.batch_size}, gradientAccumulationSteps {self.gradient_accumulation_steps}, "
                f"gradientCheckpointing {gc}")


def _smallest_factor(n: int) -> int:
    f = 2
    while f * f <= n:
        if n % f == 0:
            return f
        f += 1
    return n


def next_shape(current: Shape, failed_attempt: int, max_retries: int) -> Shape | None:
    """The configuration of attempt `failed_attempt + 1` after attempt `failed_attempt` (1 = the first
    run) ran out of memory in `current`; None when no retry is left or nothing smaller exists."""
    if failed_attempt < 1 or failed_attempt > max_retries:
        return None
    b, ga = current.batch_size, current.gradient_accumulation_steps
    if not current.gradient_checkpointing and (b == 1 or failed_attempt >= 2):
        return Shape(b, ga, True)
    if b > 1:
        f = _smallest_factor(b)
        return Shape(b // f, ga * f, current.gradient_checkpointing)
    return None


def shape_of(spec: FineTuneJobSpec | PreferenceAlignmentSpec) -> Shape:
    """The configuration of a resolved spec (kubetune.api.method_defaults.resolve)."""
    t = spec.training
    if t.batch_size is None or t.gradient_accumulation_steps is None:
        raise ValueError("shape_of needs a resolved spec (training.batchSize and gradientAccumulationSteps set)")
    return Shape(t.batch_size, t.gradient_accumulation_steps, bool(t.gradient_checkpointing))


def attempt_shapes(resolved: FineTuneJobSpec | PreferenceAlignmentSpec) -> list[Shape]:
    """Every configuration the job may run in, attempt 1 first: one without spec.training.oomRetry."""
    shapes = [shape_of(resolved)]
    retry = resolved.training.oom_retry
    if retry is None:
        return shapes
    while (nxt := next_shape(shapes[-1], len(shapes), retry.max_retries)) is not None:
        shapes.append(nxt)
    return shapes


def with_shape(spec: FineTuneJobSpec | PreferenceAlignmentSpec, shape: Shape) -> FineTuneJobSpec | PreferenceAlignmentSpec:
    """A copy of `spec` (resolved or not) that trains in `shape`."""
    training = spec.training.model_copy(update={
        "batch_size": shape.batch_size,
        "gradient_accumulation_steps": shape.gradient_accumulation_steps,
        "gradient_checkpointing": shape.gradient_checkpointing,
    })
    return spec.model_copy(update={"training": training})


__all__ = ["Shape", "attempt_shapes", "next_shape", "shape_of", "with_shape"]
