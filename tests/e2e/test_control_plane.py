"""The local control plane behaves like a real cluster where kubetune relies on it:
scheduling on GPU nodes, Job/pod lifecycles driven through kwok, CRD CEL validation,
Pod Security admission, garbage collection, service-account tokens, helm."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune_devcluster import (
    GPU_RESOURCE,
    GPU_TOLERATION,
    Cluster,
    finish_pod,
    wait_for_pods,
    wait_until,
)

pytestmark = pytest.mark.e2e

H100_NODES = {"kwok-h100-0", "kwok-h100-1"}
L4_NODE = "kwok-l4-0"


def container(gpus: int = 0, name: str = "trainer", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "ghcr.io/kubetune/trainer:dev"}
    if gpus:
        c["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}, "requests": {"cpu": "1", "memory": "1Gi"}}
    c.update(extra)
    return c


def gpu_pod_spec(gpus: int = 1, min_gpu_memory_mib: int | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "tolerations": [GPU_TOLERATION],
        "containers": [container(gpus)],
        "terminationGracePeriodSeconds": 1,
    }
    if min_gpu_memory_mib is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.memory",
                                    "operator": "Gt",
                                    "values": [str(min_gpu_memory_mib)],
                                },
                            ]
                        }
                    ]
                }
            }
        }
    spec.update(extra)
    return spec


def pod(name: str, ns: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": spec,
    }


def job(name: str, ns: str, spec: dict[str, Any], **job_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": 0,
            **job_spec,
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def job_condition(cluster: Cluster, ns: str, name: str, cond: str) -> dict[str, Any] | None:
    j = cluster.get("job", name, "-n", ns)
    for c in j.get("status", {}).get("conditions", []):
        if c["type"] == cond and c["status"] == "True":
            return c
    return None


def running_job_pod(cluster: Cluster, ns: str, job_name: str, exclude: set[str] | None = None) -> str:
    def find() -> str | None:
        pods = wait_for_pods(
            cluster.kubeconfig, ns, f"job-name={job_name}", "Running", kubectl=cluster.kubectl_path
        )
        names = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] not in (exclude or set())]
        return names[0] if names else None

    return wait_until(find, 30, f"a Running pod of job {job_name}")


def terminated(p: dict[str, Any], container_name: str = "trainer") -> dict[str, Any]:
    for cs in p["status"]["containerStatuses"]:
        if cs["name"] == container_name:
            return cs["state"]["terminated"]
    raise AssertionError(f"no container {container_name} in {p['status']}")


# ---- nodes and scheduling ----------------------------------------------------------------


def test_gpu_nodes_exist(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.get("nodes", "-l", "type=kwok")["items"]}
    assert H100_NODES | {L4_NODE} <= set(nodes)
    for name in H100_NODES:
        n = nodes[name]
        assert n["status"]["capacity"][GPU_RESOURCE] == "8"
        assert n["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert int(n["status"]["allocatable"]["cpu"]) >= 64
        labels = n["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert labels["nvidia.com/gpu.memory"] == "81559"
        assert labels["nvidia.com/gpu.count"] == "8"
        assert labels["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]
        assert n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    l4 = nodes[L4_NODE]
    assert l4["status"]["allocatable"][GPU_RESOURCE] == "4"
    assert l4["metadata"]["labels"]["nvidia.com/gpu.memory"] == "24576"


def test_gpu_memory_affinity_lands_on_80gb_nodes(cluster: Cluster, namespace: str) -> None:
    # 6 one-GPU pods: the L4 node has room for 4 of them, so a scheduler ignoring the
    # affinity would very likely put some there.
    names = [f"big-{i}" for i in range(6)]
    cluster.apply(
        *[pod(n, namespace, gpu_pod_spec(1, min_gpu_memory_mib=40000), {"set": "big"}) for n in names]
    )
    pods = wait_for_pods(
        cluster.kubeconfig, namespace, "set=big", "Running", count=6, kubectl=cluster.kubectl_path
    )
    placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods}
    assert set(placed.values()) <= H100_NODES, placed
    # and the containers are ready, as a kubelet would report
    for p in pods:
        assert all(cs["ready"] and "running" in cs["state"] for cs in p["status"]["containerStatuses"])


def test_too_many_gpus_stays_unschedulable(cluster: Cluster, namespace: str) -> None:
    cluster.apply(pod("huge", namespace, gpu_pod_spec(16)))

    def unschedulable() -> dict[str, Any] | None:
        p = cluster.get("pod", "huge", "-n", namespace)
        for c in p.get("status", {}).get("conditions", []):
            if c["type"] == "PodScheduled" and c["status"] == "False" and c["reason"] == "Unschedulable":
                return p
        return None

    p = wait_until(unschedulable, 30, "PodScheduled=False/Unschedulable")
    assert p["status"]["phase"] == "Pending"
    assert not p["spec"].get("nodeName")
    assert "Insufficient nvidia.com/gpu" in json.dumps(p["status"]["conditions"])


# ---- Jobs and pod outcomes ---------------------------------------------------------------


def test_job_pod_succeeds_with_termination_message(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("ok", namespace, gpu_pod_spec(1)))
    name = running_job_pod(cluster, namespace, "ok")
    result = {"status": "succeeded", "eval_loss": 0.4231, "note": 'quotes " and\nnewlines, ünïcode ✓'}
    message = json.dumps(result, ensure_ascii=False)
    p = finish_pod(
        cluster.kubeconfig, namespace, name, "succeeded", message=message, kubectl=cluster.kubectl_path
    )
    assert p is not None and p["status"]["phase"] == "Succeeded"
    t = terminated(p)
    assert t["exitCode"] == 0 and t["reason"] == "Completed"
    assert json.loads(t["message"]) == result  # termination-message round trip
    wait_until(lambda: job_condition(cluster, namespace, "ok", "Complete"), 30, "Job Complete")
    assert cluster.get("job", "ok", "-n", namespace)["status"]["succeeded"] == 1


def test_oomkilled_pod_fails_the_job(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("oom", namespace, gpu_pod_spec(1)))
    name = running_job_pod(cluster, namespace, "oom")
    p = finish_pod(cluster.kubeconfig, namespace, name, "oomkilled", kubectl=cluster.kubectl_path)
    assert p is not None and p["status"]["phase"] == "Failed"
    t = terminated(p)
    assert t["reason"] == "OOMKilled" and t["exitCode"] == 137
    assert not any(c["type"] == "DisruptionTarget" for c in p["status"]["conditions"])
    cond = wait_until(lambda: job_condition(cluster, namespace, "oom", "Failed"), 30, "Job Failed")
    assert cond["reason"] == "BackoffLimitExceeded"


def test_pod_failure_policy_on_exit_codes(cluster: Cluster, namespace: str) -> None:
    """exit 42 -> FailJob at once although backoffLimit would allow retries; the message sticks."""
    policy = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]},
            },
        ]
    }
    cluster.apply(job("pfp", namespace, gpu_pod_spec(1), backoffLimit=6, podFailurePolicy=policy))
    name = running_job_pod(cluster, namespace, "pfp")
    p = finish_pod(
        cluster.kubeconfig,
        namespace,
        name,
        "failed",
        exit_code=42,
        message='{"error": "dataset preflight failed"}',
        kubectl=cluster.kubectl_path,
    )
    assert p is not None
    t = terminated(p)
    assert (t["exitCode"], t["reason"], t["message"]) == (
        42,
        "Error",
        '{"error": "dataset preflight failed"}',
    )
    cond = wait_until(lambda: job_condition(cluster, namespace, "pfp", "Failed"), 30, "Job Failed")
    assert cond["reason"] == "PodFailurePolicy"


def test_failed_exit_code_counts_against_backoff(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("retry", namespace, gpu_pod_spec(1), backoffLimit=1))
    first = running_job_pod(cluster, namespace, "retry")
    finish_pod(cluster.kubeconfig, namespace, first, "failed", exit_code=3, kubectl=cluster.kubectl_path)
    second = running_job_pod(cluster, namespace, "retry", exclude={first})
    assert job_condition(cluster, namespace, "retry", "Failed") is None
    finish_pod(cluster.kubeconfig, namespace, second, "succeeded", kubectl=cluster.kubectl_path)
    wait_until(lambda: job_condition(cluster, namespace, "retry", "Complete"), 30, "Job Complete")
    status = cluster.get("job", "retry", "-n", namespace)["status"]
    assert (status["failed"], status["succeeded"]) == (1, 1)


@pytest.mark.parametrize("outcome", ["evicted", "preempted"])
def test_disruption_is_ignored_by_pod_failure_policy(cluster: Cluster, namespace: str, outcome: str) -> None:
    """Evicted / preempted pods carry DisruptionTarget: an Ignore rule retries them without
    counting a failure (backoffLimit 0 would otherwise fail the Job)."""
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    cluster.apply(job("disrupt", namespace, gpu_pod_spec(1), backoffLimit=0, podFailurePolicy=policy))
    first = running_job_pod(cluster, namespace, "disrupt")
    p = finish_pod(cluster.kubeconfig, namespace, first, outcome, kubectl=cluster.kubectl_path)
    if outcome == "evicted":
        assert p is not None and p["status"]["phase"] == "Failed" and p["status"]["reason"] == "Evicted"
        dt = [c for c in p["status"]["conditions"] if c["type"] == "DisruptionTarget"]
        assert dt and dt[0]["status"] == "True" and dt[0]["reason"] == "TerminationByKubelet"
    else:  # deleted: gone once the Job controller has dropped its finalizer
        assert p is None
    second = running_job_pod(cluster, namespace, "disrupt", exclude={first})
    assert job_condition(cluster, namespace, "disrupt", "Failed") is None
    finish_pod(cluster.kubeconfig, namespace, second, "succeeded", kubectl=cluster.kubectl_path)
    wait_until(lambda: job_condition(cluster, namespace, "disrupt", "Complete"), 30, "Job Complete")
    assert cluster.get("job", "disrupt", "-n", namespace)["status"].get("failed", 0) == 0


def test_running_pods_stay_running_until_deleted(cluster: Cluster, namespace: str) -> None:
    """Nothing finishes a pod by itself (kwok's default pod-complete stage is not used)."""
    cluster.apply(pod("idle", namespace, gpu_pod_spec(1), {"app": "idle"}))
    wait_for_pods(cluster.kubeconfig, namespace, "app=idle", "Running", kubectl=cluster.kubectl_path)
    time.sleep(3)
    assert cluster.get("pod", "idle", "-n", namespace)["status"]["phase"] == "Running"
    assert finish_pod(cluster.kubeconfig, namespace, "idle", "deleted", kubectl=cluster.kubectl_path) is None


def test_pods_can_finish_on_their_own(cluster: Cluster, namespace: str) -> None:
    """completion_annotations on a pod template: pods finish by themselves after a delay."""
    from kubetune_devcluster import completion_annotations

    spec = job("auto", namespace, gpu_pod_spec(1), completions=2, parallelism=2)
    spec["spec"]["template"]["metadata"]["annotations"] = completion_annotations(
        "succeeded", message="done", delay="1s"
    )
    cluster.apply(spec)
    wait_until(lambda: job_condition(cluster, namespace, "auto", "Complete"), 60, "Job Complete")


# ---- API machinery -----------------------------------------------------------------------


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.kubetune.io"},
    "spec": {
        "group": "e2e.kubetune.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minGpus": {"type": "integer"},
                                    "maxGpus": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minGpus <= self.maxGpus",
                                        "message": "minGpus must be <= maxGpus",
                                    },
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_cel_validation(cluster: Cluster, namespace: str) -> None:
    cluster.apply(CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.e2e.kubetune.io", "--timeout=30s", check=True
    )

    def widget(name: str, lo: int, hi: int) -> str:
        return json.dumps(
            {
                "apiVersion": "e2e.kubetune.io/v1",
                "kind": "Widget",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"minGpus": lo, "maxGpus": hi},
            }
        )

    # the API may need a moment to serve the new resource: retry the good object
    wait_until(
        lambda: cluster.kubectl("create", "-f", "-", input=widget("good", 1, 8)).returncode == 0,
        30,
        "the good Widget to be accepted",
    )
    bad = cluster.kubectl("create", "-f", "-", input=widget("bad", 8, 1))
    assert bad.returncode != 0
    assert "minGpus must be <= maxGpus" in bad.stderr


def test_pod_security_restricted_namespace(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
        check=True,
    )
    privileged = pod("priv", namespace, {"containers": [container(securityContext={"privileged": True})]})
    denied = cluster.kubectl("create", "-f", "-", input=json.dumps(privileged))
    assert denied.returncode != 0
    assert "violates PodSecurity" in denied.stderr and "restricted" in denied.stderr
    restricted = pod(
        "restricted",
        namespace,
        {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                container(
                    securityContext={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
                )
            ],
        },
    )
    ok = cluster.kubectl("create", "-f", "-", input=json.dumps(restricted))
    assert ok.returncode == 0, ok.stderr


def test_garbage_collection_follows_owner_references(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace, check=True)
    owner = cluster.get("configmap", "owner", "-n", namespace)
    owned = job("owned", namespace, gpu_pod_spec(1))
    owned["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    cluster.apply(owned)
    running_job_pod(cluster, namespace, "owned")
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, check=True)

    def none_left(*what: str) -> bool:
        r = cluster.kubectl("get", *what, "-n", namespace, "-o", "name", "--ignore-not-found")
        return r.returncode == 0 and not r.stdout.strip()

    wait_until(lambda: none_left("job", "owned"), 60, "the owned Job to be garbage collected")
    wait_until(lambda: none_left("pods", "-l", "job-name=owned"), 60, "the Job's pods to be deleted")


def test_service_account_tokens(cluster: Cluster, namespace: str) -> None:
    wait_until(
        lambda: cluster.kubectl("get", "sa", "default", "-n", namespace).returncode == 0,
        30,
        "the default service account",
    )
    tok = cluster.kubectl("create", "token", "default", "-n", namespace, check=True).stdout.strip()
    assert tok.count(".") == 2  # a signed JWT
    # a token-only client (no client certificate, which would win over the token)
    who = subprocess.run(
        [
            str(cluster.kubectl_path),
            "--kubeconfig=/dev/null",
            f"--server={cluster.server}",
            f"--certificate-authority={cluster.pki.ca_crt}",
            f"--token={tok}",
            "auth",
            "whoami",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:default"
    )


def test_helm_installs_a_chart(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: mini\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-cm
        data:
          kube: {{ .Capabilities.KubeVersion.Version | quote }}
        """)
    )
    r = subprocess.run(
        [str(cluster.helm), "install", "mini", str(chart), "-n", namespace, "--wait"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    cm = cluster.get("configmap", "mini-cm", "-n", namespace)
    assert cm["data"]["kube"].startswith("v1.")
