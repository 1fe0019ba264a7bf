"""An unschedulable trainer pod on the local control plane: the job keeps waiting past its own grace
period (spec.resources.unschedulableGraceSeconds) while the cluster autoscaler's latest Event on the
pod is TriggeredScaleUp, says so in its status, and fails Unschedulable with the autoscaler's reason
once it posts NotTriggerScaleUp. The Events are posted as cluster-autoscaler posts them (there is no
autoscaler on the local control plane; what is tested is the operator reading them)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from operator_helpers import (
    REPO,
    TRAINER_CLUSTER_ROLE,
    OperatorProcess,
    ftj,
    pass_preflight,
    trainer_pods,
    wait_phase,
)

from kubetune_devcluster import Cluster, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
    cluster.apply(TRAINER_CLUSTER_ROLE)
    op = OperatorProcess(cluster, tmp_path, namespaces=(namespace,), KUBETUNE_UNSCHEDULABLE_GRACE="60")
    op.start()
    yield op
    print(op.log_tail(40))
    op.kill(signal.SIGTERM)


def autoscaler_event(cluster: Cluster, namespace: str, pod: dict, reason: str, message: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.apply({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod['metadata']['name']}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "namespace": namespace,
                           "uid": pod["metadata"]["uid"]},
        "reason": reason, "message": message, "type": "Normal" if reason == "TriggeredScaleUp" else "Warning",
        "source": {"component": "cluster-autoscaler"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1})


def test_waits_while_the_autoscaler_adds_a_node(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    # 16 GPUs fit no node; the job's own grace (6 s) is shorter than the operator's (60 s)
    cluster.apply(ftj("huge", namespace, resources={"gpus": 16, "gpuMemory": "80Gi", "unschedulableGraceSeconds": 6}))
    pass_preflight(cluster, namespace, "huge")
    (pod,) = trainer_pods(cluster, namespace, "huge", phase="Pending")
    autoscaler_event(cluster, namespace, pod, "TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 0->2 (max: 4)}]")
    obj = wait_phase(cluster, "FineTuneJob", namespace, "huge", "Queued", timeout=30)
    wait_until(lambda: "cluster autoscaler" in (wait_phase(cluster, "FineTuneJob", namespace, "huge", "Queued")
                                                ["status"].get("message") or ""), timeout=30, what="the status says it")
    time.sleep(10)  # well past the job's 6 s grace
    obj = wait_phase(cluster, "FineTuneJob", namespace, "huge", "Queued", timeout=1)
    assert obj["status"]["reason"] == "Unschedulable"
    assert "waiting for the cluster autoscaler to add a node (pod triggered scale-up: [{gpu-pool 0->2 (max: 4)}])" \
        in obj["status"]["message"], obj["status"]["message"]
    autoscaler_event(cluster, namespace, pod, "NotTriggerScaleUp",
                     "pod didn't trigger scale-up: 1 max node group size reached")
    obj = wait_phase(cluster, "FineTuneJob", namespace, "huge", "Failed", timeout=40)
    assert obj["status"]["reason"] == "Unschedulable"
    assert "the cluster autoscaler will not add a node (pod didn't trigger scale-up: 1 max node group size reached)" \
        in obj["status"]["message"]
    assert cluster.get("job", "huge-ft", "-n", namespace)["spec"]["suspend"] is True
