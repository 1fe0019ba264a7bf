"""Fixtures for the real-node suite: the local control plane with a real kubelet node, the operator
and trainer images built here (`kubetune dev images build`) and loaded into the node's containerd,
the Helm chart installed with them (the operator runs in a pod), and local PersistentVolumes that
the tests fill with a model and data.

Nothing is simulated: trainer pods train on the node's CPU, report through their own channel and
end as the kernel and the kubelet say. Needs root (the cluster runs in a network namespace of its
own) and, on a cold cache, builds the node's binaries and both images first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
for _src in (REPO / "operator", REPO / "cluster"):
    if str(_src) not in sys.path:
        sys.path.insert(0, str(_src))

from kubetune_devcluster import Cluster, ensure_binaries, wait_until  # noqa: E402
from kubetune_devcluster.node import NODE_NAME  # noqa: E402

CHART = REPO / "charts" / "kubetune"
TRAINER_UID = 65532
RELEASE = "kubetune"
RELEASE_NS = "kubetune-system"


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the real-node suite needs root: the cluster runs in a network namespace of its own")
    reuse = os.environ.get("KUBETUNE_REALNODE_CLUSTER_DIR")  # one started with `kubetune dev cluster up --real-node`
    if reuse:
        c = Cluster.attach(reuse)
        c.check_alive()
        yield c
        return
    ensure_binaries()
    workdir = tmp_path_factory.mktemp("realnode")
    t0 = time.monotonic()  # docs/kind.md, part A: the same command
    up = subprocess.run([sys.executable, "-m", "kubetune.cli", "dev", "cluster", "up", "--real-node", "--dir",
                         str(workdir)], capture_output=True, text=True, timeout=600, env=_cli_env())
    assert up.returncode == 0, up.stderr
    c = Cluster.attach(workdir)
    print(f"\nkubetune dev cluster up --real-node: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    try:
        yield c
    finally:
        c.stop_and_report()


@pytest.fixture(scope="session")
def images(real_cluster: Cluster) -> dict[str, str]:
    """`kubetune dev images build --dir DIR`: both images built (or taken from the cache) and loaded
    into the node; its last two lines are `operator=REF` and `trainer=REF`. KUBETUNE_REALNODE_IMAGES
    ("operator=REF,trainer=REF") names images already loaded instead (a cluster reused as above)."""
    if os.environ.get("KUBETUNE_REALNODE_IMAGES"):
        return dict(x.split("=", 1) for x in os.environ["KUBETUNE_REALNODE_IMAGES"].split(","))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kubetune.cli", "dev", "images", "build", "--dir",
                           str(real_cluster.workdir)], capture_output=True, text=True, timeout=3600,
                          env=_cli_env())
    assert proc.returncode == 0, f"image build failed:\n{proc.stderr[-6000:]}"
    lines = proc.stdout.strip().splitlines()[-2:]
    refs = dict(line.split("=", 1) for line in lines)
    assert set(refs) == {"operator", "trainer"}, proc.stdout
    print(f"\nimages ready in {time.monotonic() - t0:.0f}s: {refs}", file=sys.stderr)
    return refs


def _cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{REPO / 'operator'}{os.pathsep}{REPO / 'cluster'}")


def _split_ref(ref: str) -> dict[str, str]:
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return {"repository": repo, "digest": digest}
    repo, tag = ref.rsplit(":", 1)
    return {"repository": repo, "tag": tag}


def helm(cluster: Cluster, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(cluster.helm), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout, env=cluster.env())
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


@pytest.fixture(scope="session")
def operator_release(real_cluster: Cluster, images: dict[str, str]) -> Iterator[str]:
    """The chart installed with the images built here: the operator runs in a pod on the real node,
    the webhook is served from that pod through the chart's Service and certificate."""
    # docs/kind.md, part A: the same command
    op, tr = _split_ref(images["operator"]), _split_ref(images["trainer"])
    args = ["install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace", "--wait",
            "--set", f"image.repository={op['repository']}", "--set", f"image.tag={op['tag']}",
            "--set", "image.pullPolicy=Never",
            "--set", f"trainer.image.repository={tr['repository']}", "--set", f"trainer.image.tag={tr['tag']}",
            "--set", "trainer.image.pullPolicy=Never",
            "--set-string", "trainer.preflight.resources.requests.cpu=1",
            "--set-string", "trainer.preflight.resources.limits.cpu=1500m",
            "--set", "trainer.progressIntervalSeconds=1", "--set", "trainer.unschedulableGraceSeconds=30",
            "--timeout", "5m"]
    t0 = time.monotonic()
    try:
        helm(real_cluster, *args, timeout=400)
    except BaseException:
        _dump_operator(real_cluster)
        raise
    print(f"\nhelm install --wait: {time.monotonic() - t0:.0f}s", file=sys.stderr)
    yield RELEASE_NS
    _dump_operator(real_cluster)
    helm(real_cluster, "uninstall", RELEASE, "--namespace", RELEASE_NS, check=False)


def _dump_operator(cluster: Cluster) -> None:
    out = cluster.kubectl("-n", RELEASE_NS, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=80")
    print(f"\n--- operator log (tail)\n{out.stdout}{out.stderr}", file=sys.stderr)


@dataclass
class Volume:
    """A local PersistentVolume bound to a claim: `host` is its folder on the node (this machine)."""

    claim: str
    host: Path

    def uri(self, path: str) -> str:
        return f"pvc://{self.claim}/{path}"


def make_volume(cluster: Cluster, namespace: str, claim: str, host: Path, size: str = "5Gi",
                access: str = "ReadWriteOnce") -> Volume:
    """A `local` PV pinned to the real node, pre-bound to `claim` in `namespace`; the folder belongs
    to the trainer's uid (pods run as 65532 and local volumes get no ownership change)."""
    host.mkdir(parents=True, exist_ok=True)
    shutil.chown(host, TRAINER_UID, TRAINER_UID)
    pv = f"{namespace}-{claim}"[:63]
    cluster.apply(
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": size}, "accessModes": [access],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "claimRef": {"namespace": namespace, "name": claim},
                  "local": {"path": str(host)},
                  "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": [access], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": size}}}},
    )
    return Volume(claim, host)


def own_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), TRAINER_UID, TRAINER_UID)
    os.chown(path, TRAINER_UID, TRAINER_UID)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def namespace(real_cluster: Cluster, operator_release: str, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-")
    name = f"rn-{slug}-{uuid.uuid4().hex[:5]}"
    real_cluster.kubectl("create", "namespace", name, check=True)
    # what the chart's users do for the namespaces their jobs run in: Pod Security "restricted"
    real_cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted", check=True)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false")


def apply_yaml(cluster: Cluster, *objects: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """kubectl apply, returning the process (the webhook's refusal is in its stderr)."""
    return cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def get_cr(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get(kind.lower(), name, "-n", namespace)


def wait_phase(cluster: Cluster, kind: str, namespace: str, name: str, phases: set[str], timeout: float,
               on_poll: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Poll the CR until its phase is one of `phases`; `on_poll` sees every status on the way."""

    def done() -> dict[str, Any] | None:
        cr = get_cr(cluster, kind, namespace, name)
        if on_poll is not None:
            on_poll(cr.get("status") or {})
        return cr if (cr.get("status") or {}).get("phase") in phases else None

    try:
        return wait_until(done, timeout=timeout, what=f"{kind} {namespace}/{name} in {sorted(phases)}", interval=1)
    except TimeoutError:
        print(json.dumps(get_cr(cluster, kind, namespace, name).get("status"), indent=1), file=sys.stderr)
        print(cluster.kubectl("-n", namespace, "get", "pods,jobs", "-o", "wide").stdout, file=sys.stderr)
        print(cluster.kubectl("-n", namespace, "logs", "-l", "kubetune.io/job", "--tail=40").stdout, file=sys.stderr)
        _dump_operator(cluster)
        raise
