"""The conditions GitOps tools read (kstatus' Reconciling/Stalled, observedGeneration) through a
job's life, and condition reasons in the shape metav1.Condition requires — checked against the
CRD's own schema, as the API server checks a status patch."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from operator_builders import ftj, jcond, job, pod, terminated

from kubetune.api.crd import crd_schema
from kubetune.api.status import REASON_PATTERN
from kubetune.api.trainer_contract import TrainerResult
from kubetune.derivation import DependencyState, Verdict, derive_status, events_for
from kubetune.derivation.conditions import REASON_LIMIT, condition_reason

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)
FITS = Verdict(plan={"fits": True, "suggestions": []}, fits=True, plan_message="fits")
PASS = {"golden.accuracy": 0.9, "safety.refusal_rate": 0.99, "forgetting.perplexity_increase": 0.05}
# a trainer that reports free text as its reason, 200 characters long
LONG_REASON = ("CUDA error: an illegal memory access was encountered; compile with TORCH_USE_CUDA_DSA "
               "to enable device-side assertions (rank 3, step 1187) " + "x" * 200)[:200]


def derive(cr: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    kw.setdefault("verdict", FITS)
    kw.setdefault("now", NOW)
    return derive_status(cr or ftj(), **kw).status


def finished(outcome: str = "succeeded", exit_code: int = 0, **result: Any) -> dict[str, Any]:
    msg = TrainerResult(outcome=outcome, **result).termination_message()  # type: ignore[arg-type]
    phase = "Succeeded" if outcome == "succeeded" else "Failed"
    return pod(phase=phase, state=terminated(exit_code, "Completed" if exit_code == 0 else "Error", msg))


def kstatus_pair(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]
            if c["type"] in ("Reconciling", "Stalled")}


STAGES: dict[str, dict[str, Any]] = {
    "Validating": {},
    "Waiting": {"dependency": DependencyState("waiting", "waiting for FineTuneJob base")},
    "Queued": {"job": job()},
    "Running": {"job": job(active=1), "pods": [pod()]},
    "Evaluating": {"job": job(active=1),
                   "pods": [pod(annotations={"kubetune.io/progress": json.dumps({"stage": "evaluating"})})]},
    "Suspended": {"cr": ftj(suspend=True), "job": job(suspend=True)},
    "Succeeded": {"job": job(conditions=[jcond("Complete")], succeeded=1),
                  "pods": [finished(metrics=PASS, artifact="/out/adapter")]},
    "GateFailed": {"job": job(conditions=[jcond("Complete")], succeeded=1),
                   "pods": [finished(metrics=dict(PASS, **{"golden.accuracy": 0.1}), artifact="/out/adapter")]},
    "Failed": {"job": job(conditions=[jcond("Failed", "PodFailurePolicy")], failed=1),
               "pods": [finished("failed", 3, reason="InsufficientData", message="only 3 valid examples")]},
}
EXPECTED = {
    "Validating": {"Reconciling": ("True", "Validated")},
    "Waiting": {"Reconciling": ("True", "WaitingForDependency")},
    "Queued": {"Reconciling": ("True", "JobCreated")},
    "Running": {"Reconciling": ("True", "Running")},
    "Evaluating": {"Reconciling": ("True", "Evaluating")},
    "Suspended": {"Reconciling": ("True", "Suspended")},
    "Succeeded": {},
    "GateFailed": {"Stalled": ("True", "GatesFailed")},
    "Failed": {"Stalled": ("True", "InsufficientData")},
}


@pytest.mark.parametrize("phase", STAGES)
def test_reconciling_while_open_stalled_when_failed_neither_once_succeeded(phase: str) -> None:
    kw = dict(STAGES[phase])
    s = derive(kw.pop("cr", None), **kw)
    assert s["phase"] == phase
    assert kstatus_pair(s) == EXPECTED[phase]
    assert s["observedGeneration"] == 1  # from the first status write on
    for c in s["conditions"]:
        if c["type"] in ("Reconciling", "Stalled"):
            assert (c["reason"], c["message"]) == (s["reason"], s["message"])  # the phase's own words
            assert c["observedGeneration"] == 1


def test_the_first_status_write_already_says_reconciling_with_the_generation() -> None:
    cr = ftj()
    cr["metadata"]["generation"] = 3
    cr["status"] = {"observedGeneration": 0}  # what the API server shows before that write
    s = derive(cr)
    assert s["observedGeneration"] == 3
    assert kstatus_pair(s) == {"Reconciling": ("True", "Validated")}


def test_stalled_replaces_reconciling_and_moves_its_own_transition_time() -> None:
    running = derive(job=job(active=1), pods=[pod()])
    cr = ftj()
    cr["status"] = running
    later = datetime(2025, 1, 1, 3, 0, 0, tzinfo=UTC)
    failed = derive(cr, now=later, job=job(conditions=[jcond("Failed", "PodFailurePolicy")], failed=1),
                    pods=[finished("failed", 3, reason="DataInvalid", message="line 7: no output")])
    assert kstatus_pair(failed) == {"Stalled": ("True", "DataInvalid")}
    stalled = next(c for c in failed["conditions"] if c["type"] == "Stalled")
    assert stalled["lastTransitionTime"] == "2025-01-01T03:00:00Z"


def test_invalid_spec_and_failed_dependency_are_stalled() -> None:
    s = derive(verdict=Verdict(problems=["spec.lora.r: must be ≥ 1"]))
    assert kstatus_pair(s) == {"Stalled": ("True", "InvalidSpec")}
    s = derive(dependency=DependencyState("failed", "FineTuneJob base ended GateFailed"))
    assert kstatus_pair(s) == {"Stalled": ("True", "DependencyFailed")}


def test_the_new_conditions_make_no_events() -> None:
    # Reconciling/Stalled restate the phase: a change of conditions alone announces nothing, and a
    # life announces its phases, never a condition
    queued = derive(job=job())
    assert events_for(queued, dict(queued, conditions=[])) == []
    life = [derive(**{k: v for k, v in STAGES[p].items() if k != "cr"}) for p in ("Validating", "Queued", "Running", "Failed")]
    reasons = [e.reason for old, new in zip([None, *life], life, strict=False) for e in events_for(old, new)]
    assert reasons == ["Validated", "JobCreated", "Running", "InsufficientData"]


# ---- reasons ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "reason"), [
    ("OutOfMemory", "OutOfMemory"),
    ("CUDA error: out of memory", "CUDAErrorOutOfMemory"),
    ("out_of_memory", "OutOfMemory"),
    ("3 ranks diverged", "RanksDiverged"),
    ("", "Unspecified"),
    ("!!!", "Unspecified"),
    (None, "Unspecified"),
])
def test_condition_reason_is_camel_case(text: str | None, reason: str) -> None:
    assert condition_reason(text) == reason


def test_a_long_camel_case_reason_is_kept_and_a_longer_one_cut_to_the_limit() -> None:
    assert condition_reason("A" + "b" * 199) == "A" + "b" * 199
    assert condition_reason("A" * 5000) == "A" * REASON_LIMIT


RFC3339 = jsonschema.FormatChecker(formats=())


@RFC3339.checks("date-time")
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value))


def status_errors(kind: str, status: dict[str, Any]) -> list[str]:
    """What the API server's schema check (openAPIV3Schema of the CRD) says of a status patch."""
    schema = crd_schema(kind)["properties"]["status"]
    validator = jsonschema.Draft4Validator(schema, format_checker=RFC3339)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(status)]


def test_a_200_character_trainer_reason_still_makes_a_status_the_api_server_accepts() -> None:
    s = derive(job=job(conditions=[jcond("Failed", "PodFailurePolicy")], failed=1),
               pods=[finished("failed", 1, reason=LONG_REASON, message="the trainer crashed")])
    assert s["phase"] == "Failed"
    assert s["reason"].startswith("CUDAErrorAnIllegalMemoryAccessWasEncountered")
    assert re.match(REASON_PATTERN, s["reason"]) and len(s["reason"]) <= REASON_LIMIT
    assert kstatus_pair(s) == {"Stalled": ("True", s["reason"])}
    assert status_errors("FineTuneJob", s) == []
    # the same status with the trainer's words as they came is what the API server refused (422)
    raw = dict(s, conditions=[dict(c, reason=LONG_REASON) if c["type"] == "Stalled" else c for c in s["conditions"]])
    assert any("reason" in e for e in status_errors("FineTuneJob", raw))
    assert status_errors("FineTuneJob", dict(s, startTime="yesterday"))  # and the format is checked


@pytest.mark.parametrize("phase", STAGES)
def test_every_stage_passes_the_crd_schema(phase: str) -> None:
    kw = dict(STAGES[phase])
    assert status_errors("FineTuneJob", derive(kw.pop("cr", None), **kw)) == []


def test_the_schema_says_what_metav1_condition_says() -> None:
    status = crd_schema("PreferenceAlignment")["properties"]["status"]
    cond = status["properties"]["conditions"]["items"]
    assert cond["required"] == ["type", "status", "reason", "lastTransitionTime"]
    assert cond["properties"]["reason"] | {"description": ""} == {
        "type": "string", "minLength": 1, "maxLength": 1024, "pattern": REASON_PATTERN, "description": ""}
    assert cond["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert status["properties"]["startTime"]["format"] == status["properties"]["completionTime"]["format"] == "date-time"
    assert status["default"] == {"observedGeneration": 0}
