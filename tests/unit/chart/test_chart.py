"""The Helm chart (charts/kubetune) renders, validates and keeps its promises.

- `helm lint` is clean; `helm template` renders with the defaults, with every option on and with
  every option off;
- every rendered object passes kubernetes-validate (strict) for the oldest Kubernetes the chart
  supports and for the local control plane's; our own kinds go through kubetune's validator,
  cert-manager's and prometheus-operator's through the subset of their schemas we use;
- the chart's CRDs are crds/ byte for byte (plus the keep annotation when asked);
- RBAC: no "*", no Secrets (but the webhook certificate's, by name), no pods/exec, no delete, the trainer only
  patch on pods (and an admission policy narrows that to its own pod's progress annotation);
- the operator pod meets Pod Security "restricted" and runs with a read-only root filesystem;
- the webhook: Fail/None, both kinds on CREATE/UPDATE, no certificate or caBundle rendered (the
  operator keeps its own: identical renders);
- values.schema.json refuses bad values; every value is documented with an example;
- the env vars the chart sets are the ones the operator reads, with the same defaults;
- kind-config.yaml and docs/kind.md fit together: the job in the doc validates and can land on
  the kind worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api.validate import validate_object
from kubetune.render.settings import RenderSettings

from .conftest import CHART, NAMESPACE, RELEASE, ROOT, Render, run_helm, set_args

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the local control
# plane's minor (cluster/versions.env); kubernetes-validate 1.37.0 knows up to 1.37.
K8S_VERSIONS = ["1.31.0", "1.37.0"]

ALL_ON: dict[str, Any] = {
    "watchNamespaces": ["team-a", "team-b"],
    "webhook": {"certManager": {"enabled": True}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                "service": {"annotations": {"prometheus.io/scrape": "true"}}},
    "crds": {"keep": True},
    "trainer": {"serviceAccount": {"namespaces": ["research", "team-a"], "annotations": {"a": "b"}},
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
                "imagePullSecrets": ["regcred"],
                "preflight": {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "8"}},
                              "nodeSelector": {"pool": "cpu"},
                              "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]}},
    "imagePullSecrets": [{"name": "regcred"}],
    "commonLabels": {"team": "ml-platform"},
    "podAnnotations": {"example.com/a": "b"},
    "deploymentAnnotations": {"reloader.stakater.com/auto": "true"},
    "priorityClassName": "system-cluster-critical",
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "image": {"digest": "sha256:" + "0" * 64},
    "replicaCount": 2,
    "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                      "trainerEgress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                                         "ports": [{"port": 443, "protocol": "TCP"}]}]},
}
ALL_OFF: dict[str, Any] = {
    "webhook": {"enabled": False},
    "metrics": {"service": {"enabled": False}},
    "crds": {"enabled": False},
    "serviceAccount": {"create": False, "name": "existing-sa"},
    "trainer": {"serviceAccount": {"create": False}},
    "replicaCount": 0,
    "leaderElection": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
}
CERT_MANAGER_ISSUER = {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
                       "crds": {"keep": False}}
SCENARIOS = {"defaults": None, "all-on": ALL_ON, "all-off": ALL_OFF, "cert-manager-issuer": CERT_MANAGER_ISSUER}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --- lint and render --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_is_clean(helm: Path, values: dict[str, Any] | None) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(values))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_renders(render: Render, scenario: str) -> None:
    objs = render(SCENARIOS[scenario])
    kinds = {o["kind"] for o in objs}
    if scenario == "all-off":
        assert kinds == {"Deployment", "ClusterRole", "ClusterRoleBinding",
                         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}  # the trainer's
        return
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding",
            "Service", "ValidatingWebhookConfiguration", "CustomResourceDefinition"} <= kinds
    if scenario == "all-on":
        assert {"Certificate", "Issuer", "ServiceMonitor"} <= kinds
        assert "Secret" not in kinds  # cert-manager writes it


# --- validation of every rendered object -------------------------------------------------------

# The parts of cert-manager's and prometheus-operator's CRD schemas this chart uses. Their CRDs
# are not vendored here; e2e installs on a real API server would refuse unknown fields the same way.
_STR = {"type": "string", "minLength": 1}
_META = {"type": "object", "required": ["name", "namespace"]}
THIRD_PARTY_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "properties": {"selfSigned": {"type": "object"}, "ca": {"type": "object"}}}}},
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": _STR, "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {"type": "array", "items": _STR, "minItems": 1},
                "duration": {"type": "string"}, "renewBefore": {"type": "string"},
                "privateKey": {"type": "object", "additionalProperties": False, "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]}, "encoding": {"enum": ["PKCS1", "PKCS8"]}}},
                "usages": {"type": "array", "items": {"enum": [
                    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
                    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
                "issuerRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                              "properties": {"name": _STR, "kind": {"type": "string"}, "group": {"type": "string"}}},
            }}}},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": _STR, "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "honorLabels": {"type": "boolean"},
                    }}},
            }}}},
}


def validation_errors(obj: dict[str, Any], version: str) -> list[str]:
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if api.startswith("kubetune.io/"):
        return [str(p) for p in validate_object(obj) if p.severity == "error"]
    if (api, kind) in THIRD_PARTY_SCHEMAS:
        import jsonschema

        validator = jsonschema.Draft7Validator(THIRD_PARTY_SCHEMAS[api, kind])
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_validates_strictly(render: Render, scenario: str, version: str) -> None:
    failures = {}
    for obj in render(SCENARIOS[scenario]):
        errors = validation_errors(obj, version)
        if errors:
            failures[f"{obj['kind']}/{obj['metadata']['name']}"] = errors
    assert not failures, json.dumps(failures, indent=2)


def test_third_party_schemas_catch_mistakes() -> None:
    sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x", "namespace": "y"},
          "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "30s"}]}}
    assert validation_errors(sm, K8S_VERSIONS[-1])
    cert = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x", "namespace": "y"},
            "spec": {"secretName": "s", "issuerRef": {"name": "i"}, "usages": ["server-auth"]}}
    assert validation_errors(cert, K8S_VERSIONS[-1])


def test_strict_validation_catches_unknown_fields() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 80, "targetPrt": 8080}]}}
    assert validation_errors(svc, K8S_VERSIONS[-1])


def test_long_release_names_stay_within_limits(render: Render) -> None:
    release = "a-very-long-release-name-for-kubetune-0123456789-abc"  # 52 characters
    namespace = "a-long-namespace-name-for-the-operator-0123456789abcdefghijklmn"[:63]
    objs = render(ALL_ON, release=release, namespace=namespace)
    dns_label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for obj in objs:
        name = obj["metadata"]["name"]
        assert len(name) <= (63 if obj["kind"] != "CustomResourceDefinition" else 253), name
        if obj["kind"] in ("Service", "Deployment", "ServiceAccount", "Secret", "Certificate", "Issuer"):
            assert dns_label.match(name), name
        for key, value in obj["metadata"].get("labels", {}).items():
            assert len(value) <= 63 and (not value or dns_label.match(value.lower().replace(".", "-").replace("_", "-"))), (key, value)
    webhook = one(objs, "ValidatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].startswith(namespace + "/")


# --- CRDs --------------------------------------------------------------------------------------


def test_chart_crd_copies_equal_crds_folder() -> None:
    source = {p.name: p.read_bytes() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    copies = {p.name: p.read_bytes() for p in sorted((CHART / "files" / "crds").glob("*.yaml"))}
    assert source, "crds/ is empty"
    hint = "charts/kubetune/files/crds drifted from crds/: run `cp crds/*.yaml charts/kubetune/files/crds/`"
    assert copies.keys() == source.keys(), hint
    for name in source:
        assert copies[name] == source[name], f"{name}: {hint}"


@pytest.mark.parametrize("keep", [True, False])
def test_rendered_crds_are_crds_folder_plus_keep_annotation(render: Render, keep: bool) -> None:
    rendered = {o["metadata"]["name"]: o for o in by_kind(render({"crds": {"keep": keep}}), "CustomResourceDefinition")}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        expected = yaml.safe_load(path.read_text())
        if keep:
            expected["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
        assert rendered.pop(expected["metadata"]["name"]) == expected
    assert not rendered, f"CRDs not in crds/: {list(rendered)}"


# --- RBAC --------------------------------------------------------------------------------------

FORBIDDEN_RESOURCES = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "pods/log", "nodes/proxy",
                       "serviceaccounts/token", "validatingwebhookconfigurations", "mutatingwebhookconfigurations",
                       "clusterrolebindings", "roles"}
FORBIDDEN_VERBS = {"*", "delete", "deletecollection", "escalate", "bind", "impersonate"}


def rules(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", r) for o in objs if o["kind"] in ("ClusterRole", "Role")
            for r in o.get("rules", [])]


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_rbac_is_least_privilege(render: Render, scenario: str) -> None:
    for where, rule in rules(render(SCENARIOS[scenario])):
        assert "*" not in rule.get("apiGroups", []), where
        assert "*" not in rule["resources"] and not any(r.endswith("/*") for r in rule["resources"]), where
        named = rule.get("resourceNames") and rule["resources"] in (["secrets"], ["validatingwebhookconfigurations"])
        assert named or not FORBIDDEN_RESOURCES & set(rule["resources"]), (where, rule)
        allowed = {"bind"} if rule["resources"] == ["clusterroles"] else set()
        assert not (FORBIDDEN_VERBS - allowed) & set(rule["verbs"]), (where, rule)
        assert "nonResourceURLs" not in rule, where
        if "customresourcedefinitions" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, where
        if "clusterroles" in rule["resources"]:  # bind, to the trainer ClusterRole only
            assert rule["verbs"] == ["bind"] and len(rule["resourceNames"]) == 1, where
            assert rule["resourceNames"][0].endswith("-trainer"), where
        elif rule["resources"] == ["leases"] and rule["verbs"] != ["create"]:  # its own Lease only
            assert rule["verbs"] == ["get", "update"] and len(rule["resourceNames"]) == 1, where
            assert rule["resourceNames"][0].endswith("-leader"), where
        elif rule["resources"] in (["secrets"], ["validatingwebhookconfigurations"]):
            # its webhook certificate's Secret and the chart's own webhook configuration, by name
            assert rule["verbs"] == ["get", "update"] and len(rule["resourceNames"]) == 1, where
        else:
            assert "resourceNames" not in rule, where


def operator_grants(objs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, res, v) for o in objs if o["kind"] == "ClusterRole" and not o["metadata"]["name"].endswith("-trainer")
            for r in o["rules"] for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


def grant(group: str, resources: str, verbs: str) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources.split() for v in verbs.split()}


# What kubetune/controller/k8s.py documents (one line per call) and kopf needs.
OPERATOR_RIGHTS = (grant("apiextensions.k8s.io", "customresourcedefinitions", "list watch")
                   | grant("kubetune.io", "finetunejobs preferencealignments", "get list watch")
                   | grant("kubetune.io", "finetunejobs/status preferencealignments/status", "get patch")
                   | grant("kubetune.io", "finetunejobs/finalizers preferencealignments/finalizers", "update")
                   | grant("batch", "jobs", "get list watch create patch")
                   | grant("", "configmaps services", "get create")
                   | grant("", "pods", "get list watch")
                   | grant("", "events", "create list")
                   | grant("kueue.x-k8s.io", "workloads", "list"))
TRAINER_RBAC_RIGHTS = (grant("", "serviceaccounts", "get create") | grant("rbac.authorization.k8s.io", "rolebindings", "get create")
                       | grant("rbac.authorization.k8s.io", "clusterroles", "bind"))


@pytest.mark.parametrize("manage", [True, False])
def test_operator_rights_are_the_documented_set(render: Render, manage: bool) -> None:
    granted = operator_grants(render({"trainer": {"serviceAccount": {"createInJobNamespaces": manage}}}))
    expected = (OPERATOR_RIGHTS | (TRAINER_RBAC_RIGHTS if manage else set())
                | grant("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get update"))
    assert granted == expected, f"extra: {sorted(granted - expected)}; missing: {sorted(expected - granted)}"
    env = operator_env(render({"trainer": {"serviceAccount": {"createInJobNamespaces": manage}}}))
    assert env["KUBETUNE_MANAGE_TRAINER_RBAC"] == str(manage).lower()


def test_cluster_wide_binding_when_watching_all_namespaces(render: Render) -> None:
    objs = render()
    bound = {b["roleRef"]["name"] for b in by_kind(objs, "ClusterRoleBinding")}
    roles = {r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")}
    trainer = {r for r in roles if r.endswith("-trainer")}
    assert len(trainer) == 1 and bound == roles - trainer, "the trainer ClusterRole is never bound cluster-wide"
    assert not [b for b in by_kind(objs, "RoleBinding") if "operator" in b["metadata"]["name"]]
    sa = one([o for o in objs if o["kind"] == "ServiceAccount" and "trainer" not in o["metadata"]["name"]],
             "ServiceAccount")
    for b in by_kind(objs, "ClusterRoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]


def test_watched_namespaces_get_rolebindings_only(render: Render) -> None:
    objs = render(ALL_ON)
    operator_role = next(r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"].endswith("-operator"))
    crbs = {b["roleRef"]["name"] for b in by_kind(objs, "ClusterRoleBinding")}
    assert operator_role["metadata"]["name"] not in crbs, "namespaced rights must not be bound cluster-wide"
    rbs = [b for b in by_kind(objs, "RoleBinding") if b["roleRef"]["name"] == operator_role["metadata"]["name"]]
    assert sorted(b["metadata"]["namespace"] for b in rbs) == ["team-a", "team-b"]
    cluster_role = next(r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"].endswith("-cluster"))
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in cluster_role["rules"]
    env = {e["name"]: e.get("value") for e in one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_NAMESPACES"] == "team-a,team-b"
    webhook = one(objs, "ValidatingWebhookConfiguration")
    for hook in webhook["webhooks"]:
        assert hook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]


def test_trainer_service_account_can_only_patch_pods(render: Render) -> None:
    objs = render(ALL_ON)
    namespaces = [NAMESPACE, "team-a", "team-b", "research"]
    trainer_sas = [o for o in by_kind(objs, "ServiceAccount") if o["metadata"]["name"] == "kubetune-trainer"]
    assert sorted(o["metadata"]["namespace"] for o in trainer_sas) == sorted(namespaces)
    (role,) = [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"].endswith("-trainer")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    # the one Role is the operator's leader-election Lease (test_chart_availability.py)
    assert [r["metadata"]["name"] for r in by_kind(objs, "Role")] == [f"{RELEASE}-kubetune-leader-election"]
    bindings = [b for b in by_kind(objs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(namespaces)
    for b in bindings:
        # the names the operator uses when it creates them (reconciler._ensure_trainer_rbac)
        assert b["metadata"]["name"] == "kubetune-trainer"
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-trainer",
                                  "namespace": b["metadata"]["namespace"]}]
    env = operator_env(objs)
    assert env["KUBETUNE_TRAINER_CLUSTER_ROLE"] == role["metadata"]["name"]
    operator_role = next(r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"].endswith("-operator"))
    bind = next(r for r in operator_role["rules"] if "clusterroles" in r["resources"])
    assert bind["resourceNames"] == [role["metadata"]["name"]]


# --- the operator pod ---------------------------------------------------------------------------

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    out = []
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{flag} must be unset/false")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {vol['name']}: type {kinds} not allowed")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: only NET_BIND_SERVICE may be added")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_pod_meets_pod_security_restricted(render: Render, scenario: str) -> None:
    deployment = one(render(SCENARIOS[scenario]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_restricted_check_catches_violations() -> None:
    pod = {"containers": [{"name": "c", "securityContext": {"privileged": True}}], "hostNetwork": True,
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert len(restricted_violations(pod)) >= 6


def test_operator_deployment_shape(render: Render) -> None:
    objs = render()
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["kubetune", "operator"]
    assert c["args"] == ["--liveness=http://0.0.0.0:8081/healthz"]
    assert c["image"] == "ghcr.io/kubetune/operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["serviceAccountName"] == f"{RELEASE}-kubetune"
    # Services select the operator pod and point at its named ports.
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for svc in by_kind(objs, "Service"):
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports


# --- webhook -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_webhook_configuration(render: Render, scenario: str) -> None:
    objs = render(SCENARIOS[scenario])
    config = one(objs, "ValidatingWebhookConfiguration")
    svc = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"].endswith("-webhook"))
    plurals = set()
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 30 and hook["admissionReviewVersions"] == ["v1"]
        (rule,) = hook["rules"]
        assert rule["apiGroups"] == ["kubetune.io"] and rule["operations"] == ["CREATE", "UPDATE"]
        plurals.update(rule["resources"])
        assert not any("/" in r for r in rule["resources"]), "status subresources must not hit the webhook"
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["port"]) == (svc["metadata"]["name"], NAMESPACE, 443)
        assert ref["path"] == f"/validate-{rule['resources'][0]}"  # the kopf handler id
        assert {c["name"] for c in hook["matchConditions"]} == {"not-the-operator", "spec-changed"}
        if scenario == "all-on":
            assert "caBundle" not in hook["clientConfig"]
    assert plurals == {"finetunejobs", "preferencealignments"}
    if scenario == "all-on":
        cert = one(objs, "Certificate")
        assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
            f"{NAMESPACE}/{cert['metadata']['name']}"
        secret_volume = next(v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                             if v["name"] == "webhook-tls")
        assert secret_volume["secret"]["secretName"] == cert["spec"]["secretName"]
        assert f"{svc['metadata']['name']}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]


def test_the_operator_keeps_the_certificate_nothing_is_generated_at_render_time(helm: Path, render: Render) -> None:
    """`helm template` twice (what Argo CD does on every sync) gives the same bytes: no certificate,
    key or caBundle in the manifests; the Secret is rendered empty for the operator to fill in."""
    first = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE).stdout
    second = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE).stdout
    assert first == second
    objs = render()
    secret = one(objs, "Secret")
    assert secret["type"] == "Opaque" and "data" not in secret and "stringData" not in secret
    for hook in one(objs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]
    env = operator_env(objs)
    assert env["KUBETUNE_WEBHOOK_CERT_SECRET"] == secret["metadata"]["name"]
    assert env["KUBETUNE_WEBHOOK_CONFIGURATION"] == one(objs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    svc = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"].endswith("-webhook"))["metadata"]["name"]
    assert f"{svc}.{NAMESPACE}.svc" in (env["KUBETUNE_WEBHOOK_DNS_NAMES"] or "").split(",")
    assert "KUBETUNE_WEBHOOK_CERT" not in env
    assert not any(v["name"] == "webhook-tls" for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"])


# --- values ------------------------------------------------------------------------------------

BAD_VALUES = [
    ({"replicaCount": -1}, "replicaCount"),
    ({"leaderElection": {"leaseSeconds": 1}}, "leaseSeconds"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"webhook": {"failurePolicy": "Maybe"}}, "failurePolicy"),
    ({"webhook": {"timeoutSeconds": 60}}, "timeoutSeconds"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"trainer": {"gpu": {"memoryTolerance": 0.9}}}, "memoryTolerance"),
    ({"trainer": {"shmSize": "lots"}}, "shmSize"),
    ({"trainer": {"preflight": {"resources": {"limits": {"cpu": "four"}}}}}, "cpu"),
    ({"trainer": {"preflight": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}, "nvidia.com/gpu"),
    ({"metrics": {"port": 70000}}, "port"),
    ({"logLevel": "verbose"}, "logLevel"),
    ({"crds": {"keep": "yes"}}, "keep"),
    ({"replicas": 1}, "replicas"),  # a typo of replicaCount: unknown keys are refused
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_schema_rejects_bad_values(helm: Path, values: dict[str, Any], field: str) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert "schema" in proc.stderr and field in proc.stderr, proc.stderr


def test_service_monitor_needs_the_metrics_service(helm: Path) -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    proc = run_helm(helm, "template", RELEASE, str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0 and "metrics.service.enabled" in proc.stderr


def _values_lines() -> list[str]:
    return (CHART / "values.yaml").read_text().splitlines()


def test_every_value_is_documented_with_an_example() -> None:
    """Every top-level key and every key of a documented section carries a "# --" comment with an
    "Example:"; a section (a mapping whose keys are documented) needs only the "# --" comment.
    Free-form maps (securityContext, probes, resources) are documented as a whole."""
    lines = _values_lines()
    keys: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        block = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.append(lines[j])
            j -= 1
        text = "\n".join(block)
        keys.append({"indent": len(m.group(1)), "key": m.group(2), "line": i + 1, "comment": "# --" in text,
                     "example": "Example:" in text, "children": []})
    stack: list[dict[str, Any]] = []
    top: list[dict[str, Any]] = []
    for k in keys:
        while stack and stack[-1]["indent"] >= k["indent"]:
            stack.pop()
        (stack[-1]["children"] if stack else top).append(k)
        stack.append(k)

    def section(k: dict[str, Any]) -> bool:
        return any(c["comment"] for c in k["children"])

    bad = []

    def check(group: list[dict[str, Any]], required: bool) -> None:
        for k in group:
            if required and not (k["comment"] and (k["example"] or section(k))):
                bad.append(f"{k['key']} (line {k['line']})")
            if section(k):
                check(k["children"], True)

    check(top, True)
    assert not bad, f"values without a '# --' comment and an 'Example:': {bad}"


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> list[str]:
        missing = []
        props = node.get("properties")
        if isinstance(value, dict) and props is not None:
            for key, sub in value.items():
                if key not in props:
                    missing.append(f"{path}{key}")
                else:
                    missing += walk(props[key], sub, f"{path}{key}.")
        return missing

    assert walk(schema, values, "") == []


# --- operator settings ---------------------------------------------------------------------------

def operator_env(objs: list[dict[str, Any]]) -> dict[str, str | None]:
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def operator_reads() -> set[str]:
    """Every KUBETUNE_* the operator's settings modules mention (RenderSettings, OperatorSettings)."""
    import inspect

    from kubetune.controller import config
    from kubetune.render import settings

    return {v for m in (config, settings) for v in re.findall(r"KUBETUNE_[A-Z_]+", inspect.getsource(m))}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_env_vars_are_the_ones_the_operator_reads(render: Render, scenario: str) -> None:
    env = set(operator_env(render(SCENARIOS[scenario]))) - {"HTTPS_PROXY"}
    unknown = env - operator_reads()
    assert not unknown, f"the chart sets env vars the operator does not read: {unknown}"


def test_chart_defaults_equal_operator_defaults(render: Render) -> None:
    from kubetune.controller.config import OperatorSettings

    env = {k: v for k, v in operator_env(render()).items() if v is not None}
    chart = OperatorSettings.from_env(env)
    defaults = OperatorSettings.from_env({})
    assert chart.render == defaults.render
    assert (chart.metrics_port, chart.webhook_port, chart.peering, chart.manage_trainer_rbac) == \
        (defaults.metrics_port, defaults.webhook_port, defaults.peering, defaults.manage_trainer_rbac)
    # What the chart decides differently, on purpose:
    assert chart.webhook and not chart.webhook_managed and chart.webhook_cert_secret and chart.webhook_configuration
    assert chart.trainer_cluster_role.endswith("-trainer") and chart.namespaces == ()


def test_readme_documents_every_env_var(render: Render) -> None:
    readme = (CHART / "README.md").read_text()
    env = (set(operator_env(render())) | set(operator_env(render(ALL_ON)))) - {"HTTPS_PROXY"}
    missing = sorted(v for v in env if f"`{v}`" not in readme)
    assert not missing, f"charts/kubetune/README.md lacks {missing}"


def test_trainer_defaults_reach_the_operator(render: Render) -> None:
    env = {k: v for k, v in operator_env(render(ALL_ON)).items() if v is not None}
    settings = RenderSettings.from_env(env)
    assert dict(settings.node_selector) == {"pool": "gpu"}
    assert [dict(t) for t in settings.tolerations] == ALL_ON["trainer"]["tolerations"]
    assert settings.image_pull_secrets == ("regcred",)
    assert settings.trainer_service_account == "kubetune-trainer"
    assert settings.trainer_image == "ghcr.io/kubetune/trainer:0.1.0"
    # Helm merges values into the defaults: the memory limit not set stays the default's
    assert settings.preflight_resources == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                            "limits": {"cpu": "8", "memory": "4Gi"}}
    assert dict(settings.preflight_node_selector) == {"pool": "cpu"}
    assert [dict(t) for t in settings.preflight_tolerations] == ALL_ON["trainer"]["preflight"]["tolerations"]


# --- kind ----------------------------------------------------------------------------------------


def _kind_doc_job() -> dict[str, Any]:
    text = (ROOT / "docs" / "kind.md").read_text()
    m = re.search(r"kubectl apply -f - <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, "docs/kind.md has no `kubectl apply -f - <<'EOF'` manifest"
    return yaml.safe_load(m.group(1))


def test_kind_doc_job_validates() -> None:
    job = _kind_doc_job()
    errors = [p for p in validate_object(job) if p.severity == "error"]
    assert not errors, errors


def test_kind_worker_can_host_the_doc_job() -> None:
    from kubetune.render.job import gpu_memory_min_mib

    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker"]
    (patch,) = config["nodes"][1]["kubeadmConfigPatches"]
    join = yaml.safe_load(patch)
    assert join["kind"] == "JoinConfiguration"
    args = join["nodeRegistration"]["kubeletExtraArgs"]
    labels = dict(kv.split("=", 1) for kv in args["node-labels"].split(","))
    assert labels["nvidia.com/gpu.present"] == "true"
    assert args["register-with-taints"] == "nvidia.com/gpu=present:NoSchedule"
    (cp_patch,) = config["nodes"][0]["kubeadmConfigPatches"]
    assert yaml.safe_load(cp_patch) == {"kind": "InitConfiguration", "nodeRegistration": {"taints": []}}
    settings = RenderSettings()
    assert int(labels[settings.gpu_memory_label]) >= gpu_memory_min_mib("80Gi", settings.gpu_memory_tolerance)
    # kind has no GPU: the doc's job is a CPU job (a GPU job would end GPUUnavailable), which the
    # untainted control plane can host
    assert _kind_doc_job()["spec"]["resources"]["gpus"] == 0
