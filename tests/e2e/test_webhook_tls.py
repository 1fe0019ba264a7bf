"""The webhook survives a GitOps sync: the chart rendered with `helm template` (Argo CD's way, no
`lookup`), applied twice with `kubectl apply` as a sync does, and the operator — run with the
Deployment's settings and the chart's ServiceAccount — issues its own certificate into the
chart's empty Secret and sets the caBundle. FineTuneJobs are admitted through the webhook, still
after another sync, and after the certificate is replaced under the running operator (no restart).

One local stand-in: the local control plane has no kube-proxy, so the API server cannot reach the
webhook Service's ClusterIP; the rendered configuration's `clientConfig.service` is replaced by
`url: https://127.0.0.1:<port>/<path>` (and 127.0.0.1 added to the certificate's names). Everything
else is the rendered chart as it is.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from operator_helpers import REPO, free_port, ftj, sa_kubeconfig

from kubetune_devcluster import Cluster, wait_until

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "kubetune"
RELEASE = "ktgo"


@dataclass
class Synced:
    namespace: str  # the release's
    jobs: str  # the watched one
    manifest: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def config(self) -> str:
        return f"{RELEASE}-kubetune-{self.namespace}"

    @property
    def secret(self) -> str:
        return f"{RELEASE}-kubetune-webhook-tls"


def render(cluster: Cluster, namespace: str, jobs: str) -> str:
    proc = subprocess.run([str(cluster.helm), "template", RELEASE, str(CHART), "--namespace", namespace,
                           "--set-json", f'watchNamespaces=["{jobs}"]', "--set", "crds.enabled=false",
                           "--set", "trainer.serviceAccount.createInJobNamespaces=false"],
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout


def local_webhook(manifest: str, port: int) -> str:
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    for d in docs:
        if d["kind"] == "ValidatingWebhookConfiguration":
            for hook in d["webhooks"]:
                path = hook["clientConfig"].pop("service")["path"]
                hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{path}"
    return yaml.safe_dump_all(docs)


def sync(cluster: Cluster, manifest: Path) -> str:
    """What an Argo CD sync does with the rendered manifests (client-side apply)."""
    return str(cluster.kubectl("apply", "-f", str(manifest), check=True).stdout)


@pytest.fixture
def synced(cluster: Cluster, tmp_path: Path) -> Iterator[Synced]:
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
    suffix = uuid.uuid4().hex[:6]
    ns, jobs = f"kt-gitops-{suffix}", f"kt-gitops-jobs-{suffix}"
    for n in (ns, jobs):
        cluster.kubectl("create", "namespace", n, check=True)
    rendered = render(cluster, ns, jobs)
    assert rendered == render(cluster, ns, jobs), "helm template must render the same bytes every time"
    port = free_port()
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(local_webhook(rendered, port))
    sync(cluster, manifest)
    second = sync(cluster, manifest)
    changed = [line for line in second.splitlines() if not line.endswith(" unchanged")]
    assert not changed, f"a second sync changed objects: {changed}"

    deploy = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update({
        "KUBECONFIG": str(sa_kubeconfig(cluster, ns, deploy["spec"]["template"]["spec"]["serviceAccountName"],
                                           tmp_path / "kubeconfig")),
        "PYTHONPATH": str(REPO / "operator"), "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_WEBHOOK_PORT": str(port), "KUBETUNE_WEBHOOK_ADDR": "127.0.0.1", "KUBETUNE_WEBHOOK_HOST": "127.0.0.1",
        "KUBETUNE_WEBHOOK_DNS_NAMES": env["KUBETUNE_WEBHOOK_DNS_NAMES"] + ",127.0.0.1",
        "KUBETUNE_WEBHOOK_CERT_CHECK_SECONDS": "1", "KUBETUNE_LEADER_IDENTITY": "op-0"})
    health = free_port()
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from kubetune.cli import main; sys.exit(main())",
                                 *container["command"][1:], f"--liveness=http://127.0.0.1:{health}/healthz"],
                                env={**os.environ, **cluster.env(), **env}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(REPO))

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"operator exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=60, what="operator health endpoint")
        yield Synced(ns, jobs, manifest, port, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(log.read_text()[-3000:])
        cluster.kubectl("delete", "-f", str(manifest), "--wait=false")
        for n in (ns, jobs):
            cluster.kubectl("delete", "namespace", n, "--wait=false")


def ca_bundles(cluster: Cluster, s: Synced) -> set[str]:
    return {h["clientConfig"].get("caBundle", "") for h in cluster.get("validatingwebhookconfiguration", s.config)["webhooks"]}


def admitted(cluster: Cluster, s: Synced, name: str) -> None:
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(ftj(name, s.jobs)))
    assert proc.returncode == 0, proc.stderr


def test_a_gitops_sync_keeps_the_webhook_admitting(cluster: Cluster, synced: Synced) -> None:
    s = synced
    secret = cluster.get("secret", s.secret, "-n", s.namespace)
    bundle = base64.b64decode(secret["data"]["ca.crt"]).decode()
    assert ca_bundles(cluster, s) == {secret["data"]["ca.crt"]}
    assert bundle.count("BEGIN CERTIFICATE") == 1
    admitted(cluster, s, "first")
    # the webhook is in the path: a job that cannot fit is refused with the plan's message
    too_big = ftj("too-big", s.jobs, method="full", baseModel={"uri": "hf://meta-llama/Meta-Llama-3-70B",
                                                                 "architecture": "llama-3-70b"})
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(too_big))
    assert refused.returncode != 0 and "denied the request" in refused.stderr, refused.stderr

    # another sync: the operator's certificate and caBundle stay (they are not in the manifests)
    out = sync(cluster, s.manifest)
    assert all(line.endswith(" unchanged") for line in out.splitlines()), out
    assert cluster.get("secret", s.secret, "-n", s.namespace)["data"] == secret["data"]
    assert ca_bundles(cluster, s) == {secret["data"]["ca.crt"]}
    admitted(cluster, s, "second")

    # the certificate replaced under the running operator (here: the Secret emptied, as a rotation
    # by hand would): it issues a new CA and certificate, serves them and sets the new caBundle
    pid = s.proc.pid
    cluster.kubectl("patch", "secret", s.secret, "-n", s.namespace, "--type=json",
                    "-p", '[{"op": "remove", "path": "/data"}]', check=True)
    wait_until(lambda: ca_bundles(cluster, s) - {secret["data"]["ca.crt"], ""}, timeout=30,
               what="a new caBundle")
    new = cluster.get("secret", s.secret, "-n", s.namespace)["data"]
    assert new["ca.crt"] != secret["data"]["ca.crt"] and ca_bundles(cluster, s) == {new["ca.crt"]}
    # kopf re-reads the files every second (KUBETUNE_WEBHOOK_CERT_CHECK_SECONDS) and restarts its server
    wait_until(lambda: cluster.kubectl("apply", "-f", "-", input=json.dumps(ftj("third", s.jobs))).returncode == 0,
               timeout=30, what="the renewed certificate served")
    assert s.proc.poll() is None and s.proc.pid == pid  # no restart
    log = s.log.read_text()
    assert len(re.findall(r"webhook certificate: issued", log)) == 2, log[-3000:]
    names = cluster.kubectl("get", "finetunejobs", "-n", s.jobs, "-o", "name").stdout.split()
    assert sorted(names) == ["finetunejob.kubetune.io/first", "finetunejob.kubetune.io/second",
                             "finetunejob.kubetune.io/third"]
