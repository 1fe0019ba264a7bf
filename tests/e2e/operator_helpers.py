"""Helpers for the operator's e2e tests: the operator as a `kubetune operator` subprocess against the
local control plane, manifests, the trainer's channel (progress annotation, termination message)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubetune.api.status import DataSummary
from kubetune.api.trainer_contract import TrainerResult
from kubetune_devcluster import Cluster, finish_pod, wait_for_pods, wait_until

REPO = Path(__file__).resolve().parents[2]
TRAINER_CLUSTER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
    "metadata": {"name": "kubetune-trainer"},
    # the trainer annotates its own pod (progress); nothing else (the chart's admission policy narrows
    # it to its own pod and that annotation)
    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}],
}


def install_crds_and_trainer_role(cluster: Cluster) -> None:
    """What the operator needs in the cluster before it starts: its CRDs (established) and the
    trainer's ClusterRole."""
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
    cluster.apply(TRAINER_CLUSTER_ROLE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`kubetune operator` (all namespaces, or `-n NS` each): the command the chart runs, which builds
    the operator with kubetune.controller.app.build_operator from KUBETUNE_* and its flags."""

    def __init__(self, cluster: Cluster, log_dir: Path, *, webhook: bool = False,
                 namespaces: tuple[str, ...] = (), **env: str) -> None:
        self.cluster = cluster
        self.scope = [f"--namespace={n}" for n in namespaces]
        self.log_dir = log_dir
        self.metrics_port = free_port()
        self.webhook_port = free_port()
        self.env = {
            **cluster.env(),
            "PYTHONPATH": str(REPO / "operator"),
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
            "KUBETUNE_RESYNC_SECONDS": "1",
            "KUBETUNE_PROGRESS_MIN_INTERVAL": "1",
            "KUBETUNE_UNSCHEDULABLE_GRACE": "5",
            "KUBETUNE_IMAGE_PULL_GRACE": "5",
            "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:e2e",
            # the one 32-CPU kwok node holds 64 of these (4 CPUs each, the default, would fit only 8:
            # twenty jobs at once would wait for CPUs past the 5 s unschedulable grace)
            "KUBETUNE_PREFLIGHT_RESOURCES": json.dumps({"requests": {"cpu": "500m", "memory": "1Gi"},
                                                        "limits": {"cpu": "2", "memory": "2Gi"}}),
            **env,
        }
        if webhook:
            self.env.update({"KUBETUNE_WEBHOOK": "true", "KUBETUNE_WEBHOOK_PORT": str(self.webhook_port),
                             "KUBETUNE_WEBHOOK_HOST": "127.0.0.1", "KUBETUNE_WEBHOOK_ADDR": "127.0.0.1"})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from kubetune.cli import main; sys.exit(main())", "operator",
             *self.scope, "--liveness="],  # ready when /metrics answers
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        wait_until(self._metrics_up, timeout=60, what="operator /metrics")

    def _metrics_up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}; see {self.log_dir}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2):
                return True
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def ftj(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A small FineTuneJob with hf:// and s3:// sources (no PVC needed on the fake nodes)."""
    base: dict[str, Any] = {
        "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "architecture": "smollm2-135m"},
        "method": "qlora",
        "dataset": {"uri": "s3://bucket/train.jsonl", "format": "instruction", "minExamples": 10},
        "training": {"maxSteps": 200, "maxSeqLength": 256},
        "resources": {"gpus": 1, "gpuMemory": "80Gi"},
        "evaluation": {"goldenDataset": {"uri": "s3://bucket/golden.jsonl"},
                       "gates": [{"metric": "golden.accuracy", "op": ">=", "threshold": 0.5}]},
        "output": {"uri": "s3://bucket/out/" + name},
        "backoffLimit": 0,
    }
    base.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": base}


def pa(name: str, namespace: str, ref: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "fineTuneJobRef": {"name": ref}, "method": "dpo",
        "dataset": {"uri": "s3://bucket/prefs.jsonl", "format": "preference", "minExamples": 10},
        "training": {"maxSteps": 30, "maxSeqLength": 256},
        "resources": {"gpuMemory": "80Gi"},
        "output": {"uri": "s3://bucket/out/" + name},
        "backoffLimit": 0,
    }
    base.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "PreferenceAlignment",
            "metadata": {"name": name, "namespace": namespace}, "spec": base}


def get_cr(cluster: Cluster, kind: str, ns: str, name: str) -> dict[str, Any]:
    return cluster.get(kind.lower() + ".kubetune.io", name, "-n", ns)


def wait_phase(cluster: Cluster, kind: str, ns: str, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_cr(cluster, kind, ns, name)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    try:
        return wait_until(check, timeout=timeout, what=f"{kind} {ns}/{name} in {phases}")  # type: ignore[no-any-return]
    except TimeoutError as e:
        st = (get_cr(cluster, kind, ns, name).get("status") or {})
        raise TimeoutError(f"{e}; status: {json.dumps({k: st.get(k) for k in ('phase', 'reason', 'message')})}") from e


def trainer_pods(cluster: Cluster, ns: str, name: str, phase: str = "Running", count: int = 1,
                 timeout: float = 60) -> list[dict[str, Any]]:
    return wait_for_pods(cluster.kubeconfig, ns, f"kubetune.io/job={name},kubetune.io/component=trainer",
                         phase=phase, count=count, timeout=timeout, kubectl=cluster.kubectl_path)


def preflight_pod(cluster: Cluster, ns: str, name: str, phase: str = "Running", timeout: float = 60) -> dict[str, Any]:
    (pod,) = wait_for_pods(cluster.kubeconfig, ns, f"kubetune.io/job={name},kubetune.io/component=preflight",
                           phase=phase, count=1, timeout=timeout, kubectl=cluster.kubectl_path)
    return pod


DATA_OK = TrainerResult(outcome="succeeded", reason="Succeeded", message="1,000 usable examples (950 train, 50 validation)",
                        data=DataSummary(examples=1000, train=950, validation=50, invalid=0, duplicates=0))


def pass_preflight(cluster: Cluster, ns: str, name: str, result: TrainerResult = DATA_OK) -> dict[str, Any]:
    """What the data preflight's pod does when the data is ok: exit 0 with its result; returns the pod."""
    pod = preflight_pod(cluster, ns, name)
    finish(cluster, ns, pod["metadata"]["name"], "succeeded", result=result)
    return pod


def gpu_requests(cluster: Cluster, ns: str) -> list[str]:
    """Jobs and pods in `ns` that request a GPU, by kind/name."""
    found = []
    for kind in ("jobs", "pods"):
        for obj in cluster.get(kind, "-n", ns)["items"]:
            spec = obj["spec"]["template"]["spec"] if kind == "jobs" else obj["spec"]
            if "nvidia.com/gpu" in json.dumps([c.get("resources") for c in spec["containers"]]):
                found.append(f"{kind}/{obj['metadata']['name']}")
    return found


def report_progress(cluster: Cluster, ns: str, pod: str, **progress: Any) -> None:
    """What the trainer does: patch the progress annotation on its own pod."""
    cluster.kubectl("annotate", "--overwrite", "-n", ns, f"pod/{pod}",
                    f"kubetune.io/progress={json.dumps(progress)}", check=True)


def finish(cluster: Cluster, ns: str, pod: str, outcome: str = "succeeded", *, exit_code: int | None = None,
           result: TrainerResult | None = None) -> None:
    """What the trainer's end looks like: exit code + TrainerResult JSON as termination message."""
    finish_pod(cluster.kubeconfig, ns, pod, outcome, exit_code,
               result.termination_message() if result is not None else None, kubectl=cluster.kubectl_path)


def children(cluster: Cluster, ns: str, name: str) -> dict[str, list[str]]:
    out = {}
    for kind in ("jobs", "configmaps", "services"):
        items = cluster.get(kind, "-n", ns, "-l", f"kubetune.io/job={name}")["items"]
        out[kind] = [i["metadata"]["name"] for i in items]
    return out


def wait_deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def sa_kubeconfig(cluster: Cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/sa` (a TokenRequest, 1 h)."""
    import yaml

    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h", check=True).stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": cluster.server,
                                                  "certificate-authority": str(cluster.pki.ca_crt)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}]}))
    return path
