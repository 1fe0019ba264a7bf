"""The reconciler against a recording fake API: what it creates, patches and posts."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fake_api import FakeApi
from operator_builders import ftj, load_example, terminated

from kubetune.api.trainer_contract import Promotion, TrainerResult
from kubetune.operator import metrics
from kubetune.operator.app import Operator, build_operator
from kubetune.operator.config import OperatorSettings
from kubetune.operator.reconciler import Reconciler, status_patch
from kubetune.operator.world import World

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)


def operator(api: FakeApi, settings: OperatorSettings | None = None) -> Operator:
    return build_operator(settings or OperatorSettings(), api=api, clock=lambda: NOW)


def setup(*crs: dict[str, Any], manage_rbac: bool = True) -> tuple[World, FakeApi, Reconciler]:
    api = FakeApi()
    op = operator(api, OperatorSettings(manage_trainer_rbac=manage_rbac))
    for cr in crs:
        op.world.put_cr(cr)
    return op.world, api, op.reconciler


def key_of(cr: dict[str, Any]) -> tuple[str, str, str]:
    return (cr["kind"], cr["metadata"]["namespace"], cr["metadata"]["name"])


def test_creates_children_once_and_queues() -> None:
    cr = ftj()
    _world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    kinds = [k for v, k in api.calls if v == "create"]
    assert kinds == ["ServiceAccount", "RoleBinding", "ConfigMap", "Job"]
    assert api.status[key_of(cr)]["phase"] == "Queued"
    assert [e[1] for e in api.events] == ["JobCreated"]
    n = len(api.calls)
    rec.reconcile(key_of(cr))
    assert len(api.calls) == n  # nothing changed: no request at all


def test_restart_never_creates_a_second_job() -> None:
    cr = ftj()
    _, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    # a new operator process: empty cache, same cluster
    op2 = operator(api)
    op2.world.put_cr(cr)
    op2.reconciler.reconcile(key_of(cr))
    assert len([o for o in api.objects if o[0] == "Job"]) == 1


def test_does_not_fit_is_failed_and_never_scheduled() -> None:
    cr = ftj(method="full")
    cr["spec"].pop("quantization")
    cr["spec"].pop("lora")
    _, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "DoesNotFit")
    assert "per GPU" in st["message"]
    assert not [o for o in api.objects if o[0] == "Job"]
    assert api.events[-1][0] == "Warning"


def test_cpu_job_is_planned_against_its_memory_and_runs_without_a_gpu() -> None:
    small = ftj()
    small["spec"]["baseModel"] = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
    small["spec"]["training"]["maxSeqLength"] = 512
    small["spec"]["resources"] = {"gpus": 0, "memory": "16Gi", "cpu": "4"}
    _, api, rec = setup(small)
    rec.reconcile(key_of(small))
    st = api.status[key_of(small)]
    assert st["phase"] == "Queued" and st["plan"]["cpuOnly"] is True
    job = next(o for k, o in api.objects.items() if k[0] == "Job")
    assert "nvidia.com" not in str(job)

    big = ftj()  # a 70B model in 16Gi of pod memory
    big["metadata"]["name"] = "big-on-cpu"
    big["spec"]["resources"] = {"gpus": 0, "memory": "16Gi"}
    _, api, rec = setup(big)
    rec.reconcile(key_of(big))
    st = api.status[key_of(big)]
    assert (st["phase"], st["reason"]) == ("Failed", "DoesNotFit")
    assert "memory per pod (CPU job); 16 GiB available in resources.memory" in st["message"]
    assert "per GPU" not in st["message"]


def test_suspend_and_resume_patch_the_job() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    job_key = ("Job", "clinical-ai", "triage-llama3-70b-ft")
    cr2 = copy.deepcopy(world.cr(key_of(cr)))
    assert cr2 is not None
    cr2["spec"]["suspend"] = True
    world.put_cr(cr2)
    rec.reconcile(key_of(cr))
    assert api.objects[job_key]["spec"]["suspend"] is True
    assert api.status[key_of(cr)]["phase"] == "Suspended"
    cr3 = copy.deepcopy(world.cr(key_of(cr)))
    assert cr3 is not None
    cr3["spec"]["suspend"] = False
    world.put_cr(cr3)
    rec.reconcile(key_of(cr))
    assert api.objects[job_key]["spec"]["suspend"] is False


def test_unschedulable_past_grace_fails_and_stops_the_job() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    job = api.objects[("Job", "clinical-ai", "triage-llama3-70b-ft")]
    world.put_job(job)
    since = (NOW - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.put_pod({"metadata": {"name": "p", "namespace": "clinical-ai", "creationTimestamp": since,
                                "labels": {"kubetune.io/kind": "FineTuneJob"},
                                "annotations": {"kubetune.io/owner": "triage-llama3-70b"}},
                   "status": {"phase": "Pending", "conditions": [
                       {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "lastTransitionTime": since, "message": "0/4 nodes are available"}]}})
    rec.reconcile(key_of(cr))
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "Unschedulable")
    assert job["spec"]["suspend"] is True
    assert api.events[-1][:2] == ("Warning", "Unschedulable")


def _job_finished(world: World, api: FakeApi, cr: dict[str, Any], promotion: Promotion | None = None) -> dict[str, Any]:
    """The FineTuneJob's Job completed, its pod's termination message a result whose gates pass."""
    job = api.objects[("Job", "clinical-ai", "triage-llama3-70b-ft")]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1,
                     "startTime": "2025-01-01T00:00:00Z", "completionTime": "2025-01-01T01:00:00Z"}
    world.put_job(job)
    msg = TrainerResult(outcome="succeeded", artifact="/mnt/pvc/triage-models/triage-llama3-70b/adapter",
                        metrics={"golden.accuracy": 0.9, "safety.refusal_rate": 1.0,
                                 "forgetting.perplexity_increase": 0.01}, promotion=promotion).termination_message()
    world.put_pod({"metadata": {"name": "p", "namespace": "clinical-ai", "creationTimestamp": "2025-01-01T00:00:00Z",
                                "labels": {"kubetune.io/kind": "FineTuneJob"},
                                "annotations": {"kubetune.io/owner": "triage-llama3-70b"}},
                   "status": {"phase": "Succeeded", "containerStatuses": [
                       {"name": "trainer", "state": terminated(0, "Completed", msg)}]}})
    return job


def test_success_keeps_the_result_on_the_job_and_counts_gates() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    job = _job_finished(world, api, cr)
    gates = rec.metrics.gate_evaluations.labels(kind="FineTuneJob", gate="golden.accuracy", result="passed")
    before = gates._value.get()
    rec.reconcile(key_of(cr))
    st = api.status[key_of(cr)]
    assert st["phase"] == "Succeeded" and st["completionTime"] == "2025-01-01T01:00:00Z"
    assert "kubetune.io/result" in job["metadata"]["annotations"]
    assert gates._value.get() == before + 1
    n = len(api.calls)
    rec.reconcile(key_of(cr))  # terminal: nothing more
    assert len(api.calls) == n


def _pa() -> dict[str, Any]:
    pa = load_example("triage-dpo.yaml")
    pa["metadata"]["uid"] = "uid-pa"
    return pa


def test_preference_alignment_waits_then_runs_on_the_artifact() -> None:
    cr, pa = ftj(), _pa()
    world, api, rec = setup(cr, pa)
    rec.reconcile(key_of(pa))
    st = api.status[key_of(pa)]
    assert (st["phase"], st["reason"]) == ("Waiting", "WaitingForDependency")
    assert not [o for o in api.objects if o[0] == "Job" and o[2].endswith("-pa")]
    done = copy.deepcopy(cr)
    done["status"] = {"phase": "Succeeded", "observedGeneration": 1,
                      "conditions": [{"type": "Ready", "status": "True"}],
                      "artifact": {"uri": "pvc://triage-models/triage-llama3-70b/adapter", "promoted": True,
                                   "promotedUri": "pvc://triage-models/promoted/triage-llama3-70b",
                                   "manifestDigest": "sha256:" + "1" * 64}}
    world.put_cr(done)
    rec.reconcile(key_of(pa))
    assert api.status[key_of(pa)]["phase"] == "Queued"
    cm = api.objects[("ConfigMap", "clinical-ai", "triage-llama3-70b-dpo-pa-config")]
    assert '"adapter": "/mnt/pvc/triage-models/promoted/triage-llama3-70b"' in cm["data"]["config.json"]


def _finished_ftj(promotion: Promotion | None) -> tuple[World, FakeApi, Reconciler, dict[str, Any]]:
    """The FineTuneJob's status made by the reconciler from its trainer's result (gates passing)."""
    cr, pa = ftj(), _pa()
    world, api, rec = setup(cr, pa)
    rec.reconcile(key_of(cr))
    _job_finished(world, api, cr, promotion)
    rec.reconcile(key_of(cr))
    done = copy.deepcopy(cr)
    done["status"] = api.status[key_of(cr)]
    world.put_cr(done)
    return world, api, rec, pa


def test_dependency_gets_the_promoted_copy_only_when_the_trainer_reported_it() -> None:
    promoted = Promotion(uri="pvc://triage-models/promoted/triage-llama3-70b", manifest_digest="sha256:" + "2" * 64,
                         files=4, bytes=1000)
    _, _, rec, pa = _finished_ftj(promoted)
    dep, spec, adapter = rec.dependency(key_of(pa), pa)
    assert dep.state == "ready" and spec is not None
    assert adapter == "pvc://triage-models/promoted/triage-llama3-70b"
    # gates passed but the trainer reported no promotion: the artifact itself, which exists
    _, api, rec, pa = _finished_ftj(None)
    assert api.status[("FineTuneJob", "clinical-ai", "triage-llama3-70b")]["artifact"]["promoted"] is False
    dep, _, adapter = rec.dependency(key_of(pa), pa)
    assert dep.state == "ready" and adapter == "pvc://triage-models/triage-llama3-70b/adapter"


def test_dependency_ignores_a_promotion_claimed_without_a_manifest_digest() -> None:
    # a status written before the trainer promoted said promoted: true from the gates alone; that
    # folder may never have been written, so the PA is given the artifact
    cr, pa = ftj(), _pa()
    world, _, rec = setup(cr, pa)
    done = copy.deepcopy(cr)
    done["status"] = {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "True"}],
                      "artifact": {"uri": "pvc://triage-models/triage-llama3-70b/adapter", "promoted": True,
                                   "promotedUri": "pvc://triage-models/promoted/triage-llama3-70b"}}
    world.put_cr(done)
    assert rec.dependency(key_of(pa), pa)[2] == "pvc://triage-models/triage-llama3-70b/adapter"


@pytest.mark.parametrize("how", ["GateFailed", "deleted"])
def test_preference_alignment_dependency_failed(how: str) -> None:
    cr, pa = ftj(), _pa()
    world, api, rec = setup(cr, pa)
    if how == "deleted":
        world.drop_cr(key_of(cr))
    else:
        failed = copy.deepcopy(cr)
        failed["status"] = {"phase": "GateFailed", "reason": "GatesFailed", "message": "1 of 3 gates failed"}
        world.put_cr(failed)
    rec.reconcile(key_of(pa))
    st = api.status[key_of(pa)]
    assert (st["phase"], st["reason"]) == ("Failed", "DependencyFailed")


def test_status_patch_removes_keys() -> None:
    assert status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}


def test_metrics_names() -> None:
    world = World()
    cr = ftj()
    cr["status"] = {"phase": "Running", "progress": {"loss": 1.5, "step": 5, "totalSteps": 10, "tokensPerSecond": 99.0},
                    "startTime": "2025-01-01T00:00:00Z"}
    world.put_cr(cr)
    collector = metrics.JobsCollector(world.objects)
    fams = {f.name: f for f in collector.collect()}
    assert set(fams) == {"kubetune_jobs", "kubetune_job_training_loss", "kubetune_job_progress_ratio",
                         "kubetune_job_tokens_per_second", "kubetune_job_gpu_seconds"}
    assert fams["kubetune_job_progress_ratio"].samples[0].value == 0.5
    assert any(s.labels == {"kind": "FineTuneJob", "phase": "Running"} and s.value == 1
               for s in fams["kubetune_jobs"].samples)
    world.drop_cr(key_of(cr))
    fams = {f.name: f for f in collector.collect()}
    assert fams["kubetune_job_training_loss"].samples == []  # series gone with the job
    names = metrics.OperatorMetrics().names()
    for n in ("kubetune_phase_transitions", "kubetune_reconcile_duration_seconds", "kubetune_reconcile_errors",
              "kubetune_gate_evaluations", "kubetune_operator_api_requests"):
        assert n in names
