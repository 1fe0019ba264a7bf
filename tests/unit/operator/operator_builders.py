"""Builders for CR dicts and recorded Job/Pod states."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.resources import AnyJob, parse_resource
from kubetune.api.status import DataSummary
from kubetune.api.trainer_contract import TrainerResult
from kubetune.api.validate import defaulted

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def load_example(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    obj["metadata"].setdefault("namespace", "ns")
    obj["metadata"]["uid"] = "uid-1"
    obj["metadata"]["generation"] = 1
    return obj


def typed(obj: dict[str, Any]) -> AnyJob:
    return parse_resource(defaulted(copy.deepcopy(obj)))


def ftj(**spec_overrides: Any) -> dict[str, Any]:
    obj = load_example("llama3-70b-qlora-triage.yaml")
    obj["spec"].update(spec_overrides)
    return obj


def pod(name: str = "p-1", phase: str = "Running", *, created: str = "2025-01-01T00:00:00Z",
        annotations: dict[str, str] | None = None, conditions: list[dict[str, Any]] | None = None,
        state: dict[str, Any] | None = None, last_state: dict[str, Any] | None = None) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "trainer", "state": state or ({"running": {}} if phase == "Running" else {})}
    if last_state:
        cs["lastState"] = last_state
    return {"metadata": {"name": name, "creationTimestamp": created, "annotations": annotations or {}},
            "status": {"phase": phase, "conditions": conditions or [], "containerStatuses": [cs]}}


def terminated(exit_code: int, reason: str = "Error", message: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"exitCode": exit_code, "reason": reason}
    if message is not None:
        t["message"] = message
    return {"terminated": t}


def job(*, conditions: list[dict[str, Any]] | None = None, active: int = 0, failed: int = 0, succeeded: int = 0,
        suspend: bool = False, name: str = "triage-llama3-70b-ft") -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {}}, "spec": {"suspend": suspend},
            "status": {"conditions": conditions or [], "active": active, "failed": failed, "succeeded": succeeded,
                       "startTime": "2025-01-01T00:00:00Z"}}


def jcond(ctype: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T01:00:00Z"}


DATA_OK = TrainerResult(outcome="succeeded", reason="Succeeded", message="1,000 usable examples (950 train, 50 validation)",
                        data=DataSummary(examples=1000, train=950, validation=50, invalid=0, duplicates=3,
                                         pii={"EMAIL": 2}))


def preflight_pod(job: dict[str, Any], name: str = "pf-1", *, phase: str = "Succeeded", exit_code: int = 0,
                  result: TrainerResult | None = DATA_OK, reason: str = "Completed") -> dict[str, Any]:
    """The data preflight's pod as the Job controller makes it (controlled by `job`), ended or running."""
    jm = job["metadata"]
    tmpl = job["spec"]["template"]["metadata"]
    if phase == "Running":
        state: dict[str, Any] = {"running": {}}
    else:
        state = terminated(exit_code, reason, result.termination_message() if result is not None else None)
    return {"metadata": {"name": name, "namespace": jm["namespace"], "creationTimestamp": "2025-01-01T00:00:00Z",
                         "labels": dict(tmpl["labels"]), "annotations": dict(tmpl["annotations"]),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jm["name"],
                                              "uid": jm["uid"], "controller": True}]},
            "status": {"phase": phase, "containerStatuses": [{"name": "preflight", "state": state}]}}


def preflight_done(job: dict[str, Any], *, result: TrainerResult | None = DATA_OK, exit_code: int = 0,
                   reason: str = "Completed", job_reason: str = "") -> dict[str, Any]:
    """`job` (a preflight Job in a FakeApi) marked Complete (exit 0) or Failed; returns its ended pod."""
    ctype = "Complete" if exit_code == 0 else "Failed"
    job["status"] = {"conditions": [{"type": ctype, "status": "True", "reason": job_reason,
                                     "lastTransitionTime": "2025-01-01T00:30:00Z"}],
                     "succeeded" if exit_code == 0 else "failed": 1}
    job["metadata"]["resourceVersion"] = str(int(job["metadata"].get("resourceVersion") or 0) + 1000)
    return preflight_pod(job, phase="Succeeded" if exit_code == 0 else "Failed", exit_code=exit_code,
                         result=result, reason=reason)
