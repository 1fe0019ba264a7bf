"""The chart's availability and isolation parts: replicas with leader election, the
PodDisruptionBudget, NetworkPolicies, and the ServiceMonitor keeping the per-job labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import CHART, NAMESPACE, RELEASE, Render, run_helm, set_args


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def env_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_kind(objs, "Deployment")
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_two_replicas_elect_a_leader_through_their_own_lease(render: Render) -> None:
    objs = render({"replicaCount": 2})
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = env_of(objs)
    assert env["KUBETUNE_LEADER_ELECTION"] == "true"
    assert env["KUBETUNE_LEADER_ELECTION_NAMESPACE"] == NAMESPACE
    assert env["KUBETUNE_LEADER_ELECTION_NAME"] == f"{RELEASE}-kubetune-leader"
    assert env["KUBETUNE_LEADER_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
         "resourceNames": [f"{RELEASE}-kubetune-leader"]}]
    (binding,) = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"].endswith("leader-election")]
    assert binding["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]


def test_the_settings_the_chart_sets_are_the_operators(render: Render) -> None:
    from kubetune.controller.config import OperatorSettings

    env = {k: v for k, v in env_of(render({"replicaCount": 2})).items() if isinstance(v, str)}
    s = OperatorSettings.from_env(env)
    assert s.leader_election and s.leader_election_namespace == NAMESPACE and s.leader_election_lease_seconds == 15


def test_a_disruption_budget_only_with_several_replicas(render: Render) -> None:
    assert not by_kind(render(), "PodDisruptionBudget")
    objs = render({"replicaCount": 3})
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    (dep,) = by_kind(objs, "Deployment")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_several_replicas_without_leader_election_is_refused(helm: Path) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART),
                    *set_args({"replicaCount": 2, "leaderElection": {"enabled": False}}), check=False)
    assert proc.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled" in proc.stderr
    objs = run_helm(helm, "template", RELEASE, str(CHART), *set_args({"leaderElection": {"enabled": False}})).stdout
    assert "type: Recreate" in objs and "KUBETUNE_LEADER_ELECTION_NAME" not in objs


def test_service_monitor_keeps_the_per_job_labels(render: Render) -> None:
    objs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True


def test_network_policies(render: Render) -> None:
    assert not by_kind(render(), "NetworkPolicy")
    objs = render({"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]}},
                   "watchNamespaces": ["team-a"]})
    pols = {(p["metadata"]["namespace"], p["metadata"]["name"]): p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    op = pols[(NAMESPACE, f"{RELEASE}-kubetune-operator")]
    assert op["policyTypes"] == ["Ingress", "Egress"]
    assert sorted(r["ports"][0]["port"] for r in op["ingress"]) == [8080, 8081, 9443]
    assert op["egress"][0] == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}
    assert {p["port"] for p in op["egress"][1]["ports"]} == {53}  # DNS, and nothing else
    for ns in (NAMESPACE, "team-a"):  # the trainer's, where the chart knows jobs run
        tr = pols[(ns, f"{RELEASE}-kubetune-trainer")]
        assert tr["podSelector"] == {"matchExpressions": [{"key": "kubetune.io/job", "operator": "Exists"}]}
        assert tr["ingress"] == [{"from": [{"podSelector": tr["podSelector"]}]}]
        assert tr["egress"][1] == {}  # trainerEgress default: downloads allowed


def test_the_trainer_may_change_only_its_own_pods_progress(render: Render) -> None:
    objs = render({"trainer": {"serviceAccount": {"name": "tuner"}}})
    (policy,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"], "scope": "*"}]
    assert spec["matchConditions"][0]["expression"].endswith("endsWith(':tuner')")
    messages = {v["message"] for v in spec["validations"]}
    assert "a trainer may only change its own pod (the pod its token is bound to)" in messages
    assert "a trainer may change only the kubetune.io/progress annotation" in messages
    assert "a trainer may not change a pod's spec" in messages
