"""Kueue (sigs.k8s.io/kueue, the version in cluster/versions.env) on the local control plane: its
controller-manager built from the Go module by cluster/build-kueue.sh, its CRDs and webhook
configurations read from that module in the Go module cache (nothing of Kueue is copied into this
repository), run as a process next to the control plane.

    kq = Kueue.start(cluster, workdir)     # CRDs, webhooks, the manager; returns when its webhooks answer
    kq.apply_queues(gpu_quota=1)            # ResourceFlavor `h100`, ClusterQueue `gpu`, LocalQueue per namespace
    kq.stop()                               # and its webhook configurations are deleted

What differs from Kueue's release manifests, and why:
- the manager runs as a process with the admin kubeconfig, not as a Deployment with its RBAC;
- Kueue manages its own webhook certificate (internalCertManagement, as released): it writes it to
  the Secret `kueue-webhook-server-cert` and injects its CA into the webhook configurations and
  the CRDs' conversion webhooks. In a cluster the Secret is mounted into the pod's cert dir; here
  `_sync_certificate` copies it there, as the kubelet would.
- the API server reaches the webhooks through the Service `kueue-webhook-service`, of type
  ExternalName `localhost` (the API server resolves an ExternalName Service to that host and the
  webhook's port; the TLS server name stays `kueue-webhook-service.kueue-system.svc`, the name in
  Kueue's certificate): the manager listens on 127.0.0.1 only.
- only the webhooks of the kinds this setup uses are registered: Kueue's own (kueue.x-k8s.io) and
  batch/v1 Jobs (the one enabled integration); the Pod/Deployment/... integrations are off.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .binaries import cache_root, cluster_dir, read_versions
from .cluster import Cluster, ClusterError, wait_until

MODULE = "sigs.k8s.io/kueue"
NAMESPACE = "kueue-system"
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
WEBHOOK_CONFIGURATIONS = ("kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration")
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}  # Kueue's own kinds and batch/v1 Jobs
GPU_FLAVOR = "h100"
CLUSTER_QUEUE = "gpu"
H100_LABELS = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # kubetune_devcluster.nodes.h100_node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def version() -> str:
    return read_versions()["KUEUE_VERSION"]


def ensure_kueue() -> Path:
    """The controller-manager's binary, built on a cold cache (cluster/build-kueue.sh)."""
    out = subprocess.run(["bash", str(cluster_dir() / "build-kueue.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise ClusterError(f"cluster/build-kueue.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def module_dir() -> Path:
    """Kueue's module in the shared Go module cache (cluster/go-env.sh), downloaded if missing."""
    cache = cache_root()
    env = {**os.environ, "GOMODCACHE": str(cache / "go" / "mod"), "GOFLAGS": "", "GOTOOLCHAIN": "auto"}
    out = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{version()}"], capture_output=True,
                         text=True, env=env, cwd=str(cache))
    if out.returncode != 0:
        raise ClusterError(f"go mod download {MODULE}@{version()} failed: {out.stderr[-2000:]}")
    return Path(json.loads(out.stdout)["Dir"])


def _webhook_ref(port: int, path: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE, "port": port}
    if path:
        ref["path"] = path
    return ref


def crds(module: Path, port: int) -> list[dict[str, Any]]:
    """The CRDs of config/components/crd, with the conversion webhooks its kustomization enables."""
    crd_dir = module / "config" / "components" / "crd"
    kust = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
    objs = {}
    for rel in kust["resources"]:
        obj = yaml.safe_load((crd_dir / rel).read_text())
        objs[obj["metadata"]["name"]] = obj
    for p in kust.get("patches") or []:
        patch = yaml.safe_load((crd_dir / p["path"]).read_text())
        conversion = patch["spec"]["conversion"]
        cc = conversion["webhook"]["clientConfig"]
        cc["service"] = _webhook_ref(port, cc["service"].get("path"))
        objs[patch["metadata"]["name"]]["spec"]["conversion"] = conversion
    return list(objs.values())


def webhook_configurations(module: Path, port: int) -> list[dict[str, Any]]:
    """config/components/webhook/manifests.yaml as released (namePrefix `kueue-`), for the kinds in
    WEBHOOK_GROUPS, pointing at the Service `kueue-webhook-service` on `port`."""
    docs = list(yaml.safe_load_all((module / "config" / "components" / "webhook" / "manifests.yaml").read_text()))
    out = []
    for doc in docs:
        if not doc:
            continue
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        kept = []
        for wh in doc["webhooks"]:
            groups = {g for rule in wh.get("rules") or [] for g in rule.get("apiGroups") or []}
            if groups and groups <= WEBHOOK_GROUPS:
                wh["clientConfig"]["service"] = _webhook_ref(port, wh["clientConfig"]["service"].get("path"))
                kept.append(wh)
        doc["webhooks"] = kept
        out.append(doc)
    assert {d["metadata"]["name"] for d in out} == set(WEBHOOK_CONFIGURATIONS), [d["metadata"]["name"] for d in out]
    return out


def manager_config(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},  # off: the tests read Kueue's objects, not its metrics
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": WEBHOOK_SERVICE,
                                   "webhookSecretName": WEBHOOK_SECRET},
        "manageJobsWithoutQueueName": False,  # only Jobs labelled kueue.x-k8s.io/queue-name
        "integrations": {"frameworks": ["batch/job"]},
        # the visibility API is an aggregated API server of its own, not used here
        "featureGates": {"VisibilityOnDemand": False},
    }


class Kueue:
    """A running Kueue controller-manager for `cluster`."""

    def __init__(self, cluster: Cluster, workdir: Path, proc: subprocess.Popen[bytes], health_port: int) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.proc = proc
        self.health_port = health_port
        self.startup_seconds = 0.0  # CRDs and webhooks applied, manager started, ready (the build excluded)

    @property
    def log(self) -> Path:
        return self.workdir / "kueue.log"

    @classmethod
    def start(cls, cluster: Cluster, workdir: Path, *, timeout: float = 120) -> Kueue:
        binary = ensure_kueue()
        module = module_dir()
        t0 = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        cert_dir = workdir / "certs"
        cert_dir.mkdir(exist_ok=True)
        webhook_port, health_port = _free_port(), _free_port()
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "localhost"}},
        )
        # server-side: the CRDs are too big for the last-applied annotation
        definitions = crds(module, webhook_port)
        cluster.apply(*definitions, server_side=True)
        for c in definitions:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{c['metadata']['name']}", "--timeout=60s",
                            check=True)
        cluster.apply(*webhook_configurations(module, webhook_port), server_side=True)
        cfg = workdir / "kueue-config.yaml"
        cfg.write_text(yaml.safe_dump(manager_config(webhook_port, health_port, cert_dir)))
        log = open(workdir / "kueue.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([str(binary), f"--config={cfg}", "--zap-log-level=2"],
                                env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        kq = cls(cluster, workdir, proc, health_port)
        try:
            kq._sync_certificate(cert_dir, timeout)
            kq._until(kq._ready, timeout, "Kueue /readyz")
            kq.startup_seconds = time.monotonic() - t0
        except BaseException:
            print(kq.log_tail(60))
            kq.stop()
            raise
        return kq

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise ClusterError(f"kueue exited {self.proc.returncode}:\n{self.log_tail(40)}")

    def _until(self, probe: Any, timeout: float, what: str) -> Any:
        """wait_until, but fails at once when the manager has exited."""
        def check() -> Any:
            return probe() if self.proc.poll() is None else True

        got = wait_until(check, timeout=timeout, what=what)
        self._alive()
        return got

    def _sync_certificate(self, cert_dir: Path, timeout: float) -> None:
        """What the kubelet does for the Secret Kueue's pod mounts: its keys as files in the cert dir,
        once Kueue has written its certificate there."""
        def written() -> dict[str, str] | None:
            data = self.cluster.get("secret", WEBHOOK_SECRET, "-n", NAMESPACE).get("data") or {}
            return data if data.get("tls.crt") and data.get("tls.key") else None

        data = self._until(written, timeout, "Kueue's webhook certificate in its Secret")
        for key, value in data.items():
            tmp = cert_dir / f".{key}.tmp"
            tmp.write_bytes(base64.b64decode(value))
            os.chmod(tmp, 0o600)
            tmp.replace(cert_dir / key)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def apply_queues(self, namespaces: list[str], *, gpu_quota: int, preemption: bool = True) -> None:
        """ResourceFlavor `h100` (the H100 kwok nodes), ClusterQueue `gpu` with `gpu_quota` GPUs (CPU
        and memory plentiful: every resource a pod requests must be covered), LocalQueue `gpu` in each
        namespace. With `preemption`, a pending workload preempts lower-priority ones in the queue.
        Retried while Kueue's webhooks come up (they validate these objects)."""
        queue: dict[str, Any] = {
            "namespaceSelector": {},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [{
                "name": GPU_FLAVOR, "resources": [
                    {"name": "cpu", "nominalQuota": "1000"},
                    {"name": "memory", "nominalQuota": "10Ti"},
                    {"name": "nvidia.com/gpu", "nominalQuota": str(gpu_quota)}]}]}],
        }
        if preemption:
            queue["preemption"] = {"withinClusterQueue": "LowerPriority"}
        objs = [
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": GPU_FLAVOR},
             "spec": {"nodeLabels": H100_LABELS}},
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
             "spec": queue},
            *({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
               "metadata": {"name": CLUSTER_QUEUE, "namespace": ns}, "spec": {"clusterQueue": CLUSTER_QUEUE}}
              for ns in namespaces),
        ]

        def applied() -> bool:
            doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
            return self.cluster.kubectl("apply", "-f", "-", input=doc).returncode == 0

        self._until(applied, 60, "Kueue's queues applied (through its webhooks)")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def stop(self, drain_timeout: float = 60) -> None:
        """Stop the manager and delete its webhook configurations (failurePolicy Fail: with the manager
        gone they would refuse every Job). First, while it runs, let it release what carries its
        finalizers: the Workloads of Jobs being deleted (else their namespaces would stay Terminating),
        then the queues and the flavor."""
        if self.proc.poll() is None:
            try:
                wait_until(lambda: not self.cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-A", "-o",
                                                            "name").stdout.strip(),
                           timeout=drain_timeout, what="no Kueue Workloads left")
                self.cluster.kubectl("delete", "localqueues.kueue.x-k8s.io", "-A", "--all", "--timeout=30s")
                self.cluster.kubectl("delete", f"clusterqueue.kueue.x-k8s.io/{CLUSTER_QUEUE}",
                                     f"resourceflavor.kueue.x-k8s.io/{GPU_FLAVOR}", "--ignore-not-found",
                                     "--timeout=30s")
            except TimeoutError as exc:  # stop anyway: the caller's namespaces may stay Terminating
                print(f"kueue: {exc}")
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for kind, name in zip(("mutatingwebhookconfiguration", "validatingwebhookconfiguration"),
                              WEBHOOK_CONFIGURATIONS, strict=True):
            self.cluster.kubectl("delete", kind, name, "--ignore-not-found")
