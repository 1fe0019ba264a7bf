"""How a job ended in `kubetune run` (`Outcome`), and the exit status of the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.enums import Phase, Reason
from kubetune.api.trainer_contract import Promotion
from kubetune.gates import Decision

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_GATE_FAILED, EXIT_INTERRUPTED = 0, 1, 3, 130


@dataclass
class Outcome:
    name: str
    kind: str
    phase: Phase
    reason: str
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    decision: Decision | None = None
    artifact: str | None = None  # the local folder the trainer exported
    artifact_uri: str | None = None  # status.artifact.uri (an s3:// output: where it was uploaded)
    promoted: str | None = None  # the promoted URI, when the trainer reported a promotion
    promotion: Promotion | None = None
    status: dict[str, Any] | None = None  # status.json: what the operator would set
    output: Path | None = None
    report_html: Path | None = None
    seconds: float = 0.0
    before: dict[str, float] | None = None  # the referenced job's metrics (PreferenceAlignment)

    @property
    def exit_code(self) -> int:
        return {Phase.SUCCEEDED: EXIT_SUCCEEDED, Phase.GATE_FAILED: EXIT_GATE_FAILED}.get(self.phase, EXIT_FAILED)


def overall_exit(outcomes: list[Outcome]) -> int:
    """130 if a trainer was interrupted; 1 if a job Failed on its own; else 3 if one ended GateFailed;
    else 1 if one failed only because its dependency did; else 0."""
    if any(o.reason == Reason.INTERRUPTED for o in outcomes):
        return EXIT_INTERRUPTED
    own_failure = any(o.phase == Phase.FAILED and o.reason != Reason.DEPENDENCY_FAILED for o in outcomes)
    if own_failure:
        return EXIT_FAILED
    if any(o.phase == Phase.GATE_FAILED for o in outcomes):
        return EXIT_GATE_FAILED
    return EXIT_FAILED if any(o.phase == Phase.FAILED for o in outcomes) else EXIT_SUCCEEDED
