"""The operator, built from its settings in one place: `build_operator(settings) -> Operator`.

Everything one operator holds — the cache of what it has seen (World), the Reconciler, its API
client, its Prometheus registry and the kopf registry its handlers are on — is made here and
belongs to the returned object: two operators in one process share nothing. Callers:
`kubetune operator` (kubetune.cli.operator), `kopf run -m kubetune.controller.main`, the unit tests
(with a fake API) and, through `kubetune operator`, the e2e tests and benchmarks/operator_scale.py.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import kopf

from kubetune.controller.config import OperatorSettings
from kubetune.controller.handlers import Handlers, register
from kubetune.controller.k8s import KubeApi
from kubetune.controller.leader import LeaderElector, default_identity
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.reconciler import ClusterApi, Reconciler
from kubetune.controller.webhook_tls import WebhookCertificates
from kubetune.controller.world import World


@dataclass(frozen=True)
class Operator:
    settings: OperatorSettings
    world: World
    reconciler: Reconciler
    metrics: OperatorMetrics
    handlers: Handlers
    registry: kopf.OperatorRegistry

    def run(self, *, liveness_endpoint: str | None = None, stop_flag: threading.Event | None = None,
            ready_flag: threading.Event | None = None) -> None:
        """Run until SIGINT/SIGTERM or `stop_flag` is set (in a thread: signals reach only the main
        one); `ready_flag` is set once the operator has started."""
        ns = self.settings.namespaces
        kopf.run(registry=self.registry, clusterwide=not ns, namespaces=list(ns),
                 standalone=not self.settings.peering, liveness_endpoint=liveness_endpoint,
                 stop_flag=stop_flag, ready_flag=ready_flag)


def build_operator(settings: OperatorSettings, *, api: ClusterApi | None = None,
                   registry: kopf.OperatorRegistry | None = None,
                   clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Operator:
    """The operator for `settings`, its handlers on `registry` (a fresh one by default).

    `api`: the Kubernetes calls (default: a KubeApi of its own, credentials loaded at start-up);
    tests pass a recording fake. `clock`: the time the status is derived at.
    """
    world = World()
    metrics = OperatorMetrics(world.objects)
    kube = api if api is not None else KubeApi(metrics)
    reconciler = Reconciler(world, settings, kube, metrics, clock=clock)
    metrics.track_caches(lambda: {**world.sizes(), **reconciler.sizes()})
    connect = kube.connect if isinstance(kube, KubeApi) else (lambda: None)
    elector = None
    if settings.leader_election and isinstance(kube, KubeApi):
        elector = LeaderElector(kube, settings.leader_election_namespace, settings.leader_election_name,
                                settings.leader_identity or default_identity(), settings.leader_election_lease_seconds)

    def start_background(stop: threading.Event) -> None:
        if elector is not None:
            threading.Thread(target=elector.run, args=(stop,), name="kubetune-leader", daemon=True).start()

    webhook_tls = None
    if settings.webhook and settings.webhook_cert_secret and isinstance(kube, KubeApi):
        webhook_tls = WebhookCertificates(
            kube, settings.webhook_cert_namespace, settings.webhook_cert_secret, settings.webhook_configuration,
            settings.webhook_dns_names or (settings.webhook_host or "127.0.0.1",),
            tempfile.mkdtemp(prefix="kubetune-webhook-"), settings.webhook_cert_check_seconds)

    def stop_background() -> None:
        if elector is not None:
            elector.release()
        if webhook_tls is not None:
            webhook_tls.stop()

    handlers = Handlers(settings, world, reconciler, metrics, connect, webhook_tls=webhook_tls,
                        is_leader=elector.is_leader if elector is not None else (lambda: True),
                        start_background=start_background,
                        stop_background=stop_background)
    registry = registry if registry is not None else kopf.OperatorRegistry()
    register(handlers, registry)
    return Operator(settings=settings, world=world, reconciler=reconciler, metrics=metrics,
                    handlers=handlers, registry=registry)
