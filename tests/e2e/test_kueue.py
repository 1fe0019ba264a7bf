"""The operator with Kueue itself (sigs.k8s.io/kueue, built from its Go module by cluster/build-kueue.sh,
its CRDs and webhooks from that module) on the local control plane: a ClusterQueue with a GPU quota
for the kwok H100 nodes decides which FineTuneJob runs.

- quota: two jobs need more GPUs than the quota; one runs, the other is Queued with Kueue's own
  reason from its Workload, and runs when the first ends;
- preemption: a higher-priority job preempts a running one; Kueue suspends its Job, the status says
  Preempted (and an Event), the operator leaves the Job suspended, and the job runs again when Kueue
  readmits it. (The trainer's checkpoint on SIGTERM and its resume are the real node's:
  tests/realnode, pod deleted ⇒ resumes from its checkpoint.)

Kueue's job webhook is what suspends a queued Job on creation; its Workload is what the status
reads. Pod phases are kwok's, the trainer's end is injected as in test_operator.py."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from operator_helpers import (
    OperatorProcess,
    finish,
    ftj,
    get_cr,
    install_crds_and_trainer_role,
    pass_preflight,
    preflight_pod,
    report_progress,
    trainer_pods,
    wait_phase,
)

from kubetune.api.trainer_contract import TrainerResult
from kubetune_devcluster import Cluster, wait_until
from kubetune_devcluster.kueue import CLUSTER_QUEUE, GPU_FLAVOR, H100_LABELS, Kueue

pytestmark = pytest.mark.e2e

PASS = TrainerResult(outcome="succeeded", metrics={"golden.accuracy": 0.8}, artifact="s3://bucket/out/adapter")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
LOW, HIGH = "kubetune-e2e-low", "kubetune-e2e-high"


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    kq = Kueue.start(cluster, tmp_path_factory.mktemp("kueue"))
    print(f"Kueue started in {kq.startup_seconds:.1f}s")
    try:
        yield kq
    finally:
        print(kq.log_tail(40))
        kq.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster, kueue: Kueue, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds_and_trainer_role(cluster)
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator-kueue"))
    op.start()
    try:
        yield op
    finally:
        print(op.log_tail(60))
        op.kill(signal.SIGTERM)


def job(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("job", f"{name}-ft", "-n", ns)


def workload(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    """Kueue's Workload of the FineTuneJob's trainer Job (Kueue labels it with the Job's uid)."""
    uid = job(cluster, ns, name)["metadata"]["uid"]
    def found() -> dict[str, Any] | None:
        items = cluster.get("workloads.kueue.x-k8s.io", "-n", ns, "-l", f"kueue.x-k8s.io/job-uid={uid}")["items"]
        return items[0] if items else None
    return wait_until(found, timeout=30, what=f"the Workload of {ns}/{name}-ft")  # type: ignore[no-any-return]


def wl_cond(wl: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (wl.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return get_cr(cluster, "FineTuneJob", ns, name).get("status") or {}


def queued_ftj(name: str, ns: str, priority: str | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {"gpus": 1, "gpuMemory": "80Gi"}
    if priority:
        resources["priorityClassName"] = priority
    return ftj(name, ns, queueName=CLUSTER_QUEUE, resources=resources)


def admitted_and_running(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    """The trainer Job admitted by Kueue: un-suspended by Kueue, the flavor's node labels injected,
    its pod running on an H100 node; returns the pod."""
    wait_until(lambda: wl_cond(workload(cluster, ns, name), "Admitted").get("status") == "True", timeout=60,
               what=f"{name} admitted by Kueue")
    (pod,) = trainer_pods(cluster, ns, name)
    assert job(cluster, ns, name)["spec"]["suspend"] is False
    assert H100_LABELS.items() <= pod["spec"]["nodeSelector"].items()  # Kueue's flavor, on admission
    assert pod["spec"]["nodeName"] in {"kwok-h100-0", "kwok-h100-1"}
    wait_phase(cluster, "FineTuneJob", ns, name, "Running")
    return pod


def stays_suspended(cluster: Cluster, ns: str, name: str, seconds: float = 4) -> None:
    """Several operator resyncs (1 s here): the operator never un-suspends a Job Kueue holds."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert job(cluster, ns, name)["spec"]["suspend"] is True
        assert not cluster.get("pods", "-n", ns, "-l", f"kubetune.io/job={name},kubetune.io/component=trainer",
                               "--field-selector=status.phase=Running")["items"]
        time.sleep(0.5)


def events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return cluster.get("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]  # type: ignore[no-any-return]


def test_kueues_job_webhook_suspends_a_queued_job_on_create(cluster: Cluster, kueue: Kueue, namespace: str) -> None:
    """Kueue's webhooks run (through the API server, TLS with Kueue's own certificate): a Job created
    running with a queue label comes back suspended; one without the label is left alone
    (manageJobsWithoutQueueName: false)."""
    kueue.apply_queues([namespace], gpu_quota=1)

    def plain_job(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace,
                                                                      "labels": labels},
                "spec": {"suspend": False, "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}]}}}}

    for name, labels, suspended in (("queued", {QUEUE_LABEL: CLUSTER_QUEUE}, True), ("not-queued", {}, False)):
        out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(plain_job(name, labels)), check=True)
        assert json.loads(out.stdout)["spec"]["suspend"] is suspended, name  # as created, by the webhook
    cluster.kubectl("delete", "jobs", "--all", "-n", namespace, "--wait=false")


def test_gpu_quota_queues_the_second_job(cluster: Cluster, kueue: Kueue, operator: OperatorProcess,
                                          namespace: str) -> None:
    kueue.apply_queues([namespace], gpu_quota=1)
    cluster.apply(queued_ftj("first", namespace))
    check = preflight_pod(cluster, namespace, "first")  # the data is checked at once: it holds no GPU
    assert QUEUE_LABEL not in check["metadata"]["labels"]
    pass_preflight(cluster, namespace, "first")
    admitted_and_running(cluster, namespace, "first")
    first_job = job(cluster, namespace, "first")
    assert first_job["metadata"]["labels"][QUEUE_LABEL] == CLUSTER_QUEUE
    assert first_job["spec"]["template"]["metadata"]["labels"][QUEUE_LABEL] == CLUSTER_QUEUE
    wl = workload(cluster, namespace, "first")
    assert wl["status"]["admission"]["clusterQueue"] == CLUSTER_QUEUE
    assert wl["status"]["admission"]["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"] == GPU_FLAVOR

    # the second needs a GPU more than the quota: Kueue keeps its Job suspended and says why
    cluster.apply(queued_ftj("second", namespace))
    pass_preflight(cluster, namespace, "second")
    wait_until(lambda: wl_cond(workload(cluster, namespace, "second"), "QuotaReserved").get("status") == "False",
               timeout=60, what="second pending in Kueue")
    pending = wl_cond(workload(cluster, namespace, "second"), "QuotaReserved")
    assert "insufficient unused quota for nvidia.com/gpu in flavor h100" in pending["message"]
    st = wait_until(lambda: (s := status(cluster, namespace, "second")).get("reason") == "PendingAdmission"
                    and pending["message"] in s.get("message", "") and s, timeout=30,
                    what="second Queued with Kueue's reason")
    assert st["phase"] == "Queued"
    assert f"{pending['reason']}: {pending['message']}" in st["message"]
    print(f"second: {st['phase']} / {st['reason']}: {st['message']}")
    stays_suspended(cluster, namespace, "second")
    assert status(cluster, namespace, "second")["phase"] == "Queued"

    # the first ends: Kueue admits the second
    (pod,) = trainer_pods(cluster, namespace, "first")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=PASS)
    wait_phase(cluster, "FineTuneJob", namespace, "first", "Succeeded")
    pod = admitted_and_running(cluster, namespace, "second")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=PASS)
    wait_phase(cluster, "FineTuneJob", namespace, "second", "Succeeded")


def test_higher_priority_job_preempts_a_running_one(cluster: Cluster, kueue: Kueue, operator: OperatorProcess,
                                                     namespace: str) -> None:
    for name, value in ((LOW, 100), (HIGH, 1000)):
        cluster.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                       "value": value, "preemptionPolicy": "Never",  # Kueue preempts, not the scheduler
                       "description": "kubetune e2e (tests/e2e/test_kueue.py)"})
    kueue.apply_queues([namespace], gpu_quota=1)
    cluster.apply(queued_ftj("low", namespace, LOW))
    pass_preflight(cluster, namespace, "low")
    first_pod = admitted_and_running(cluster, namespace, "low")
    report_progress(cluster, namespace, first_pod["metadata"]["name"], step=50, totalSteps=200, stage="training")
    assert workload(cluster, namespace, "low")["spec"]["priority"] == 100

    cluster.apply(queued_ftj("high", namespace, HIGH))
    pass_preflight(cluster, namespace, "high")
    # Kueue evicts the low-priority workload: it suspends the Job (its pod goes), the status says so
    wait_until(lambda: wl_cond(workload(cluster, namespace, "low"), "Evicted").get("reason") == "Preempted",
               timeout=60, what="low preempted by Kueue")
    evicted = wl_cond(workload(cluster, namespace, "low"), "Evicted")
    st = wait_phase(cluster, "FineTuneJob", namespace, "low", "Queued")
    st = wait_until(lambda: (s := status(cluster, namespace, "low")).get("reason") == "Preempted" and s,
                    timeout=30, what="low's status says Preempted")
    assert st["phase"] == "Queued"
    print(f"low: {st['phase']} / {st['reason']}: {st['message']}")
    assert evicted["message"] in st["message"] and "resumes from its last checkpoint" in st["message"]
    assert any(e["reason"] == "Preempted" and evicted["message"] in e["message"]
               for e in events(cluster, namespace, "low"))
    assert job(cluster, namespace, "low")["spec"]["suspend"] is True  # Kueue's suspend
    wait_until(lambda: not cluster.get("pods", "-n", namespace, "-l", "kubetune.io/job=low")["items"]
               or all(p["metadata"]["name"] != first_pod["metadata"]["name"]
                      for p in cluster.get("pods", "-n", namespace, "-l", "kubetune.io/job=low")["items"]),
               timeout=60, what="the preempted trainer pod gone")
    high_pod = admitted_and_running(cluster, namespace, "high")
    stays_suspended(cluster, namespace, "low")  # not fought over by the operator
    assert status(cluster, namespace, "low")["reason"] == "Preempted"

    # the high-priority job ends: Kueue readmits the preempted one, which runs again in a new pod
    finish(cluster, namespace, high_pod["metadata"]["name"], "succeeded", result=PASS)
    wait_phase(cluster, "FineTuneJob", namespace, "high", "Succeeded")
    again = admitted_and_running(cluster, namespace, "low")
    assert again["metadata"]["name"] != first_pod["metadata"]["name"]
    readmitted = wl_cond(workload(cluster, namespace, "low"), "Evicted")
    assert readmitted["status"] == "False" and "Previously" in readmitted["message"]
    finish(cluster, namespace, again["metadata"]["name"], "succeeded", result=PASS)
    obj = wait_phase(cluster, "FineTuneJob", namespace, "low", "Succeeded")
    assert json.dumps(obj["status"]).count("Preempted") == 0  # a final status, not the history
    reasons = [e["reason"] for e in events(cluster, namespace, "low")]
    assert reasons.count("Preempted") == 1 and reasons.count("Running") == 2  # ran, preempted, ran again
