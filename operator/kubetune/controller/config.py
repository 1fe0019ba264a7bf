"""Operator settings, all from environment variables (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetune.render.settings import RenderSettings


def _bool(v: str | None, default: bool) -> bool:
    return default if v in (None, "") else str(v).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class OperatorSettings:
    render: RenderSettings = field(default_factory=RenderSettings)
    namespaces: tuple[str, ...] = ()  # KUBETUNE_NAMESPACES (comma-separated); empty: all namespaces
    metrics_port: int = 8080  # KUBETUNE_METRICS_PORT (0: off)
    resync_seconds: float = 5.0  # KUBETUNE_RESYNC_SECONDS: re-derive status of active jobs this often
    progress_min_interval_seconds: float = 5.0  # KUBETUNE_PROGRESS_MIN_INTERVAL: progress mirroring rate limit
    peering: bool = False  # KUBETUNE_PEERING: kopf peering (several replicas, one active)
    manage_trainer_rbac: bool = True  # KUBETUNE_MANAGE_TRAINER_RBAC: create the trainer SA + RoleBinding per namespace
    trainer_cluster_role: str = "kubetune-trainer"  # KUBETUNE_TRAINER_CLUSTER_ROLE (pods patch; from the chart)
    webhook: bool = False  # KUBETUNE_WEBHOOK: serve the validating admission webhook
    webhook_port: int = 9443  # KUBETUNE_WEBHOOK_PORT
    webhook_host: str | None = None  # KUBETUNE_WEBHOOK_HOST: the name the API server reaches us by
    webhook_addr: str | None = None  # KUBETUNE_WEBHOOK_ADDR: listen address (default all)
    webhook_cert: str | None = None  # KUBETUNE_WEBHOOK_CERT: PEM (e.g. cert-manager); unset: self-signed
    webhook_key: str | None = None  # KUBETUNE_WEBHOOK_KEY
    webhook_managed: bool = True  # KUBETUNE_WEBHOOK_MANAGED: kopf creates the ValidatingWebhookConfiguration
    # KUBETUNE_WEBHOOK_CERT_SECRET: the operator keeps its own CA + certificate in this Secret (webhook_tls.py)
    webhook_cert_secret: str | None = None
    webhook_cert_namespace: str = "default"  # KUBETUNE_WEBHOOK_CERT_NAMESPACE: that Secret's namespace
    webhook_configuration: str | None = None  # KUBETUNE_WEBHOOK_CONFIGURATION: gets the caBundle
    webhook_dns_names: tuple[str, ...] = ()  # KUBETUNE_WEBHOOK_DNS_NAMES: the certificate's names (comma-separated)
    webhook_cert_check_seconds: float = 30.0  # KUBETUNE_WEBHOOK_CERT_CHECK_SECONDS: renewal/reload check period
    max_workers: int = 16  # KUBETUNE_MAX_WORKERS: threads for sync handlers
    retry_base_seconds: float = 1.0  # KUBETUNE_RETRY_BASE_SECONDS: first backoff after a failed reconcile
    retry_max_seconds: float = 300.0  # KUBETUNE_RETRY_MAX_SECONDS: the longest backoff
    leader_election: bool = False  # KUBETUNE_LEADER_ELECTION: several replicas, the Lease holder reconciles
    leader_election_namespace: str = "default"  # KUBETUNE_LEADER_ELECTION_NAMESPACE (the chart: its namespace)
    leader_election_name: str = "kubetune-operator"  # KUBETUNE_LEADER_ELECTION_NAME: the Lease's name
    leader_election_lease_seconds: int = 15  # KUBETUNE_LEADER_ELECTION_LEASE_SECONDS: a silent leader's term
    leader_identity: str | None = None  # KUBETUNE_LEADER_IDENTITY (the chart: the pod name); unset: host+random

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        ns = tuple(n.strip() for n in env.get("KUBETUNE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            render=RenderSettings.from_env(env),
            namespaces=ns,
            metrics_port=int(env.get("KUBETUNE_METRICS_PORT", "8080")),
            resync_seconds=float(env.get("KUBETUNE_RESYNC_SECONDS", "5")),
            progress_min_interval_seconds=float(env.get("KUBETUNE_PROGRESS_MIN_INTERVAL", "5")),
            peering=_bool(env.get("KUBETUNE_PEERING"), False),
            manage_trainer_rbac=_bool(env.get("KUBETUNE_MANAGE_TRAINER_RBAC"), True),
            trainer_cluster_role=env.get("KUBETUNE_TRAINER_CLUSTER_ROLE", "kubetune-trainer"),
            webhook=_bool(env.get("KUBETUNE_WEBHOOK"), False),
            webhook_port=int(env.get("KUBETUNE_WEBHOOK_PORT", "9443")),
            webhook_host=env.get("KUBETUNE_WEBHOOK_HOST") or None,
            webhook_addr=env.get("KUBETUNE_WEBHOOK_ADDR") or None,
            webhook_cert=env.get("KUBETUNE_WEBHOOK_CERT") or None,
            webhook_key=env.get("KUBETUNE_WEBHOOK_KEY") or None,
            webhook_managed=_bool(env.get("KUBETUNE_WEBHOOK_MANAGED"), True),
            webhook_cert_secret=env.get("KUBETUNE_WEBHOOK_CERT_SECRET") or None,
            webhook_cert_namespace=env.get("KUBETUNE_WEBHOOK_CERT_NAMESPACE") or "default",
            webhook_configuration=env.get("KUBETUNE_WEBHOOK_CONFIGURATION") or None,
            webhook_dns_names=tuple(n.strip() for n in env.get("KUBETUNE_WEBHOOK_DNS_NAMES", "").split(",") if n.strip()),
            webhook_cert_check_seconds=float(env.get("KUBETUNE_WEBHOOK_CERT_CHECK_SECONDS", "30")),
            max_workers=int(env.get("KUBETUNE_MAX_WORKERS", "16")),
            retry_base_seconds=float(env.get("KUBETUNE_RETRY_BASE_SECONDS", "1")),
            retry_max_seconds=float(env.get("KUBETUNE_RETRY_MAX_SECONDS", "300")),
            leader_election=_bool(env.get("KUBETUNE_LEADER_ELECTION"), False),
            leader_election_namespace=env.get("KUBETUNE_LEADER_ELECTION_NAMESPACE") or "default",
            leader_election_name=env.get("KUBETUNE_LEADER_ELECTION_NAME") or "kubetune-operator",
            leader_election_lease_seconds=int(env.get("KUBETUNE_LEADER_ELECTION_LEASE_SECONDS", "15")),
            leader_identity=env.get("KUBETUNE_LEADER_IDENTITY") or None,
        )
