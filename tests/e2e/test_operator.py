"""The operator on the real local control plane: both kinds through their lifecycle, with pod phases
driven by kwok and the trainer's reports injected through the real channel (the progress
annotation on the pod, the TrainerResult JSON in the termination message). Every job first runs
its data preflight pod (CPU only) — the tests end it as the preflight would — and only then gets
its GPU Job."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import (
    DATA_OK,
    REPO,
    TRAINER_CLUSTER_ROLE,
    OperatorProcess,
    children,
    finish,
    ftj,
    get_cr,
    gpu_requests,
    pa,
    pass_preflight,
    preflight_pod,
    report_progress,
    trainer_pods,
    wait_phase,
)

from kubetune.api.status import DataSummary
from kubetune.api.trainer_contract import TrainerResult
from kubetune_devcluster import Cluster, wait_until

pytestmark = pytest.mark.e2e

PASS = {"golden.accuracy": 0.8}
FAIL = {"golden.accuracy": 0.2}


def result(metrics: dict[str, float], **kw: Any) -> TrainerResult:
    return TrainerResult(outcome="succeeded", metrics=metrics, artifact="s3://bucket/out/adapter", **kw)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
    cluster.apply(TRAINER_CLUSTER_ROLE)
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), webhook=True)
    op.start()
    yield op
    print(op.log_tail(80))
    op.kill(signal.SIGTERM)
    # a webhook whose server is gone would refuse every later CR (failurePolicy Fail)
    cluster.kubectl("delete", "validatingwebhookconfiguration", "validate.kubetune.io", "--ignore-not-found")


def apply(cluster: Cluster, *objs: dict[str, Any]) -> None:
    cluster.apply(*objs)


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == ctype)


def test_lifecycle_succeeded(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("tune", namespace))
    obj = wait_phase(cluster, "FineTuneJob", namespace, "tune", "Validating")
    # the data is checked first, in a CPU pod: no GPU is requested meanwhile
    check = preflight_pod(cluster, namespace, "tune")
    assert check["spec"]["nodeName"] == "kwok-cpu-0"  # an untainted CPU node, never a GPU one
    assert check["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                           "limits": {"cpu": "2", "memory": "2Gi"}}
    assert children(cluster, namespace, "tune")["jobs"] == ["tune-ft-preflight"]
    assert gpu_requests(cluster, namespace) == []
    wait_until(lambda: get_cr(cluster, "FineTuneJob", namespace, "tune")["status"].get("reason") == "CheckingData",
               timeout=30, what="CheckingData")
    assert cond(get_cr(cluster, "FineTuneJob", namespace, "tune"), "DataValid")["status"] == "Unknown"
    pass_preflight(cluster, namespace, "tune")
    obj = wait_phase(cluster, "FineTuneJob", namespace, "tune", "Queued", "Running")
    assert obj["status"]["data"]["examples"] == 1000 and cond(obj, "DataValid")["status"] == "True"
    kids = children(cluster, namespace, "tune")
    assert sorted(kids["jobs"]) == ["tune-ft", "tune-ft-preflight"] and kids["configmaps"] == ["tune-ft-config"]
    job = cluster.get("job", "tune-ft", "-n", namespace)
    assert job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    (pod,) = trainer_pods(cluster, namespace, "tune")
    assert pod["spec"]["nodeName"] in {"kwok-h100-0", "kwok-h100-1"}  # never the 24 GB L4
    name = pod["metadata"]["name"]
    wait_phase(cluster, "FineTuneJob", namespace, "tune", "Running")

    report_progress(cluster, namespace, name, step=120, totalSteps=200, loss=1.25, tokensPerSecond=4200.0,
                    stage="training")
    wait_until(lambda: (get_cr(cluster, "FineTuneJob", namespace, "tune")["status"].get("progress") or {})
               .get("summary") == "60% (120/200)", timeout=30, what="progress mirrored")
    table = cluster.kubectl("get", "ftj", "tune", "-n", namespace, check=True).stdout
    assert "Running" in table and "60% (120/200)" in table
    text = operator.metrics()
    assert f'kubetune_job_training_loss{{kind="FineTuneJob",name="tune",namespace="{namespace}"}} 1.25' in text

    report_progress(cluster, namespace, name, step=200, totalSteps=200, loss=0.9, stage="evaluating")
    wait_phase(cluster, "FineTuneJob", namespace, "tune", "Evaluating", timeout=30)

    waiter = subprocess.Popen([str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "wait",
                               "--for=condition=Ready", "ftj/tune", "-n", namespace, "--timeout=60s"])
    finish(cluster, namespace, name, "succeeded", result=result(PASS))
    obj = wait_phase(cluster, "FineTuneJob", namespace, "tune", "Succeeded")
    assert waiter.wait(timeout=70) == 0
    assert cond(obj, "Ready")["status"] == "True"
    assert cond(obj, "GatesPassed")["status"] == "True"
    assert obj["status"]["gates"][0]["value"] == 0.8
    assert obj["status"]["artifact"]["uri"] == "s3://bucket/out/tune/adapter"  # under spec.output.uri
    events = cluster.get("events", "-n", namespace, "--field-selector", "involvedObject.name=tune")["items"]
    reasons = {e["reason"] for e in events}
    assert {"CheckingData", "JobCreated", "Running", "GatesPassed"} <= reasons
    assert re.search(r'kubetune_jobs\{kind="FineTuneJob",phase="Succeeded"\} [1-9]', operator.metrics())


def test_gate_failed(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("weak", namespace))
    pass_preflight(cluster, namespace, "weak")
    (pod,) = trainer_pods(cluster, namespace, "weak")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(FAIL))
    obj = wait_phase(cluster, "FineTuneJob", namespace, "weak", "GateFailed")
    assert obj["status"]["reason"] == "GatesFailed"
    assert "golden.accuracy = 0.2" in obj["status"]["message"]
    assert cond(obj, "Ready")["status"] == "False"
    assert obj["status"]["artifact"]["promoted"] is False


def test_oom_killed(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("oom", namespace))
    pass_preflight(cluster, namespace, "oom")
    (pod,) = trainer_pods(cluster, namespace, "oom")
    finish(cluster, namespace, pod["metadata"]["name"], "oomkilled")
    obj = wait_phase(cluster, "FineTuneJob", namespace, "oom", "Failed")
    assert obj["status"]["reason"] == "OutOfMemory"
    assert "OOM-killed" in obj["status"]["message"] and "per GPU" in obj["status"]["message"]


def test_oom_retry_runs_a_smaller_attempt(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    """spec.training.oomRetry: the first attempt is OOM-killed; the operator creates the second attempt's
    Job with half the micro-batch and twice the accumulation, which then succeeds."""
    training = {"maxSteps": 200, "maxSeqLength": 256, "batchSize": 4, "gradientAccumulationSteps": 2,
                "oomRetry": {"maxRetries": 1}}
    apply(cluster, ftj("oomretry", namespace, training=training))
    pass_preflight(cluster, namespace, "oomretry")
    (first,) = trainer_pods(cluster, namespace, "oomretry")
    assert first["metadata"]["ownerReferences"][0]["name"] == "oomretry-ft"
    finish(cluster, namespace, first["metadata"]["name"], "oomkilled")
    wait_until(lambda: [p for p in trainer_pods(cluster, namespace, "oomretry")
                        if p["metadata"]["ownerReferences"][0]["name"] == "oomretry-ft-a2"],
               timeout=60, what="the second attempt's pod")
    (second,) = trainer_pods(cluster, namespace, "oomretry")
    config = cluster.get("configmap", "oomretry-ft-a2-config", "-n", namespace)
    training_config = json.loads(config["data"]["config.json"])["spec"]["training"]
    assert (training_config["batchSize"], training_config["gradientAccumulationSteps"]) == (2, 4)
    mount = next(v for v in second["spec"]["volumes"] if v["name"] == "config")
    assert mount["configMap"]["name"] == "oomretry-ft-a2-config"
    obj = get_cr(cluster, "FineTuneJob", namespace, "oomretry")
    attempts = obj["status"]["trainingAttempts"]
    assert [(a["jobName"], a["batchSize"], a["gradientAccumulationSteps"]) for a in attempts] == [
        ("oomretry-ft", 4, 2), ("oomretry-ft-a2", 2, 4)]
    assert attempts[0]["reason"] == "OutOfMemory" and "GiB" in attempts[1]["plan"]
    events = cluster.get("events", "-n", namespace, "--field-selector", "involvedObject.name=oomretry")["items"]
    retry = [e for e in events if e["reason"] == "RetryingSmaller"]
    assert len(retry) == 1 and retry[0]["type"] == "Warning" and "batchSize 2" in retry[0]["message"]
    finish(cluster, namespace, second["metadata"]["name"], "succeeded", result=result(PASS))
    obj = wait_phase(cluster, "FineTuneJob", namespace, "oomretry", "Succeeded")
    assert obj["status"]["jobName"] == "oomretry-ft-a2"
    assert obj["status"]["trainingAttempts"][1]["reason"] == "Succeeded"  # the training; the gates decide the phase
    assert sorted(children(cluster, namespace, "oomretry")["jobs"]) == [
        "oomretry-ft", "oomretry-ft-a2", "oomretry-ft-preflight"]


@pytest.mark.parametrize("available", [True, False])
def test_tracking_run_id_and_an_unavailable_server_in_status(cluster: Cluster, operator: OperatorProcess,
                                                             namespace: str, available: bool) -> None:
    """spec.tracking.mlflow: the credentials Secret reaches the trainer by reference; the run id the trainer
    reports is in status; a server it could not use is TrackingAvailable=False with a Warning Event, and the
    job still Succeeded."""
    from kubetune.api.trainer_contract import TrackingReport

    name = "tracked" if available else "untracked"
    tracking = {"mlflow": {"trackingUri": "http://mlflow.mlops:5000", "experiment": "triage",
                           "credentialsSecret": {"name": "mlflow-creds"}}}
    apply(cluster, ftj(name, namespace, tracking=tracking))
    pass_preflight(cluster, namespace, name)
    (pod,) = trainer_pods(cluster, namespace, name)
    assert {"secretRef": {"name": "mlflow-creds"}} in pod["spec"]["containers"][0]["envFrom"]
    report = (TrackingReport(available=True, run_id="0a1b2c", experiment_id="7", message="logged")
              if available else TrackingReport(available=False, message="cannot use the MLflow server: refused"))
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(PASS, tracking=report))
    obj = wait_phase(cluster, "FineTuneJob", namespace, name, "Succeeded")
    c = cond(obj, "TrackingAvailable")
    events = cluster.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    warned = [e for e in events if e["reason"] == "TrackingUnavailable"]
    if available:
        assert obj["status"]["tracking"] == {"runId": "0a1b2c", "experimentId": "7"}
        assert (c["status"], c["reason"]) == ("True", "Tracked") and not warned
    else:
        assert "runId" not in obj["status"].get("tracking", {})
        assert (c["status"], c["reason"]) == ("False", "TrackingUnavailable") and "refused" in c["message"]
        assert len(warned) == 1 and warned[0]["type"] == "Warning"


def test_failing_preflight_never_requests_a_gpu(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("baddata", namespace, backoffLimit=3))
    pod = preflight_pod(cluster, namespace, "baddata")
    r = TrainerResult(outcome="failed", reason="InsufficientData", message="found 3 valid examples, need at least 10",
                      data=DataSummary(examples=3, invalid=1, duplicates=0))
    finish(cluster, namespace, pod["metadata"]["name"], "failed", exit_code=3, result=r)
    obj = wait_phase(cluster, "FineTuneJob", namespace, "baddata", "Failed")
    assert (obj["status"]["reason"], obj["status"]["message"]) == ("InsufficientData", r.message)
    assert cond(obj, "DataValid")["status"] == "False"
    assert obj["status"]["data"] == {"examples": 3, "invalid": 1, "duplicates": 0}
    time.sleep(3)  # several resyncs: a failed preflight is final
    pods = cluster.get("pods", "-n", namespace, "-l", "kubetune.io/job=baddata")["items"]
    assert len(pods) == 1  # the podFailurePolicy failed the Job at once, without a retry
    assert children(cluster, namespace, "baddata")["jobs"] == ["baddata-ft-preflight"]
    assert gpu_requests(cluster, namespace) == []  # no GPU Job or pod ever existed
    events = cluster.get("events", "-n", namespace, "--field-selector", "involvedObject.name=baddata")["items"]
    assert "JobCreated" not in {e["reason"] for e in events}


def test_permanent_trainer_failure_is_not_retried(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("diverges", namespace, backoffLimit=3))
    pass_preflight(cluster, namespace, "diverges")
    (pod,) = trainer_pods(cluster, namespace, "diverges")
    r = TrainerResult(outcome="failed", reason="Diverged", message="training loss became nan at step 12")
    finish(cluster, namespace, pod["metadata"]["name"], "failed", exit_code=5, result=r)
    obj = wait_phase(cluster, "FineTuneJob", namespace, "diverges", "Failed")
    assert obj["status"]["reason"] == "Diverged"
    pods = cluster.get("pods", "-n", namespace, "-l", "kubetune.io/job=diverges,kubetune.io/component=trainer")["items"]
    assert len(pods) == 1  # the podFailurePolicy failed the Job at once


def test_unschedulable(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("huge", namespace, resources={"gpus": 16, "gpuMemory": "80Gi"}))
    pass_preflight(cluster, namespace, "huge")
    obj = wait_phase(cluster, "FineTuneJob", namespace, "huge", "Failed", timeout=90)
    assert obj["status"]["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in obj["status"]["message"]
    assert cluster.get("job", "huge-ft", "-n", namespace)["spec"]["suspend"] is True


def test_image_pull_failure(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    # kwok keeps the pods of a job named "image-pull-fails" Pending in ErrImagePull
    # (cluster/kubetune_devcluster/stages.yaml) — here the data preflight's, the first to use the
    # trainer image; the operator's image-pull grace is 5 s here
    apply(cluster, ftj("image-pull-fails", namespace))
    wait_until(lambda: get_cr(cluster, "FineTuneJob", namespace, "image-pull-fails").get("status", {}).get("reason")
               == "ImageUnavailable", timeout=30, what="ImageUnavailable while within the grace period")
    obj = wait_phase(cluster, "FineTuneJob", namespace, "image-pull-fails", "Failed", timeout=60)
    assert obj["status"]["reason"] == "ImageUnavailable"
    assert "cannot pull the trainer image (ErrImagePull)" in obj["status"]["message"]
    assert "ghcr.io/kubetune/trainer:e2e" in obj["status"]["message"]
    assert cluster.get("job", "image-pull-fails-ft-preflight", "-n", namespace)["spec"]["suspend"] is True
    pods = cluster.get("pods", "-n", namespace, "-l", "kubetune.io/job=image-pull-fails")["items"]
    assert all(p["status"].get("phase") != "Running" for p in pods)  # it never started
    assert children(cluster, namespace, "image-pull-fails")["jobs"] == ["image-pull-fails-ft-preflight"]


def test_multi_node(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    # 2 nodes × 8 GPUs: an Indexed Job of two pods, one per 80 GB node, found by torchrun through a headless Service
    apply(cluster, ftj("wide", namespace, method="lora", resources={"gpus": 8, "nodes": 2, "gpuMemory": "80Gi"}))
    pass_preflight(cluster, namespace, "wide")
    pods = sorted(trainer_pods(cluster, namespace, "wide", count=2),
                  key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
    assert {p["spec"]["nodeName"] for p in pods} == {"kwok-h100-0", "kwok-h100-1"}
    svc = cluster.get("service", "wide-ft", "-n", namespace)
    assert svc["spec"]["clusterIP"] == "None"
    assert all(p["spec"]["subdomain"] == "wide-ft" for p in pods)
    job = cluster.get("job", "wide-ft", "-n", namespace)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    command = " ".join(pods[0]["spec"]["containers"][0]["command"])
    assert "--nnodes=2" in command and "--nproc-per-node=8" in command
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    wait_phase(cluster, "FineTuneJob", namespace, "wide", "Running")
    # every rank reports; rank 0's result carries the metrics the gates read
    finish(cluster, namespace, pods[1]["metadata"]["name"], "succeeded",
           result=TrainerResult(outcome="succeeded", message="rank 1 done"))
    finish(cluster, namespace, pods[0]["metadata"]["name"], "succeeded", result=result(PASS))
    obj = wait_phase(cluster, "FineTuneJob", namespace, "wide", "Succeeded")
    assert obj["status"]["gates"][0]["value"] == 0.8


def test_suspend_resume(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("pause", namespace))
    pass_preflight(cluster, namespace, "pause")
    trainer_pods(cluster, namespace, "pause")
    cluster.kubectl("patch", "ftj", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}',
                    check=True)
    wait_phase(cluster, "FineTuneJob", namespace, "pause", "Suspended")
    assert cluster.get("job", "pause-ft", "-n", namespace)["spec"]["suspend"] is True
    cluster.kubectl("patch", "ftj", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}',
                    check=True)
    wait_phase(cluster, "FineTuneJob", namespace, "pause", "Queued", "Running")
    assert cluster.get("job", "pause-ft", "-n", namespace)["spec"]["suspend"] is False


def test_delete_garbage_collects_children(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("gone", namespace))
    pass_preflight(cluster, namespace, "gone")
    trainer_pods(cluster, namespace, "gone")
    cluster.kubectl("delete", "ftj", "gone", "-n", namespace, "--wait=true", check=True, timeout=60)
    wait_until(lambda: children(cluster, namespace, "gone") == {"jobs": [], "configmaps": [], "services": []},
               timeout=60, what="children garbage-collected")


def test_deleted_and_applied_again_gets_a_fresh_job(cluster: Cluster, operator: OperatorProcess,
                                                   namespace: str) -> None:
    """Delete a finished FineTuneJob and apply it again at once: the new one must not take over the
    old Job (same name, still being garbage-collected) nor show its result. A finalizer holds the
    old Job, so the race the garbage collector may or may not lose is the case every time."""
    apply(cluster, ftj("again", namespace))
    pass_preflight(cluster, namespace, "again")
    (pod,) = trainer_pods(cluster, namespace, "again")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(PASS))
    old = wait_phase(cluster, "FineTuneJob", namespace, "again", "Succeeded")
    old_job = cluster.get("job", "again-ft", "-n", namespace)
    hold = '{"metadata":{"finalizers":["e2e.kubetune.io/hold"]}}'
    cluster.kubectl("patch", "job", "again-ft", "-n", namespace, "--type=merge", "-p", hold, check=True)
    try:
        cluster.kubectl("delete", "ftj", "again", "-n", namespace, "--wait=true", check=True, timeout=60)
        apply(cluster, ftj("again", namespace))
        new_uid = get_cr(cluster, "FineTuneJob", namespace, "again")["metadata"]["uid"]
        assert new_uid != old["metadata"]["uid"]
        wait_until(lambda: cluster.get("job", "again-ft", "-n", namespace)["metadata"].get("deletionTimestamp"),
                   timeout=60, what="the old Job marked for deletion by the garbage collector")
        # the new run checks its data (the old preflight Job had no finalizer: it is gone), then
        # finds the GPU Job's name still taken
        pass_preflight(cluster, namespace, "again")

        def waiting() -> bool:
            events = cluster.get("events", "-n", namespace, "--field-selector", f"involvedObject.uid={new_uid}")
            return any(e["reason"] == "WaitingForPreviousRun" for e in events["items"])

        wait_until(waiting, timeout=30, what="the Event WaitingForPreviousRun on the new FineTuneJob")
        time.sleep(3)  # several resyncs with the old, finished Job in the way
        st = get_cr(cluster, "FineTuneJob", namespace, "again").get("status") or {}
        assert st.get("phase") not in ("Succeeded", "GateFailed", "Failed"), st
        assert not {"metrics", "gates", "artifact", "jobName"} & set(st), st
    finally:
        cluster.kubectl("patch", "job", "again-ft", "-n", namespace, "--type=json",
                        "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')

    def fresh_job() -> dict[str, Any] | None:
        jobs = cluster.get("jobs", "-n", namespace, "-l", "kubetune.io/job=again,kubetune.io/component=trainer")["items"]
        return next((j for j in jobs if j["metadata"]["uid"] != old_job["metadata"]["uid"]), None)

    job = wait_until(fresh_job, timeout=60, what="a fresh Job for the new FineTuneJob")
    assert job["metadata"]["ownerReferences"][0]["uid"] == new_uid
    assert "kubetune.io/result" not in (job["metadata"].get("annotations") or {})
    (pod2,) = trainer_pods(cluster, namespace, "again")
    assert pod2["metadata"]["name"] != pod["metadata"]["name"]
    st = wait_phase(cluster, "FineTuneJob", namespace, "again", "Running")["status"]
    assert "metrics" not in st and "gates" not in st
    finish(cluster, namespace, pod2["metadata"]["name"], "succeeded", result=result(FAIL))
    obj = wait_phase(cluster, "FineTuneJob", namespace, "again", "GateFailed")  # this run's result, not the old
    assert obj["status"]["gates"][0]["value"] == 0.2


def test_preference_alignment_waits_then_runs(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, pa("align", namespace, "base"), ftj("base", namespace))
    obj = wait_phase(cluster, "PreferenceAlignment", namespace, "align", "Waiting")
    assert cond(obj, "DependencyReady")["status"] == "False"
    assert children(cluster, namespace, "align")["jobs"] == []
    pass_preflight(cluster, namespace, "base")
    (pod,) = trainer_pods(cluster, namespace, "base")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(PASS))
    wait_phase(cluster, "FineTuneJob", namespace, "base", "Succeeded")
    wait_phase(cluster, "PreferenceAlignment", namespace, "align", "Validating")
    pass_preflight(cluster, namespace, "align")
    wait_phase(cluster, "PreferenceAlignment", namespace, "align", "Queued", "Running")
    cm = cluster.get("configmap", "align-pa-config", "-n", namespace)
    config = json.loads(cm["data"]["config.json"])
    assert config["sources"]["adapter"] == "s3://bucket/out/base/adapter"  # the FineTuneJob's artifact
    assert config["task"] == "dpo"
    (pod,) = trainer_pods(cluster, namespace, "align")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result({}))
    obj = wait_phase(cluster, "PreferenceAlignment", namespace, "align", "Succeeded")
    assert cond(obj, "Ready")["status"] == "True"


def test_preference_alignment_dependency_failed(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, ftj("base", namespace), pa("align", namespace, "base"))
    pass_preflight(cluster, namespace, "base")
    (pod,) = trainer_pods(cluster, namespace, "base")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(FAIL))
    wait_phase(cluster, "FineTuneJob", namespace, "base", "GateFailed")
    obj = wait_phase(cluster, "PreferenceAlignment", namespace, "align", "Failed")
    assert obj["status"]["reason"] == "DependencyFailed"
    apply(cluster, pa("orphan", namespace, "ephemeral"), ftj("ephemeral", namespace))
    wait_phase(cluster, "PreferenceAlignment", namespace, "orphan", "Waiting")
    cluster.kubectl("delete", "ftj", "ephemeral", "-n", namespace, check=True)
    obj = wait_phase(cluster, "PreferenceAlignment", namespace, "orphan", "Failed")
    assert obj["status"]["reason"] == "DependencyFailed"


def test_webhook_refuses_a_job_that_cannot_fit(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    big = ftj("too-big", namespace, method="full",
              baseModel={"uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct"}, training={"maxSteps": 10})
    wait_until(lambda: cluster.get("validatingwebhookconfigurations")["items"], timeout=30, what="webhook config")
    proc = subprocess.run([str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
                          input=json.dumps(big), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "does not fit" in proc.stderr and "per GPU" in proc.stderr, proc.stderr


def test_schema_refuses_malformed_manifests(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    bad = ftj("bad", namespace, lora={"r": 0})
    proc = subprocess.run([str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
                          input=json.dumps(bad), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "spec.lora.r" in proc.stderr, proc.stderr


def test_restricted_namespace_admits_trainer_pods(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", check=True)
    apply(cluster, ftj("strict", namespace))
    check = pass_preflight(cluster, namespace, "strict")
    assert check["spec"]["securityContext"]["runAsNonRoot"] is True
    assert check["spec"]["automountServiceAccountToken"] is True  # its progress annotation (model download)
    assert check["spec"]["serviceAccountName"] == "kubetune-trainer"
    (pod,) = trainer_pods(cluster, namespace, "strict")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_one_job_per_cr_across_operator_sigkills(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                 tmp_path: Path) -> None:
    n = 20
    apply(cluster, *[ftj(f"j{i}", namespace) for i in range(n)])
    finished: set[str] = set()
    deadline = time.monotonic() + 240
    kills = 0
    while len(finished) < n and time.monotonic() < deadline:
        if kills < 3 and len(finished) >= kills * 5:
            operator.kill(signal.SIGKILL)
            kills += 1
            operator.start()
        pods = cluster.get("pods", "-n", namespace, "-l", "kubetune.io/kind=FineTuneJob")["items"]
        batch = 0
        for p in pods:
            owner = p["metadata"]["labels"]["kubetune.io/job"]
            if p["status"].get("phase") != "Running" or owner in finished or batch >= 5:
                continue
            batch += 1  # at most 5 per round: the operator is killed between rounds
            if p["metadata"]["labels"]["kubetune.io/component"] == "preflight":
                finish(cluster, namespace, p["metadata"]["name"], "succeeded", result=DATA_OK)
            else:
                finish(cluster, namespace, p["metadata"]["name"], "succeeded", result=result(PASS))
                finished.add(owner)
        time.sleep(0.5)
    assert kills == 3
    jobs = cluster.get("jobs", "-n", namespace)["items"]
    for component in ("preflight", "trainer"):  # exactly one Job of each per CR
        owners = [j["metadata"]["ownerReferences"][0]["name"] for j in jobs
                  if j["metadata"]["labels"]["kubetune.io/component"] == component]
        assert sorted(owners) == sorted(f"j{i}" for i in range(n)), component
    for i in range(n):
        wait_phase(cluster, "FineTuneJob", namespace, f"j{i}", "Succeeded", "GateFailed", "Failed", timeout=60)


def _claim(cluster: Cluster, namespace: str, name: str) -> None:
    """A bound PersistentVolumeClaim for the example's pvc:// sources (the scheduler waits for it)."""
    pv = f"{namespace}-{name}"
    cluster.apply(
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Ti"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "hostPath": {"path": f"/tmp/{pv}"}, "persistentVolumeReclaimPolicy": "Retain"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Ti"}}}},
    )


def test_kubectl_apply_the_examples(cluster: Cluster, operator: OperatorProcess) -> None:
    """`kubectl apply -f examples/...` as a user would: the 70B QLoRA job gets its ConfigMap and Job,
    its pod lands on an 80 GB GPU, and the chained DPO waits for it, then runs on its adapter."""
    ns = "clinical-ai"  # the namespace the examples name
    cluster.kubectl("create", "namespace", ns)
    for claim in ("triage-data", "triage-models"):
        _claim(cluster, ns, claim)
    out = cluster.kubectl("apply", "-f", str(REPO / "examples" / "llama3-70b-qlora-triage.yaml"),
                          "-f", str(REPO / "examples" / "triage-dpo.yaml"), check=True).stdout
    assert "finetunejob.kubetune.io/triage-llama3-70b created" in out
    check = pass_preflight(cluster, ns, "triage-llama3-70b")
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"].get("readOnly", False)
              for v in check["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"triage-data": True, "triage-models": False}  # it writes the checked data to the output
    obj = wait_phase(cluster, "FineTuneJob", ns, "triage-llama3-70b", "Queued", "Running")
    assert obj["status"]["plan"]["fits"] is True
    kids = children(cluster, ns, "triage-llama3-70b")
    assert len(kids["jobs"]) == 2 and len(kids["configmaps"]) == 1
    (pod,) = trainer_pods(cluster, ns, "triage-llama3-70b")
    assert pod["spec"]["nodeName"] in {"kwok-h100-0", "kwok-h100-1"}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"triage-data", "triage-models"}
    dpo = wait_phase(cluster, "PreferenceAlignment", ns, "triage-llama3-70b-dpo", "Waiting")
    assert cond(dpo, "DependencyReady")["status"] == "False"

    metrics = {"golden.accuracy": 0.86, "safety.refusal_rate": 0.97, "forgetting.perplexity_increase": 0.08}
    finish(cluster, ns, pod["metadata"]["name"], "succeeded",
           result=TrainerResult(outcome="succeeded", metrics=metrics, artifact="/output/adapter"))
    wait_phase(cluster, "FineTuneJob", ns, "triage-llama3-70b", "Succeeded")
    pass_preflight(cluster, ns, "triage-llama3-70b-dpo")
    wait_phase(cluster, "PreferenceAlignment", ns, "triage-llama3-70b-dpo", "Queued", "Running")
    (dpo_pod,) = trainer_pods(cluster, ns, "triage-llama3-70b-dpo")
    assert dpo_pod["spec"]["nodeName"] in {"kwok-h100-0", "kwok-h100-1"}
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
