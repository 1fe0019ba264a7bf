"""The reconciler against a recording fake API: what it creates, patches and posts."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fake_api import FakeApi
from operator_builders import DATA_OK, ftj, load_example, preflight_done, preflight_pod, terminated, typed

from kubetune.api.trainer_contract import Promotion, TrainerResult
from kubetune.controller import metrics
from kubetune.controller.app import Operator, build_operator
from kubetune.controller.config import OperatorSettings
from kubetune.controller.reconciler import Reconciler, status_patch
from kubetune.controller.world import World
from kubetune.render.job import render_children

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


def jobs(api: FakeApi, cr: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the preflight Job, the trainer Job) of `cr` in the fake API, or None."""
    base = f"{cr['metadata']['name']}-{'ft' if cr['kind'] == 'FineTuneJob' else 'pa'}"
    ns = cr["metadata"]["namespace"]
    return api.objects.get(("Job", ns, base + "-preflight")), api.objects.get(("Job", ns, base))


def pass_preflight(world: World, api: FakeApi, rec: Reconciler, cr: dict[str, Any], **ended: Any) -> dict[str, Any]:
    """The preflight pod ends (ok by default) and its Job with it; the operator sees both."""
    preflight, _ = jobs(api, cr)
    assert preflight is not None
    world.put_pod(preflight_done(preflight, **ended))
    world.put_job(preflight)
    rec.reconcile(key_of(cr))
    return preflight


def set_suspend(world: World, rec: Reconciler, cr: dict[str, Any], value: bool) -> None:
    """The user patches spec.suspend; the operator sees it."""
    changed = copy.deepcopy(world.cr(key_of(cr)))
    assert changed is not None
    changed["spec"]["suspend"] = value
    world.put_cr(changed)
    rec.reconcile(key_of(cr))


def test_creates_the_preflight_then_the_gpu_job_once() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    kinds = [k for v, k in api.calls if v == "create"]
    assert kinds == ["ServiceAccount", "RoleBinding", "ConfigMap", "Job"]
    preflight, trainer = jobs(api, cr)
    assert preflight is not None and trainer is None  # no GPU is requested while the data is checked
    assert "nvidia.com" not in str(preflight)
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Validating", "CheckingData")
    data_valid = next(c for c in st["conditions"] if c["type"] == "DataValid")
    assert (data_valid["status"], data_valid["reason"]) == ("Unknown", "CheckingData")
    world.put_pod(preflight_pod(preflight, phase="Running"))
    rec.reconcile(key_of(cr))
    assert "checking the data in pod pf-1" in api.status[key_of(cr)]["message"]

    pass_preflight(world, api, rec, cr)
    assert [k for v, k in api.calls if v == "create"][4:] == ["ConfigMap", "Job"]  # the ConfigMap is found (409)
    _, trainer = jobs(api, cr)
    assert trainer is not None and trainer["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"
    st = api.status[key_of(cr)]
    assert st["phase"] == "Queued" and st["jobName"] == "triage-llama3-70b-ft"
    assert st["data"] == {"examples": 1000, "train": 950, "validation": 50, "invalid": 0, "duplicates": 3,
                          "pii": {"EMAIL": 2}}  # the preflight's report, until the trainer reports its own
    assert next(c for c in st["conditions"] if c["type"] == "DataValid")["status"] == "True"
    assert [e[1] for e in api.events] == ["CheckingData", "JobCreated"]
    assert "kubetune.io/result" in preflight["metadata"]["annotations"]  # kept for when the pod is gone
    n = len(api.calls)
    rec.reconcile(key_of(cr))
    assert len(api.calls) == n  # nothing changed: no request at all


@pytest.mark.parametrize(("reason", "message"), [
    ("DataInvalid", "12 of 1,000 records are bad: invalid_json (12)"),
    ("InsufficientData", "found 120 valid examples, need at least 200"),
])
def test_a_failing_preflight_ends_the_job_and_no_gpu_is_ever_requested(reason: str, message: str) -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    bad = TrainerResult(outcome="failed", reason=reason, message=message,
                        data=DATA_OK.data.model_copy(update={"examples": 120}) if DATA_OK.data else None)
    preflight = pass_preflight(world, api, rec, cr, result=bad, exit_code=3, reason="Error",
                               job_reason="PodFailurePolicy")
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"], st["message"]) == ("Failed", reason, message)
    assert st["data"]["examples"] == 120
    assert next(c for c in st["conditions"] if c["type"] == "DataValid")["status"] == "False"
    assert st["completionTime"] == "2025-01-01T00:30:00Z"
    assert jobs(api, cr)[1] is None
    assert not [o for o in api.objects.values() if "nvidia.com/gpu" in str(o)]
    assert api.events[-1][:2] == ("Warning", reason)
    assert "kubetune.io/result" in preflight["metadata"]["annotations"]
    n = len(api.calls)
    rec.reconcile(key_of(cr))
    assert len(api.calls) == n and jobs(api, cr)[1] is None  # terminal: nothing more, ever


def test_an_oom_killed_preflight_says_how_to_give_it_memory() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr, result=None, exit_code=137, reason="OOMKilled", job_reason="BackoffLimitExceeded")
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "OutOfMemory")
    assert "data preflight was OOM-killed" in st["message"] and "trainer.preflight.resources" in st["message"]
    assert jobs(api, cr)[1] is None


def test_an_unschedulable_preflight_pod_fails_after_the_grace_and_is_stopped() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    preflight, _ = jobs(api, cr)
    assert preflight is not None
    pod = preflight_pod(preflight, phase="Pending")
    since = (NOW - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                    "lastTransitionTime": since, "message": "0/4 nodes have 4 free CPUs"}]
    pod["status"]["containerStatuses"] = []
    world.put_pod(pod)
    rec.reconcile(key_of(cr))
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "Unschedulable")
    assert "no node can run the data preflight pod: 0/4 nodes have 4 free CPUs" in st["message"]
    assert preflight["spec"]["suspend"] is True and jobs(api, cr)[1] is None


def test_suspended_before_the_data_was_checked() -> None:
    cr = ftj(suspend=True)
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    preflight, _ = jobs(api, cr)
    assert preflight is not None and preflight["spec"]["suspend"] is True
    assert api.status[key_of(cr)]["phase"] == "Suspended"
    set_suspend(world, rec, cr, False)
    assert preflight["spec"]["suspend"] is False and api.status[key_of(cr)]["phase"] == "Validating"


def test_a_queued_job_is_checked_at_once_and_only_the_gpu_job_waits_for_kueue() -> None:
    cr = ftj(queueName="gpu-team-a")
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    preflight, _ = jobs(api, cr)
    assert preflight is not None and preflight["spec"]["suspend"] is False
    assert "kueue.x-k8s.io/queue-name" not in str(preflight)
    pass_preflight(world, api, rec, cr)
    _, trainer = jobs(api, cr)
    assert trainer is not None and trainer["spec"]["suspend"] is True
    assert trainer["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team-a"
    assert api.status[key_of(cr)]["reason"] == "PendingAdmission"
    # Kueue preempts it: the status reads its Workload; the operator leaves Kueue's suspend alone
    api.workloads[trainer["metadata"]["uid"]] = {"status": {"conditions": [
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "Preempted to accommodate a workload"}]}}
    patches = sum(1 for c in api.calls if c == ("patch", "Job"))
    rec.reconcile(key_of(cr))
    assert api.status[key_of(cr)]["reason"] == "Preempted" and trainer["spec"]["suspend"] is True
    assert sum(1 for c in api.calls if c == ("patch", "Job")) == patches
    assert [e[1] for e in api.events][-1] == "Preempted"


def test_the_workload_is_read_only_for_a_queued_job_kueue_holds() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr)
    set_suspend(world, rec, cr, True)  # suspended by the user, no queueName: not Kueue's
    assert ("list", "Workload") not in api.calls


def test_a_trainer_job_of_an_older_operator_goes_on_without_a_preflight() -> None:
    """A Job created before the preflight pod existed: its trainer checks the data itself."""
    cr = ftj()
    world, api, rec = setup(cr)
    old = api.create(render_children(typed(cr), OperatorSettings().render).job)
    old["metadata"]["labels"].pop("kubetune.io/component")  # an older operator did not label it
    world.put_job(old)
    rec.reconcile(key_of(cr))
    assert jobs(api, cr)[0] is None
    assert api.status[key_of(cr)]["phase"] == "Queued"


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
    world, api, rec = setup(small)
    rec.reconcile(key_of(small))
    pass_preflight(world, api, rec, small)
    st = api.status[key_of(small)]
    assert st["phase"] == "Queued" and st["plan"]["cpuOnly"] is True
    job = jobs(api, small)[1]
    assert job is not None and "nvidia.com" not in str(job)

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
    pass_preflight(world, api, rec, cr)
    job_key = ("Job", "clinical-ai", "triage-llama3-70b-ft")
    set_suspend(world, rec, cr, True)
    assert api.objects[job_key]["spec"]["suspend"] is True
    assert api.status[key_of(cr)]["phase"] == "Suspended"
    set_suspend(world, rec, cr, False)
    assert api.objects[job_key]["spec"]["suspend"] is False


def test_unschedulable_past_grace_fails_and_stops_the_job() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr)
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
    pass_preflight(world, api, rec, cr)
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
    assert api.status[key_of(pa)]["phase"] == "Validating"  # its data is checked once it can run
    cm = api.objects[("ConfigMap", "clinical-ai", "triage-llama3-70b-dpo-pa-config")]
    assert '"adapter": "/mnt/pvc/triage-models/promoted/triage-llama3-70b"' in cm["data"]["config.json"]
    pass_preflight(world, api, rec, pa)
    assert api.status[key_of(pa)]["phase"] == "Queued"


def _finished_ftj(promotion: Promotion | None) -> tuple[World, FakeApi, Reconciler, dict[str, Any]]:
    """The FineTuneJob's status made by the reconciler from its trainer's result (gates passing)."""
    cr, pa = ftj(), _pa()
    world, api, rec = setup(cr, pa)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr)
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
                         "kubetune_job_tokens_per_second", "kubetune_job_gpu_seconds",
                         "kubetune_model_cache_requests", "kubetune_job_model_downloaded_bytes"}
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


# --- spec.training.oomRetry ------------------------------------------------------------------------

def _oom(world: World, api: FakeApi, name: str, *, job_fails: bool) -> dict[str, Any]:
    """The trainer Job `name`'s pod is OOM-killed (exit 137); with `job_fails` the Job gives up too."""
    job = api.objects[("Job", "clinical-ai", name)]
    job["status"] = {"failed": 1, "startTime": "2025-01-01T00:00:00Z", "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff",
         "lastTransitionTime": "2025-01-01T00:40:00Z"}] if job_fails else []}
    job["metadata"]["resourceVersion"] = str(int(job["metadata"]["resourceVersion"]) + 1000)
    world.put_job(job)
    world.put_pod({"metadata": {"name": f"{name}-p", "namespace": "clinical-ai",
                                "creationTimestamp": "2025-01-01T00:00:00Z", "labels": {"kubetune.io/kind": "FineTuneJob"},
                                "annotations": {"kubetune.io/owner": "triage-llama3-70b"},
                                "ownerReferences": [{"kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                                                     "controller": True}]},
                   "status": {"phase": "Failed", "containerStatuses": [
                       {"name": "trainer", "state": terminated(137, "OOMKilled")}]}})
    return job


def _trainer_config(api: FakeApi, cm: str) -> dict[str, Any]:
    import json

    return json.loads(api.objects[("ConfigMap", "clinical-ai", cm)]["data"]["config.json"])["spec"]["training"]


def test_oom_retry_runs_a_smaller_attempt_as_its_own_job_then_gives_up() -> None:
    cr = ftj()
    cr["spec"]["training"].update(batchSize=4, gradientAccumulationSteps=4, oomRetry={"maxRetries": 2})
    cr["spec"]["resources"]["gpuMemory"] = "141Gi"  # the plan fits; the real run did not
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr)
    # attempt 1 is OOM-killed while its Job would retry it as it is: stopped, attempt 2 created
    first = _oom(world, api, "triage-llama3-70b-ft", job_fails=False)
    rec.reconcile(key_of(cr))
    assert first["spec"]["suspend"] is True
    second = api.objects[("Job", "clinical-ai", "triage-llama3-70b-ft-a2")]
    assert second["metadata"]["labels"]["kubetune.io/attempt"] == "2"
    assert second["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    vol = next(v for v in second["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert vol["configMap"]["name"] == "triage-llama3-70b-ft-a2-config"
    t = _trainer_config(api, "triage-llama3-70b-ft-a2-config")
    assert (t["batchSize"], t["gradientAccumulationSteps"]) == (2, 8)
    assert _trainer_config(api, "triage-llama3-70b-ft-config")["batchSize"] == 4
    st = api.status[key_of(cr)]
    assert st["phase"] == "Queued" and st["jobName"] == "triage-llama3-70b-ft-a2"
    attempts = st["trainingAttempts"]
    assert [(a["attempt"], a["jobName"], a["batchSize"], a["gradientAccumulationSteps"]) for a in attempts] == [
        (1, "triage-llama3-70b-ft", 4, 4), (2, "triage-llama3-70b-ft-a2", 2, 8)]
    assert attempts[0]["reason"] == "OutOfMemory" and "per GPU" in attempts[1]["plan"]
    ev = [e for e in api.events if e[1] == "RetryingSmaller"]
    assert len(ev) == 1 and ev[0][0] == "Warning" and "batchSize 2" in ev[0][2] and "OOM-killed" in ev[0][2]

    # a restarted operator sees both Jobs (in any order) and creates nothing more
    op2 = operator(api)
    op2.world.put_cr(cr)
    op2.world.put_job(api.objects[("Job", "clinical-ai", "triage-llama3-70b-ft-a2")])
    op2.world.put_job(api.objects[("Job", "clinical-ai", "triage-llama3-70b-ft")])
    op2.world.put_pod(world.pods[key_of(cr)]["triage-llama3-70b-ft-p"])
    n = len([o for o in api.objects if o[0] == "Job"])
    op2.reconciler.reconcile(key_of(cr))
    assert len([o for o in api.objects if o[0] == "Job"]) == n

    # attempt 2 and 3 run out of memory too: the last is the smallest the spec allows ⇒ Failed
    _oom(world, api, "triage-llama3-70b-ft-a2", job_fails=True)
    rec.reconcile(key_of(cr))
    assert _trainer_config(api, "triage-llama3-70b-ft-a3-config")["batchSize"] == 1
    _oom(world, api, "triage-llama3-70b-ft-a3", job_fails=True)
    rec.reconcile(key_of(cr))
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "OutOfMemory")
    assert [a["reason"] for a in st["trainingAttempts"]] == ["OutOfMemory"] * 3
    assert ("Job", "clinical-ai", "triage-llama3-70b-ft-a4") not in api.objects


def test_without_oom_retry_an_oom_fails_as_before() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr)
    _oom(world, api, "triage-llama3-70b-ft", job_fails=True)
    rec.reconcile(key_of(cr))
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "OutOfMemory") and "trainingAttempts" not in st
    assert len([o for o in api.objects if o[0] == "Job"]) == 2  # the preflight's and the one trainer Job
