"""The few Kubernetes API calls the operator makes (kubernetes client, synchronous: kopf runs sync
handlers in its thread pool), on a client of its own (`KubeApi`: one per operator). Every call is
counted in kubetune_operator_api_requests_total.

RBAC, one line per call (the Helm chart's ClusterRole mirrors this):
  kubetune.io finetunejobs, preferencealignments     get list watch (kopf), patch (status subresource)
  kubetune.io finetunejobs/status, .../status        patch
  kubetune.io finetunejobs/finalizers, .../finalizers update (blockOwnerDeletion on children)
  batch jobs                                          get list watch create patch
  "" configmaps, services                             get create
  "" pods                                             get list watch (list: a finished Job's pods, when
                                                      its watch events are late)
  "" events, events.k8s.io events                     create (kopf posts some too); list (an unschedulable
                                                      pod's cluster-autoscaler events, by field selector)
  kueue.x-k8s.io workloads                            list (Kueue's Workload of a queued Job it holds suspended)
  "" serviceaccounts                                  get create (trainer SA, when manage_trainer_rbac)
  rbac rolebindings                                   get create (binds the trainer ClusterRole)
  rbac clusterroles (resourceNames kubetune-trainer)  bind
  "" namespaces                                       list watch (kopf, when watching all namespaces)
  apiextensions customresourcedefinitions             list watch (kopf discovery)
  admissionregistration validatingwebhookconfigurations get list create patch (kopf-managed webhook)
  coordination leases (own namespace)                 get create update (leader election, replicaCount > 1)
  "" secrets (own namespace, its webhook Secret only)  get update (the webhook certificate: webhook_tls.py)
  admissionregistration validatingwebhookconfigurations (the chart's only)  get update (its caBundle)
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import GROUP, PLURALS, VERSION
from kubetune.controller.metrics import OperatorMetrics
from kubetune.derivation.kueue import WORKLOAD_JOB_UID_LABEL
from kubetune.derivation.timeutil import format_time
from kubetune.render.meta import controller_uid

COMPONENT = "kubetune-operator"

# kind ⇒ (API path prefix, plural) for what the operator creates
_PATHS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Pod": ("/api/v1", "pods"),
    "Job": ("/apis/batch/v1", "jobs"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Secret": ("/api/v1", "secrets"),
    "FineTuneJob": (f"/apis/{GROUP}/{VERSION}", PLURALS["FineTuneJob"]),
    "PreferenceAlignment": (f"/apis/{GROUP}/{VERSION}", PLURALS["PreferenceAlignment"]),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),  # Kueue's, read only
}


class ForeignChild(Exception):
    """`create` found an object of that name whose controlling owner is not the one asked for: most
    often the child of a deleted CR of the same name, not garbage-collected yet; or one orphaned
    (`kubectl delete --cascade=orphan`) or made by hand. It is never adopted: it would bring an old
    run's state (and result) to a new CR."""

    def __init__(self, existing: dict[str, Any], owner_uid: str | None) -> None:
        meta = existing.get("metadata") or {}
        self.kind, self.name, self.uid = str(existing.get("kind")), str(meta.get("name")), str(meta.get("uid"))
        owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        # "Kind name (uid …)" of the controlling owner; None: orphaned or made by hand
        self.owner = f"{owner.get('kind')} {owner.get('name')} (uid {owner.get('uid')})" if owner else None
        super().__init__(f"{self.kind} {meta.get('namespace')}/{self.name} is controlled by "
                         f"{self.owner or 'no owner'}, not by uid {owner_uid}")


def _path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> tuple[str, str]:
    prefix, plural = _PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path, plural + (f"/{sub}" if sub else "")


class KubeApi:
    """The operator's API calls on its own client, loaded on first use from the in-cluster service
    account or else the kubeconfig (`KUBECONFIG`, ~/.kube/config)."""

    def __init__(self, metrics: OperatorMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self._lock = threading.Lock()
        self._api: client.ApiClient | None = None

    def connect(self) -> client.ApiClient:
        """The API client (raises when there are no credentials)."""
        with self._lock:
            if self._api is None:
                cfg = client.Configuration()
                try:
                    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                except config.ConfigException:
                    config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                cfg.connection_pool_maxsize = 32
                self._api = client.ApiClient(cfg)
            return self._api

    def request(self, method: str, path: str, body: Any = None, *, resource: str,
                content_type: str = "application/json") -> dict[str, Any]:
        """One API request with plain JSON in and out (no model conversion); raises ApiException."""
        self.metrics.api_requests.labels(verb=method.lower() if method != "POST" else "create",
                                         resource=resource).inc()
        api = self.connect()
        _, url, headers, _, _ = api.param_serialize(
            method, path, header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"])
        resp = api.rest_client.request(method, url, headers=headers,  # type: ignore[no-untyped-call]
                                       body=body, _request_timeout=30)
        resp.read()
        if not 200 <= resp.status < 300:
            exc = ApiException(status=resp.status, reason=resp.reason, body=resp.data)
            exc.headers = dict(getattr(resp, "headers", None) or {})  # Retry-After (429) steers the backoff
            raise exc
        return json.loads(resp.data) if resp.data else {}

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create a namespaced object. When one of that name exists already (a restart, a race) and
        has the same controlling owner, return it — never a second copy. One controlled by another
        owner, or by none, raises ForeignChild. Objects created without an owner (the trainer's
        ServiceAccount, RoleBinding) are shared: the existing one is returned."""
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        path, resource = _path(kind, ns)
        try:
            return self.request("POST", path, obj, resource=resource)
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.get(kind, ns, name)
        if existing is None:  # deleted in between: create it now (a second 409 is retried by the caller)
            return self.request("POST", path, obj, resource=resource)
        owner = controller_uid(obj)
        if owner is not None and controller_uid(existing) != owner:
            raise ForeignChild(existing, owner)
        return existing

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        path, resource = _path(kind, namespace, name)
        try:
            return self.request("GET", path, resource=resource)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def workload_of(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        """Kueue's Workload of the Job with that uid (Kueue labels it kueue.x-k8s.io/job-uid); None when
        there is none yet, or Kueue is not installed (404), or the operator may not read it (403)."""
        path, resource = _path("Workload", namespace)
        try:
            found = self.request("GET", f"{path}?labelSelector={WORKLOAD_JOB_UID_LABEL}%3D{job_uid}",
                                 resource=resource)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        items = found.get("items") or []
        return items[0] if items else None

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT a namespaced object; with metadata.resourceVersion set, a 409 says another writer won."""
        meta = obj["metadata"]
        path, resource = _path(obj["kind"], meta["namespace"], meta["name"])
        return self.request("PUT", path, obj, resource=resource)

    def job_pods(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """The pods of one Job (label batch.kubernetes.io/controller-uid), read from the API server."""
        selector = urllib.parse.quote(f"batch.kubernetes.io/controller-uid={job_uid}")
        path, resource = _path("Pod", namespace)
        return list(self.request("GET", f"{path}?labelSelector={selector}", resource=resource).get("items") or [])

    def pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        """The core/v1 Events about pod `pod` (the cluster autoscaler's TriggeredScaleUp/NotTriggerScaleUp)."""
        selector = urllib.parse.quote(f"involvedObject.kind=Pod,involvedObject.name={pod}")
        path, resource = _path("Event", namespace)
        return list(self.request("GET", f"{path}?fieldSelector={selector}&limit=100", resource=resource).get("items") or [])

    def patch_job(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        path, resource = _path("Job", namespace, name)
        return self.request("PATCH", path, body, resource=resource, content_type="application/merge-patch+json")

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the status subresource (keys set to None are removed)."""
        path, resource = _path(kind, namespace, name, "status")
        return self.request("PATCH", path, {"status": status}, resource=resource,
                            content_type="application/merge-patch+json")

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = involved.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        now = format_time(datetime.now(UTC))
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:12]}", "namespace": ns},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta.get("name"), "namespace": ns, "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        path, resource = _path("Event", ns)
        self.request("POST", path, event, resource=resource)
