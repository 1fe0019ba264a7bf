"""The Helm chart on the local control plane: it installs, every object it renders is accepted by a
real API server, and its RBAC grants exactly what the operator and the trainer need.

The chart's Deployment is not expected to run a real container here (kwok simulates pods); the
operator e2e tests run the operator as a process instead. What is proved here is the chart's part:
`helm install` succeeds, and `kubectl auth can-i --as=system:serviceaccount:...` (plus a few real
requests made as the ServiceAccounts) shows the RBAC works as written — the verbs the operator
needs yes; Secrets, pods/exec, deleting CRDs, binding other roles: no.

Two releases, so the session's other tests are never disturbed: one watching every namespace with
the webhook off (a Fail-policy webhook with no running pod would refuse every FineTuneJob in the
cluster), one watching a single namespace with the webhook on (scoped to that namespace).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import REPO, ftj, sa_kubeconfig

from kubetune_devcluster import Cluster, wait_until

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "kubetune"
THIRD_PARTY_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}  # their CRDs are not on the local cluster


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(cluster.helm), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=300, env=cluster.env())
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


@dataclass
class Release:
    name: str
    namespace: str
    values: dict[str, Any]

    @property
    def operator_sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-kubetune"

    def trainer_sa(self, namespace: str) -> str:
        return f"system:serviceaccount:{namespace}:kubetune-trainer"


def install(cluster: Cluster, name: str, values: dict[str, Any]) -> Release:
    ns = f"kt-chart-{uuid.uuid4().hex[:6]}"
    args = ["install", name, str(CHART), "--namespace", ns, "--create-namespace"]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    helm(cluster, *args)
    return Release(name, ns, values)


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)


def uninstall(cluster: Cluster, release: Release) -> None:
    helm(cluster, "uninstall", release.name, "--namespace", release.namespace, check=False)
    cluster.kubectl("delete", "namespace", release.namespace, "--wait=false")


def new_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name, check=True)
    return name


def can_i(cluster: Cluster, user: str, verb: str, resource: str, *, namespace: str | None = None,
          subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args += ["--all-namespaces"] if namespace is None else ["-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    proc = cluster.kubectl(*args)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return answer == "yes"


@pytest.fixture(scope="module")
def job_ns(cluster: Cluster) -> Iterator[str]:
    """A namespace where jobs would run, not known to the chart at install time."""
    ns = new_namespace(cluster, "kt-jobs")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture(scope="module")
def all_namespaces(cluster: Cluster) -> Iterator[Release]:
    """Watching every namespace; webhook off; CRDs not managed by this release (other tests apply
    crds/ with kubectl, and a CRD can belong to one owner only)."""
    install_crds(cluster)  # `kubectl auth can-i` resolves kubetune.io resources only once they exist
    release = install(cluster, "ktall", {"webhook": {"enabled": False}, "crds": {"enabled": False}})
    yield release
    uninstall(cluster, release)


@pytest.fixture(scope="module")
def one_namespace(cluster: Cluster) -> Iterator[tuple[Release, str]]:
    watched = new_namespace(cluster, "kt-watched")
    release = install(cluster, "ktone", {"watchNamespaces": [watched], "crds": {"enabled": False}})
    yield release, watched
    uninstall(cluster, release)
    cluster.kubectl("delete", "namespace", watched, "--wait=false")


# --- the chart on a real API server ---------------------------------------------------------------


def test_every_rendered_object_passes_server_side_dry_run(cluster: Cluster) -> None:
    """All options on (but the kinds whose CRDs this cluster lacks): the API server's own
    validation, admission (the webhook's CEL matchConditions compile) and RBAC escalation checks."""
    watched = new_namespace(cluster, "kt-dry")
    try:
        out = helm(cluster, "template", "ktdry", str(CHART), "--namespace", watched,
                   "--set-json", f'watchNamespaces=["{watched}"]',
                   "--set-json", 'metrics={"serviceMonitor":{"enabled":false}}').stdout
        objs = [o for o in yaml.safe_load_all(out) if o and o["kind"] not in THIRD_PARTY_KINDS]
        crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
        rest = [o for o in objs if o["kind"] != "CustomResourceDefinition"]
        assert len(crds) == 2 and rest
        for batch in (crds, rest):
            doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": batch})
            proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=doc)
            assert proc.returncode == 0, proc.stderr
    finally:
        cluster.kubectl("delete", "namespace", watched, "--wait=false")


def test_install_creates_the_release_objects(cluster: Cluster, all_namespaces: Release) -> None:
    rel = all_namespaces
    deploy = cluster.get("deployment", f"{rel.name}-kubetune", "-n", rel.namespace)
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == f"{rel.name}-kubetune"
    cluster.get("serviceaccount", "kubetune-trainer", "-n", rel.namespace)
    cluster.get("rolebinding", "kubetune-trainer", "-n", rel.namespace)
    status = helm(cluster, "status", rel.name, "--namespace", rel.namespace, "-o", "json").stdout
    assert json.loads(status)["info"]["status"] == "deployed"


# --- the operator's ServiceAccount -------------------------------------------------------------------

NEEDED = [  # (verb, resource, subresource)
    ("get", "finetunejobs.kubetune.io", None),
    ("list", "finetunejobs.kubetune.io", None),
    ("watch", "preferencealignments.kubetune.io", None),
    ("patch", "finetunejobs.kubetune.io", "status"),
    ("patch", "preferencealignments.kubetune.io", "status"),
    ("update", "finetunejobs.kubetune.io", "finalizers"),
    ("create", "jobs.batch", None),
    ("patch", "jobs.batch", None),
    ("watch", "jobs.batch", None),
    ("create", "configmaps", None),
    ("create", "services", None),
    ("list", "pods", None),
    ("watch", "pods", None),
    ("create", "events", None),
    ("create", "serviceaccounts", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", None),
]
REFUSED = [
    ("get", "secrets", None),
    ("list", "secrets", None),
    ("create", "pods", "exec"),
    ("get", "pods", "log"),
    ("create", "pods", None),
    ("delete", "jobs.batch", None),
    ("delete", "finetunejobs.kubetune.io", None),
    ("patch", "finetunejobs.kubetune.io", None),  # the spec is the user's
    ("update", "serviceaccounts", None),
    ("create", "roles.rbac.authorization.k8s.io", None),
]


def test_operator_can_list_kueue_workloads(cluster: Cluster, all_namespaces: Release, job_ns: str) -> None:
    """Kueue's Workloads (why Kueue holds a queued Job), read-only. Asked with a SubjectAccessReview
    naming the API group: `kubectl auth can-i` cannot name a group whose CRDs are not installed."""
    def allowed(verb: str, namespace: str) -> bool:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
            "user": all_namespaces.operator_sa, "resourceAttributes": {
                "group": "kueue.x-k8s.io", "resource": "workloads", "verb": verb, "namespace": namespace}}}
        out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review), check=True)
        return bool(json.loads(out.stdout)["status"].get("allowed"))

    assert allowed("list", job_ns) and allowed("list", "")
    assert not allowed("patch", job_ns) and not allowed("delete", job_ns) and not allowed("watch", job_ns)


@pytest.mark.parametrize(("verb", "resource", "sub"), NEEDED, ids=[f"{v}-{r}-{s or ''}" for v, r, s in NEEDED])
def test_operator_can(cluster: Cluster, all_namespaces: Release, job_ns: str, verb: str, resource: str,
                      sub: str | None) -> None:
    assert can_i(cluster, all_namespaces.operator_sa, verb, resource, namespace=job_ns, subresource=sub)
    assert can_i(cluster, all_namespaces.operator_sa, verb, resource, subresource=sub)  # every namespace


@pytest.mark.parametrize(("verb", "resource", "sub"), REFUSED, ids=[f"{v}-{r}-{s or ''}" for v, r, s in REFUSED])
def test_operator_cannot(cluster: Cluster, all_namespaces: Release, job_ns: str, verb: str, resource: str,
                         sub: str | None) -> None:
    assert not can_i(cluster, all_namespaces.operator_sa, verb, resource, namespace=job_ns, subresource=sub)
    assert not can_i(cluster, all_namespaces.operator_sa, verb, resource, subresource=sub)


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_operator_reads_crds_but_never_changes_them(cluster: Cluster, all_namespaces: Release, verb: str) -> None:
    sa = all_namespaces.operator_sa
    assert can_i(cluster, sa, verb, "customresourcedefinitions.apiextensions.k8s.io")
    for forbidden in ("create", "update", "patch", "delete"):
        assert not can_i(cluster, sa, forbidden, "customresourcedefinitions.apiextensions.k8s.io")


def test_operator_cannot_touch_cluster_wide_rbac_or_webhooks(cluster: Cluster, all_namespaces: Release) -> None:
    sa = all_namespaces.operator_sa
    for verb, resource in [("create", "clusterrolebindings.rbac.authorization.k8s.io"),
                           ("escalate", "clusterroles.rbac.authorization.k8s.io"),
                           ("bind", "clusterroles.rbac.authorization.k8s.io"),  # any name: no
                           ("impersonate", "serviceaccounts"),
                           ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
                           ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
                           ("list", "nodes")]:
        assert not can_i(cluster, sa, verb, resource), (verb, resource)


def test_operator_binds_the_trainer_role_and_nothing_bigger(cluster: Cluster, all_namespaces: Release,
                                                            job_ns: str) -> None:
    """Real requests as the operator: what reconciler._ensure_trainer_rbac does works; binding
    cluster-admin the same way is refused by RBAC's escalation check."""
    rel = all_namespaces
    trainer_role = f"{rel.name}-kubetune-{rel.namespace}-trainer"
    as_operator = f"--as={rel.operator_sa}"
    ok = cluster.kubectl(as_operator, "-n", job_ns, "create", "serviceaccount", "kubetune-trainer")
    assert ok.returncode == 0, ok.stderr
    ok = cluster.kubectl(as_operator, "-n", job_ns, "create", "rolebinding", "kubetune-trainer",
                         f"--clusterrole={trainer_role}", f"--serviceaccount={job_ns}:kubetune-trainer")
    assert ok.returncode == 0, ok.stderr
    refused = cluster.kubectl(as_operator, "-n", job_ns, "create", "rolebinding", "sneaky",
                              "--clusterrole=cluster-admin", f"--serviceaccount={job_ns}:kubetune-trainer")
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    # ... and the trainer it just bound can do what the trainer needs there.
    trainer = rel.trainer_sa(job_ns)
    assert can_i(cluster, trainer, "patch", "pods", namespace=job_ns)


# --- the trainer's ServiceAccount ------------------------------------------------------------------------


def test_trainer_can_patch_pods_in_its_namespace_only(cluster: Cluster, all_namespaces: Release,
                                                      job_ns: str) -> None:
    ns = all_namespaces.namespace  # created by the chart there
    trainer = all_namespaces.trainer_sa(ns)
    assert not can_i(cluster, trainer, "get", "pods", namespace=ns)  # it reads nothing
    assert can_i(cluster, trainer, "patch", "pods", namespace=ns)
    assert not can_i(cluster, trainer, "list", "pods", namespace=ns)
    assert not can_i(cluster, trainer, "list", "secrets", namespace=ns)
    assert not can_i(cluster, trainer, "get", "secrets", namespace=ns)
    assert not can_i(cluster, trainer, "delete", "pods", namespace=ns)
    assert not can_i(cluster, trainer, "create", "pods", namespace=ns, subresource="exec")
    assert not can_i(cluster, trainer, "patch", "pods", namespace="kube-system")
    assert not can_i(cluster, trainer, "patch", "pods")  # not cluster-wide


def as_token(cluster: Cluster, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    """One API request with a bearer token (what the trainer's code could send); (status, body)."""
    import ssl
    import urllib.error

    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca_crt))
    req = urllib.request.Request(cluster.server + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                                          "Content-Type": "application/merge-patch+json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_trainer_changes_only_its_own_pods_progress(cluster: Cluster, all_namespaces: Release) -> None:
    """The trainer ServiceAccount's token bound to its pod (what the kubelet mounts): it may set the
    progress annotation on that pod and nothing else — no other pod, no spec (images are mutable),
    no label or other annotation, no reads; a token not bound to a pod may change nothing."""
    ns = all_namespaces.namespace
    for name in ("trainer-a", "trainer-b"):
        cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns,
                                                                       "annotations": {"team": "ml"}},
                       "spec": {"serviceAccountName": "kubetune-trainer", "automountServiceAccountToken": False,
                                "nodeSelector": {"kubetune.io/none": "true"},  # never scheduled: not needed
                                "containers": [{"name": "trainer", "image": "ghcr.io/kubetune/trainer:1"}]}})
    token = cluster.kubectl("create", "token", "kubetune-trainer", "-n", ns, "--bound-object-kind=Pod",
                            "--bound-object-name=trainer-a", "--duration=10m", check=True).stdout.strip()
    pods = f"/api/v1/namespaces/{ns}/pods"
    progress = {"metadata": {"annotations": {"kubetune.io/progress": '{"step": 3}'}}}
    status, body = as_token(cluster, token, "PATCH", f"{pods}/trainer-a", progress)
    assert status == 200, body
    assert cluster.get("pod", "trainer-a", "-n", ns)["metadata"]["annotations"]["kubetune.io/progress"] == '{"step": 3}'
    refusals = {
        "another pod": ("trainer-b", progress, "only change its own pod"),
        "the image": ("trainer-a", {"spec": {"containers": [{"name": "trainer", "image": "evil:1"}]}}, "spec"),
        "a label": ("trainer-a", {"metadata": {"labels": {"x": "y"}}}, "labels"),
        "another annotation": ("trainer-a", {"metadata": {"annotations": {"team": "x"}}}, "only the kubetune.io/progress"),
        "an annotation removed": ("trainer-a", {"metadata": {"annotations": {"team": None}}}, "only the kubetune.io/progress"),
    }
    for what, (pod, patch, message) in refusals.items():
        status, body = as_token(cluster, token, "PATCH", f"{pods}/{pod}", patch)
        assert status in (403, 422) and message in body, (what, status, body)
    assert as_token(cluster, token, "GET", f"{pods}/trainer-a")[0] == 403
    assert as_token(cluster, token, "GET", f"/api/v1/namespaces/{ns}/secrets")[0] == 403
    unbound = cluster.kubectl("create", "token", "kubetune-trainer", "-n", ns, "--duration=10m", check=True).stdout.strip()
    status, body = as_token(cluster, unbound, "PATCH", f"{pods}/trainer-a", progress)
    assert status in (403, 422) and "only change its own pod" in body, body
    cluster.kubectl("delete", "pod", "trainer-a", "trainer-b", "-n", ns, "--wait=false")


# --- watching one namespace ------------------------------------------------------------------------------


def test_watched_namespace_only(cluster: Cluster, one_namespace: tuple[Release, str], job_ns: str) -> None:
    rel, watched = one_namespace
    sa = rel.operator_sa
    assert can_i(cluster, sa, "watch", "finetunejobs.kubetune.io", namespace=watched)
    assert can_i(cluster, sa, "create", "jobs.batch", namespace=watched)
    assert not can_i(cluster, sa, "watch", "finetunejobs.kubetune.io", namespace=job_ns)
    assert not can_i(cluster, sa, "create", "jobs.batch", namespace=job_ns)
    assert not can_i(cluster, sa, "list", "finetunejobs.kubetune.io")  # not cluster-wide
    assert can_i(cluster, sa, "watch", "namespaces")  # kopf follows its namespaces
    assert not can_i(cluster, sa, "get", "secrets", namespace=watched)
    # The trainer ServiceAccount was created in the watched namespace at install time.
    assert can_i(cluster, rel.trainer_sa(watched), "patch", "pods", namespace=watched)
    assert not can_i(cluster, rel.trainer_sa(watched), "list", "secrets", namespace=watched)


def test_webhook_is_registered_for_the_watched_namespace(cluster: Cluster, one_namespace: tuple[Release, str]) -> None:
    rel, watched = one_namespace
    name = f"{rel.name}-kubetune-{rel.namespace}"
    config = cluster.get("validatingwebhookconfiguration", name)
    secret_name = f"{rel.name}-kubetune-webhook-tls"
    secret = cluster.get("secret", secret_name, "-n", rel.namespace)
    assert not secret.get("data")  # the operator fills it in (tests/e2e/test_webhook_tls.py)
    for hook in config["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [watched]
    # what the operator may do about it: its Secret and its configuration, by name, nothing more
    sa = rel.operator_sa
    for verb in ("get", "update"):
        assert can_i(cluster, sa, verb, f"secrets/{secret_name}", namespace=rel.namespace)
        assert can_i(cluster, sa, verb, f"validatingwebhookconfigurations.admissionregistration.k8s.io/{name}")
    assert not can_i(cluster, sa, "get", "secrets/other", namespace=rel.namespace)
    assert not can_i(cluster, sa, "list", "secrets", namespace=rel.namespace)
    assert not can_i(cluster, sa, "create", "secrets", namespace=rel.namespace)
    assert not can_i(cluster, sa, "update", "validatingwebhookconfigurations.admissionregistration.k8s.io/other")
    assert not can_i(cluster, sa, "delete", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{name}")
    # An upgrade renders the same objects: nothing is regenerated.
    helm(cluster, "upgrade", rel.name, str(CHART), "--namespace", rel.namespace, "--reuse-values")
    assert cluster.get("validatingwebhookconfiguration", name)["webhooks"] == config["webhooks"]


# --- the operator running with exactly the chart's RBAC and settings ---------------------------------------


def token_kubeconfig(cluster: Cluster, release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's operator ServiceAccount (TokenRequest)."""
    return sa_kubeconfig(cluster, release.namespace, release.operator_sa.rsplit(":", 1)[1], path)


def test_operator_reconciles_with_only_the_charts_rbac(cluster: Cluster, tmp_path: Path) -> None:
    """The operator process, configured from the chart's Deployment env and authenticated as the
    chart's ServiceAccount, turns a FineTuneJob into its ConfigMap and Job without one 403."""
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
    run_ns = new_namespace(cluster, "kt-run")
    release = install(cluster, "ktrun", {"watchNamespaces": [run_ns], "webhook": {"enabled": False},
                                         "crds": {"enabled": False}})
    proc = None
    log = tmp_path / "operator.log"
    try:
        deploy = cluster.get("deployment", f"{release.name}-kubetune", "-n", release.namespace)
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env["KUBETUNE_NAMESPACES"] == run_ns

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return int(s.getsockname()[1])

        metrics_port, health_port = free_port(), free_port()
        env.update({"KUBETUNE_METRICS_PORT": str(metrics_port),
                    "KUBECONFIG": str(token_kubeconfig(cluster, release, tmp_path / "kubeconfig")),
                    "PYTHONPATH": str(REPO / "operator"), "KUBETUNE_RESYNC_SECONDS": "1"})
        argv = [sys.executable, "-c", "import sys; from kubetune.cli import main; sys.exit(main())",
                *container["command"][1:], f"--liveness=http://127.0.0.1:{health_port}/healthz"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env={**cluster.env(), **env}, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=str(REPO))

        def healthy() -> bool:
            assert proc is not None
            if proc.poll() is not None:
                raise AssertionError(f"operator exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_until(healthy, timeout=60, what="operator health endpoint")
        cluster.apply(ftj("rbac-check", run_ns))

        def job_created() -> bool:
            out = cluster.kubectl("get", "jobs,configmaps", "-n", run_ns, "-l", "kubetune.io/job=rbac-check",
                                  "-o", "name").stdout.split()
            return any(o.startswith("job") for o in out) and any(o.startswith("configmap") for o in out)

        wait_until(job_created, timeout=60, what="the FineTuneJob's Job and ConfigMap")
        job = cluster.get("jobs", "-n", run_ns, "-l", "kubetune.io/job=rbac-check")["items"][0]
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "kubetune-trainer"
        assert pod["containers"][0]["image"] == env["KUBETUNE_TRAINER_IMAGE"]
        time.sleep(2)  # a status patch and an Event or two
        text = log.read_text()
        assert "403" not in text and "forbidden" not in text.lower(), text[-4000:]
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        uninstall(cluster, release)
        cluster.kubectl("delete", "namespace", run_ns, "--wait=false")
