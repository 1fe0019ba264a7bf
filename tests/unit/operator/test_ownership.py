"""A CR deleted and applied again under the same name is another CR: it never takes over the old
run's children (their result), neither from a 409 on create nor from the operator's cache."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from fake_api import FakeApi
from kubernetes.client.exceptions import ApiException
from operator_builders import ftj, preflight_done, terminated

from kubetune.api.trainer_contract import TrainerResult
from kubetune.controller.app import Operator, build_operator
from kubetune.controller.config import OperatorSettings
from kubetune.controller.k8s import ForeignChild, KubeApi
from kubetune.controller.reconciler import WAITING_FOR_PREVIOUS_RUN
from kubetune.controller.world import World
from kubetune.render.meta import owner_reference

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)
NS, NAME, JOB = "clinical-ai", "triage-llama3-70b", "triage-llama3-70b-ft"
KEY = ("FineTuneJob", NS, NAME)
PASSED = TrainerResult(outcome="succeeded", artifact="/mnt/pvc/triage-models/triage-llama3-70b/adapter",
                       metrics={"golden.accuracy": 0.9, "safety.refusal_rate": 1.0,
                                "forgetting.perplexity_increase": 0.01})


def cr_with_uid(uid: str) -> dict[str, Any]:
    cr = ftj()
    cr["metadata"]["uid"] = uid
    return cr


def child(kind: str, name: str, uid: str, owner_uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "1",
                            "labels": {"kubetune.io/job": NAME, "kubetune.io/kind": "FineTuneJob"},
                            "annotations": {"kubetune.io/owner": NAME}}
    if owner_uid is not None:
        meta["ownerReferences"] = [owner_reference("FineTuneJob", NAME, owner_uid)]
    return {"apiVersion": "batch/v1" if kind == "Job" else "v1", "kind": kind, "metadata": meta,
            "spec": {}, "status": {}}


def pod_of(job: dict[str, Any], name: str, *, result: TrainerResult | None = None) -> dict[str, Any]:
    """A trainer pod as the Job controller makes it: controlled by the Job (by uid)."""
    jm = job["metadata"]
    state = terminated(0, "Completed", result.termination_message()) if result else {"running": {}}
    return {"metadata": {"name": name, "namespace": NS, "creationTimestamp": "2025-01-01T00:00:00Z",
                         "labels": dict(jm["labels"]), "annotations": {"kubetune.io/owner": NAME},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jm["name"],
                                              "uid": jm["uid"], "controller": True}]},
            "status": {"phase": "Succeeded" if result else "Running",
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


# --- KubeApi.create on a 409 ---------------------------------------------------------------------------


class ScriptedKubeApi(KubeApi):
    """KubeApi whose requests answer from a script (a dict, or an ApiException to raise)."""

    def __init__(self, *answers: dict[str, Any] | ApiException) -> None:
        super().__init__()
        self.answers = list(answers)
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None, *, resource: str,
                content_type: str = "application/json") -> dict[str, Any]:
        self.requests.append((method, path))
        answer = self.answers.pop(0)
        if isinstance(answer, ApiException):
            raise answer
        return answer


CONFLICT = ApiException(status=409, reason="Conflict")
JOB_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"


def test_create_adopts_its_own_child_on_a_409() -> None:
    mine = child("Job", JOB, "job-1", owner_uid="cr-1")
    api = ScriptedKubeApi(CONFLICT, mine)
    assert api.create(child("Job", JOB, "", owner_uid="cr-1")) == mine
    assert api.requests == [("POST", JOB_PATH), ("GET", f"{JOB_PATH}/{JOB}")]


@pytest.mark.parametrize("existing_owner", ["cr-old", None])
def test_create_never_adopts_a_child_of_another_owner(existing_owner: str | None) -> None:
    theirs = child("Job", JOB, "job-old", owner_uid=existing_owner)
    api = ScriptedKubeApi(CONFLICT, theirs)
    with pytest.raises(ForeignChild) as exc:
        api.create(child("Job", JOB, "", owner_uid="cr-new"))
    assert (exc.value.kind, exc.value.name, exc.value.uid) == ("Job", JOB, "job-old")
    assert exc.value.owner == (f"FineTuneJob {NAME} (uid cr-old)" if existing_owner else None)
    assert api.requests == [("POST", JOB_PATH), ("GET", f"{JOB_PATH}/{JOB}")]  # read, never deleted


def test_create_shares_objects_made_without_an_owner() -> None:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubetune-trainer", "namespace": NS}}
    existing = {**sa, "metadata": {**sa["metadata"], "uid": "sa-1"}}
    assert ScriptedKubeApi(CONFLICT, existing).create(sa) == existing


def test_create_again_when_the_conflicting_object_went_away_meanwhile() -> None:
    created = child("Job", JOB, "job-new", owner_uid="cr-new")
    api = ScriptedKubeApi(CONFLICT, ApiException(status=404, reason="Not Found"), created)
    assert api.create(child("Job", JOB, "", owner_uid="cr-new")) == created
    assert [m for m, _ in api.requests] == ["POST", "GET", "POST"]


def test_create_raises_other_errors() -> None:
    with pytest.raises(ApiException) as exc:
        ScriptedKubeApi(ApiException(status=500, reason="boom")).create(child("Job", JOB, "", owner_uid="cr-1"))
    assert exc.value.status == 500


# --- the cache ---------------------------------------------------------------------------------------


def test_world_hands_a_cr_only_its_own_job_and_that_jobs_pods() -> None:
    world = World()
    old_job = child("Job", JOB, "job-old", owner_uid="cr-old")
    world.put_cr(cr_with_uid("cr-old"))
    world.put_job(old_job)
    world.put_pod(pod_of(old_job, "old-pod", result=PASSED))
    assert world.job(KEY) == old_job and [p["metadata"]["name"] for p in world.pods_of(KEY)] == ["old-pod"]

    world.put_cr(cr_with_uid("cr-new"))  # deleted and applied again; the old Job not collected yet
    assert world.job(KEY) is None
    assert world.pods_of(KEY) == []

    new_job = copy.deepcopy(child("Job", JOB, "job-new", owner_uid="cr-new"))
    new_job["metadata"]["resourceVersion"] = "2"
    world.put_job(new_job)
    world.put_pod(pod_of(new_job, "new-pod"))
    assert world.job(KEY) == new_job
    assert [p["metadata"]["name"] for p in world.pods_of(KEY)] == ["new-pod"]


def test_world_never_hands_over_an_orphaned_job() -> None:
    world = World()
    world.put_cr(cr_with_uid("cr-1"))
    world.put_job(child("Job", JOB, "job-orphan", owner_uid=None))
    assert world.job(KEY) is None


# --- delete and apply again, through the handlers ----------------------------------------------------


def event(type_: str, obj: dict[str, Any]) -> Any:
    return {"type": type_, "object": obj}


def pass_preflight(op: Operator, api: FakeApi) -> None:
    preflight = api.objects[("Job", NS, f"{JOB}-preflight")]
    op.handlers.on_pod_event(event("MODIFIED", preflight_done(preflight)))
    op.handlers.on_job_event(event("MODIFIED", preflight))


def finish_first_run(op: Operator, api: FakeApi) -> dict[str, Any]:
    """The first CR's data passes and its Job completes with a passing result; returns that Job."""
    op.handlers.on_cr_event(event("ADDED", cr_with_uid("cr-old")))
    pass_preflight(op, api)
    job = api.objects[("Job", NS, JOB)]
    op.handlers.on_pod_event(event("MODIFIED", pod_of(job, "old-pod", result=PASSED)))  # the pod ends first
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1,
                     "startTime": "2025-01-01T00:00:00Z", "completionTime": "2025-01-01T01:00:00Z"}
    op.handlers.on_job_event(event("MODIFIED", job))
    status = (op.world.cr(KEY) or {})["status"]
    assert status["phase"] == "Succeeded" and status["metrics"]["golden.accuracy"] == 0.9
    return job


def test_applied_again_gets_a_fresh_job_and_never_the_old_result() -> None:
    api = FakeApi()
    op = build_operator(OperatorSettings(), api=api, clock=lambda: NOW)
    old_job = finish_first_run(op, api)
    old_cr = op.world.cr(KEY)
    op.handlers.on_cr_event(event("DELETED", old_cr or {}))
    api.status.pop(KEY)  # the API server forgets the deleted object and its status

    op.handlers.on_cr_event(event("ADDED", cr_with_uid("cr-new")))  # at once: the old children still exist
    op.handlers.on_pod_event(event("MODIFIED", pod_of(old_job, "old-pod", result=PASSED)))  # a late event
    status = (op.world.cr(KEY) or {})["status"]
    assert status["phase"] not in ("Succeeded", "GateFailed", "Failed")
    assert not {"metrics", "artifact", "gates", "jobName"} & set(status)
    assert api.objects[("Job", NS, JOB)]["metadata"]["uid"] == old_job["metadata"]["uid"]  # nothing created
    waits = [e for e in api.events if e[1] == WAITING_FOR_PREVIOUS_RUN]
    assert len(waits) == 1 and waits[0][0] == "Normal"
    assert f"FineTuneJob {NAME} (uid cr-old)" in waits[0][2]
    op.reconciler.reconcile(KEY)  # a resync while the old children are still there: no second Event
    assert len([e for e in api.events if e[1] == WAITING_FOR_PREVIOUS_RUN]) == 1

    gone = api.collect_garbage("cr-old")  # the garbage collector deletes the old CR's children
    for obj in gone:
        if obj["kind"] == "Job":
            op.handlers.on_job_event(event("DELETED", obj))
    assert ("Job", NS, JOB) not in api.objects  # the new run's data is checked first: no GPU Job yet
    assert api.objects[("Job", NS, f"{JOB}-preflight")]["metadata"]["ownerReferences"][0]["uid"] == "cr-new"
    assert (op.world.cr(KEY) or {})["status"]["phase"] == "Validating"
    pass_preflight(op, api)
    new_job = api.objects[("Job", NS, JOB)]
    assert new_job["metadata"]["uid"] != old_job["metadata"]["uid"]
    assert new_job["metadata"]["ownerReferences"][0]["uid"] == "cr-new"
    assert api.objects[("ConfigMap", NS, f"{JOB}-config")]["metadata"]["ownerReferences"][0]["uid"] == "cr-new"
    status = (op.world.cr(KEY) or {})["status"]
    assert status["phase"] == "Queued" and "metrics" not in status


def test_an_orphaned_child_blocks_with_a_warning() -> None:
    api = FakeApi()
    op = build_operator(OperatorSettings(), api=api, clock=lambda: NOW)
    orphan = child("ConfigMap", f"{JOB}-config", "cm-orphan", owner_uid=None)
    api.objects[("ConfigMap", NS, f"{JOB}-config")] = orphan
    op.handlers.on_cr_event(event("ADDED", cr_with_uid("cr-1")))
    assert ("Job", NS, JOB) not in api.objects
    (wait,) = [e for e in api.events if e[1] == WAITING_FOR_PREVIOUS_RUN]
    assert wait[0] == "Warning" and "has no owner" in wait[2] and "delete it" in wait[2]
