"""Two operator replicas on the real local control plane (`replicaCount: 2` in the chart): only the
holder of the coordination.k8s.io Lease reconciles; killing it hands over to the other within the
Lease's term (SIGKILL) or at once (a clean stop releases the Lease), and every CR still gets exactly
one Job of each kind."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_helpers import DATA_OK, REPO, TRAINER_CLUSTER_ROLE, OperatorProcess, finish, ftj, wait_phase

from kubetune.api.trainer_contract import TrainerResult
from kubetune_devcluster import Cluster, wait_until

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 6
PASSED = TrainerResult(outcome="succeeded", metrics={"golden.accuracy": 0.9}, artifact="s3://bucket/out/adapter")


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
    cluster.apply(TRAINER_CLUSTER_ROLE)


@pytest.fixture
def replicas(cluster: Cluster, crds: None, namespace: str, tmp_path: Path) -> Iterator[dict[str, OperatorProcess]]:
    ops = {}
    for name in ("op-a", "op-b"):
        (tmp_path / name).mkdir()
        ops[name] = OperatorProcess(cluster, tmp_path / name, namespaces=(namespace,),
                                    KUBETUNE_LEADER_ELECTION="true", KUBETUNE_LEADER_ELECTION_NAMESPACE=namespace,
                                    KUBETUNE_LEADER_ELECTION_LEASE_SECONDS=str(LEASE_SECONDS),
                                    KUBETUNE_LEADER_IDENTITY=name)
    yield ops
    for op in ops.values():
        print(op.log_tail(30))
        op.kill(signal.SIGTERM)


def holder(cluster: Cluster, namespace: str) -> str | None:
    proc = cluster.kubectl("get", "lease", "kubetune-operator", "-n", namespace, "-o",
                           "jsonpath={.spec.holderIdentity}")
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def created_jobs(op: OperatorProcess) -> int:
    """How many Jobs this replica created, from its logs (all of its starts)."""
    return sum(p.read_text(errors="replace").count(": created Job ") for p in op.log_dir.glob("operator-*.log"))


def jobs_by_component(cluster: Cluster, namespace: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"preflight": [], "trainer": []}
    for j in cluster.get("jobs", "-n", namespace)["items"]:
        out[j["metadata"]["labels"]["kubetune.io/component"]].append(j["metadata"]["ownerReferences"][0]["name"])
    return out


def finish_running(cluster: Cluster, namespace: str, component: str) -> int:
    n = 0
    for p in cluster.get("pods", "-n", namespace, "-l", f"kubetune.io/component={component}")["items"]:
        if p["status"].get("phase") == "Running":
            finish(cluster, namespace, p["metadata"]["name"], "succeeded",
                   result=DATA_OK if component == "preflight" else PASSED)
            n += 1
    return n


def test_only_the_leader_reconciles_and_the_standby_takes_over(cluster: Cluster, namespace: str,
                                                               replicas: dict[str, OperatorProcess]) -> None:
    a, b = replicas["op-a"], replicas["op-b"]
    a.start()
    wait_until(lambda: holder(cluster, namespace) == "op-a", timeout=30, what="op-a holds the Lease")
    b.start()
    cluster.apply(*[ftj(f"j{i}", namespace) for i in range(5)])
    wait_until(lambda: len(jobs_by_component(cluster, namespace)["preflight"]) == 5, timeout=60,
               what="5 preflight Jobs")
    time.sleep(2)  # b has seen every event too
    assert (created_jobs(a), created_jobs(b)) == (5, 0)
    assert holder(cluster, namespace) == "op-a"

    # the leader dies without a word: b takes over once the Lease's term has passed
    a.kill(signal.SIGKILL)
    killed = time.monotonic()
    cluster.apply(*[ftj(f"j{i}", namespace) for i in range(5, 10)])
    wait_until(lambda: len(jobs_by_component(cluster, namespace)["preflight"]) == 10, timeout=60,
               what="10 preflight Jobs")
    takeover = time.monotonic() - killed
    assert holder(cluster, namespace) == "op-b"
    assert takeover < LEASE_SECONDS + 8, f"took over after {takeover:.1f}s"
    print(f"SIGKILLed leader: the standby created the next Jobs {takeover:.1f}s later (Lease term {LEASE_SECONDS}s)")

    # a comes back as the standby; b stops cleanly and releases the Lease: a leads at once
    a.start()
    time.sleep(1)
    assert holder(cluster, namespace) == "op-b"
    b.kill(signal.SIGTERM)
    stopped = time.monotonic()
    wait_until(lambda: holder(cluster, namespace) == "op-a", timeout=LEASE_SECONDS, what="op-a takes the released Lease")
    print(f"clean stop: the standby took the released Lease {time.monotonic() - stopped:.1f}s later")

    deadline = time.monotonic() + 120
    while len(jobs_by_component(cluster, namespace)["trainer"]) < 10 and time.monotonic() < deadline:
        finish_running(cluster, namespace, "preflight")
        time.sleep(0.5)
    wait_until(lambda: finish_running(cluster, namespace, "trainer") == 0
               and all(p["status"].get("phase") == "Succeeded" for p in
                       cluster.get("pods", "-n", namespace, "-l", "kubetune.io/component=trainer")["items"]),
               timeout=60, what="every trainer pod ended")
    for i in range(10):
        wait_phase(cluster, "FineTuneJob", namespace, f"j{i}", "Succeeded", timeout=60)
    jobs = jobs_by_component(cluster, namespace)
    expected = sorted(f"j{i}" for i in range(10))
    assert sorted(jobs["preflight"]) == expected and sorted(jobs["trainer"]) == expected
