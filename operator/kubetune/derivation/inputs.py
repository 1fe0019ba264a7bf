"""What the operator knows besides the Job and its Pods: the verdict of validation and the memory
plan for the current generation, and a PreferenceAlignment's dependency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Verdict:
    """Validation and memory-plan result for the current generation."""

    problems: Sequence[str] = ()  # errors from kubetune.api.validate (empty: valid)
    plan: Mapping[str, Any] | None = None  # Plan.to_dict()
    fits: bool | None = None  # None: could not plan (unknown architecture)
    plan_message: str | None = None  # Plan.summary(), or why it cannot plan
    # spec.training.oomRetry: each attempt's Job and configuration and plan, attempt 1 first ({jobName,
    # batchSize, gradientAccumulationSteps, gradientCheckpointing, plan, planFits}); empty or one: no retries
    attempts: Sequence[Mapping[str, Any]] = ()

    @property
    def best_suggestion(self) -> str | None:
        for s in (self.plan or {}).get("suggestions", []):
            if s.get("fits"):
                return str(s.get("description"))
        return None


@dataclass(frozen=True)
class DependencyState:
    """A PreferenceAlignment's referenced FineTuneJob."""

    state: Literal["none", "waiting", "ready", "failed"] = "none"
    message: str = ""
