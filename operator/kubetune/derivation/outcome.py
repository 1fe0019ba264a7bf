"""The part of a status that the trainer's reports and the gates decide — one function,
`outcome_status`, for the operator (`derive_status`) and for `kubetune run` (its status.json), so
a laptop and a cluster cannot describe the same result differently.

Given the phase the world is in (a `State`) and what the trainer reported, it sets progress, data,
metrics; for a finished run it applies the gates (kubetune.gates.promotion_decision) and describes
the artifact and the promotion the trainer reported; and it completes the conditions (Complete, GatesPassed,
Ready, DataValid, Training, Suspended, and kstatus' Reconciling or Stalled) and the phase, reason and message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from kubetune.api.enums import ConditionType, Phase, Reason
from kubetune.api.spec import Gate
from kubetune.api.status import DataSummary
from kubetune.api.trainer_contract import ProgressReport, TrainerResult, child_uri
from kubetune.derivation.conditions import CONDITION_MESSAGE_LIMIT, condition_reason, health_conditions, stamp
from kubetune.derivation.events import truncate
from kubetune.derivation.pods import progress_summary
from kubetune.derivation.timeutil import format_time
from kubetune.gates import ConditionUpdate, decide, promotion_decision


@dataclass
class State:
    """The phase, with the reason and the message that explain it."""

    phase: Phase
    reason: str
    message: str


def finished_state(result: TrainerResult | None) -> State:
    """A trainer that finished: Failed if its result says so, else Succeeded (the gates decide next)."""
    if result is not None and result.outcome == "failed":
        return State(Phase.FAILED, result.reason or Reason.TRAINER_ERROR, result.message or "the trainer failed")
    return State(Phase.SUCCEEDED, Reason.SUCCEEDED, "training finished")


def outcome_status(
    state: State,
    *,
    result: TrainerResult | None,
    progress: ProgressReport | None = None,
    gates: Sequence[Gate | Mapping[str, Any]] | None = None,
    output_uri: str | None = None,
    conditions: Sequence[ConditionUpdate] = (),
    old_conditions: Sequence[Mapping[str, Any]] = (),
    generation: int | None = None,
    now: datetime,
    data: DataSummary | None = None,
) -> dict[str, Any]:
    """Status fields from the state and the trainer's reports: progress, data, metrics, gates,
    artifact, phase, reason, message, conditions (absent ones left out).

    - `state`: the phase the world is in; Succeeded or GateFailed means the run finished, and the
      gates (spec.evaluation.gates) then decide between Succeeded and GateFailed;
    - `result`, `progress`: the trainer's final report and its newest progress report;
    - `output_uri` (spec.output.uri): where the artifact is, for a result without `artifactUri`;
      whether and where it was promoted comes from the result alone (`artifact_status`);
    - `conditions`: those set before (Valid, ResourcesFit, DependencyReady); `old_conditions` and
      `generation` stamp them all (kubetune.derivation.conditions.stamp);
    - `data`: the data preflight's summary (its own pod's result), for as long as the trainer has
      reported none.
    """
    status: dict[str, Any] = {}
    conds = list(conditions)
    state = State(state.phase, condition_reason(state.reason), state.message)  # a trainer's reason is free text
    if progress is not None or (result is not None and result.progress is not None):
        p = (result.progress if result is not None and result.progress is not None else progress)
        assert p is not None
        pd = p.model_dump(by_alias=True, exclude_none=True, mode="json")
        pd.pop("data", None)
        if progress is not None and result is not None and result.progress is not None:
            pd.setdefault("updatedAt", progress.updated_at)
        pd["summary"] = progress_summary(p.step, p.total_steps) or p.stage or ""
        if state.phase == Phase.SUCCEEDED or state.phase == Phase.GATE_FAILED:
            pd["stage"] = "done"
        status["progress"] = {k: v for k, v in pd.items() if v is not None}
    if result is not None and result.data is not None:
        data = result.data
    elif progress is not None and progress.data is not None:
        data = progress.data
    if data is not None:
        status["data"] = data.model_dump(by_alias=True, exclude_none=True, mode="json")

    if result is not None and result.tracking is not None:  # spec.tracking: the run, or why there is none
        tr = result.tracking
        run = {"runId": tr.run_id, "experimentId": tr.experiment_id}
        status["tracking"] = {k: v for k, v in run.items() if v is not None}
        conds.append(ConditionUpdate(ConditionType.TRACKING_AVAILABLE, "True" if tr.available else "False",
                                     Reason.TRACKED if tr.available else Reason.TRACKING_UNAVAILABLE,
                                     truncate(tr.message or "", CONDITION_MESSAGE_LIMIT)))

    complete = state.phase in (Phase.SUCCEEDED, Phase.GATE_FAILED)
    if result is not None and result.metrics:
        status["metrics"] = dict(result.metrics)
    if result is not None and result.checkpoints is not None:
        status["checkpoints"] = result.checkpoints.model_dump(by_alias=True, exclude_none=True, mode="json")
    if complete:
        decision = promotion_decision(result, gates) if result is not None else decide({}, gates)
        state = State(decision.phase, decision.reason, decision.message)
        status["gates"] = [g.model_dump(by_alias=True, exclude_none=True, mode="json") for g in decision.gate_results()]
        if result is not None and result.artifact:
            status["artifact"] = artifact_status(result, output_uri)
        conds += decision.conditions
        conds.append(ConditionUpdate(ConditionType.COMPLETE, "True", Reason.SUCCEEDED, "training and evaluation finished"))
    else:
        if state.phase == Phase.FAILED:
            conds.append(ConditionUpdate(ConditionType.COMPLETE, "False", state.reason, state.message))
        if gates:
            conds.append(ConditionUpdate(ConditionType.GATES_PASSED, "Unknown", Reason.IN_PROGRESS, "not evaluated yet"))
        ready_status = "False" if state.phase == Phase.FAILED else "Unknown"
        # Ready=False on failure; Unknown while the outcome is open (kubectl wait keeps waiting).
        conds.append(ConditionUpdate(ConditionType.READY, ready_status, state.reason, state.message))

    # DataValid: from the data preflight (its pod's result, or the trainer's report of it)
    if state.reason in (Reason.DATA_INVALID, Reason.INSUFFICIENT_DATA):
        conds.append(ConditionUpdate(ConditionType.DATA_VALID, "False", state.reason, state.message))
    elif data is not None or (progress is not None and progress.stage not in (None, "preflight", "loading")):
        conds.append(ConditionUpdate(ConditionType.DATA_VALID, "True", Reason.VALIDATED, "the data preflight passed"))

    training = state.phase in (Phase.RUNNING,)
    conds.append(ConditionUpdate(ConditionType.TRAINING, "True" if training else "False",
                                 Reason.RUNNING if training else state.reason,
                                 "the trainer is training" if training else state.message))
    suspended = state.phase == Phase.SUSPENDED
    conds.append(ConditionUpdate(ConditionType.SUSPENDED, "True" if suspended else "False",
                                 Reason.SUSPENDED if suspended else "NotSuspended",
                                 "spec.suspend is true" if suspended else "not suspended"))

    conds += health_conditions(state.phase, state.reason, state.message)

    status["phase"] = str(state.phase)
    status["reason"] = state.reason
    status["message"] = truncate(state.message, CONDITION_MESSAGE_LIMIT)
    status["conditions"] = stamp(old_conditions, conds, format_time(now), generation)
    return status


def artifact_status(result: TrainerResult, output_uri: str | None) -> dict[str, Any]:
    """status.artifact of a finished run. `promoted`, `promotedUri` and `manifestDigest` come only
    from the trainer's report of a promotion it finished (`result.promotion`, reported once the
    manifest was written), never from the gate decision alone: status names a promoted copy only
    when one exists. The trainer promotes exactly when kubetune.gates.promotion_decision on this
    same result passed, the function the phase is decided by."""
    artifact: dict[str, Any] = {"uri": artifact_uri(result, output_uri), "promoted": result.promotion is not None}
    if result.promotion is not None:
        artifact["promotedUri"] = result.promotion.uri
        artifact["manifestDigest"] = result.promotion.manifest_digest
    return artifact


def dependent_adapter(artifact: Mapping[str, Any] | None) -> str | None:
    """The adapter a PreferenceAlignment chained on a job trains from, given the job's
    status.artifact: the promoted copy when the trainer reported one (with its manifest digest; a
    status that says promoted without one predates trainer-side promotion and may name a folder
    that was never written), else the artifact itself."""
    art = artifact or {}
    if art.get("promoted") and art.get("promotedUri") and art.get("manifestDigest"):
        return str(art["promotedUri"])
    return str(art["uri"]) if art.get("uri") else None


def artifact_uri(result: TrainerResult, output_uri: str | None) -> str | None:
    """The artifact as a URI: as the trainer reports it (`artifactUri`), or — from a trainer that
    predates that field — its folder (adapter/, model/: the trainer writes it straight into its
    output) below `output_uri`."""
    if result.artifact_uri:
        return result.artifact_uri
    if result.artifact and output_uri:
        return child_uri(output_uri, PurePosixPath(result.artifact).name)
    return result.artifact
