"""kopf handlers: thin wiring of watch events to the reconciler, bound to one operator's world.

- the CRs (both kinds): every watch event (create, resume at start-up, update, delete) updates the
  cache and reconciles; a deleted FineTuneJob re-reconciles the PreferenceAlignments that wait on it;
- batch/v1 Jobs and Pods labelled kubetune.io/job: update the cache and reconcile their owner
  (a change of the progress annotation alone is rate-limited);
- a resync thread re-derives the status of every non-terminal job every KUBETUNE_RESYNC_SECONDS
  (grace periods, progress mirroring, retries after API errors);
- the validating admission webhook, when KUBETUNE_WEBHOOK is on.
No finalizers: children are garbage-collected through their ownerReferences.

`register` puts them on a kopf registry; kubetune.controller.app.build_operator calls it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import FINETUNEJOB, GROUP, KINDS, LABEL_JOB, PLURALS, VERSION
from kubetune.api.enums import TERMINAL_PHASES
from kubetune.api.spec import FineTuneJobSpec
from kubetune.controller.config import OperatorSettings
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.reconciler import Reconciler
from kubetune.controller.webhook import refusal, review, self_signed_certificate
from kubetune.controller.world import Key, World, trim_pod
from kubetune.derivation import ANNOTATION_PROGRESS

log = logging.getLogger("kubetune.controller")


def _pod_signature(pod: dict[str, Any] | None) -> Any:
    """What matters for the phase: everything but the progress annotation."""
    if pod is None:
        return None
    st = pod.get("status") or {}
    conds = tuple((c.get("type"), c.get("status"), c.get("reason")) for c in st.get("conditions") or [])
    states = tuple((cs.get("name"), tuple(sorted((cs.get("state") or {}).keys())),
                    str((cs.get("state") or {}).get("waiting", {}).get("reason")))
                   for cs in st.get("containerStatuses") or [])
    return st.get("phase"), conds, states


def _progress(pod: dict[str, Any] | None) -> Any:
    return ((pod or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION_PROGRESS)


class Handlers:
    """The handlers of one operator. `connect` loads the API credentials at start-up (fail early)."""

    def __init__(self, settings: OperatorSettings, world: World, reconciler: Reconciler, metrics: OperatorMetrics,
                 connect: Callable[[], object]) -> None:
        self.settings = settings
        self.world = world
        self.reconciler = reconciler
        self.metrics = metrics
        self.connect = connect
        self._stop = threading.Event()
        self._stop_metrics: Callable[[], None] | None = None

    # -- start-up and clean-up -----------------------------------------------------------------
    def configure(self, settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        s = self.settings
        self._kopf_settings(settings)
        if s.webhook:
            settings.admission.server = self._webhook_server()
            if s.webhook_managed:
                settings.admission.managed = f"validate.{GROUP}"
        if s.metrics_port:
            self._stop_metrics = self.metrics.serve(s.metrics_port)
        self.connect()
        self._stop.clear()
        threading.Thread(target=self._resync_loop, name="kubetune-resync", daemon=True).start()
        logger.info("kubetune operator: image %s, namespaces %s, metrics :%s, webhook %s",
                    s.render.trainer_image, ",".join(s.namespaces) or "all", s.metrics_port,
                    "on" if s.webhook else "off")

    def _kopf_settings(self, settings: kopf.OperatorSettings) -> None:
        settings.posting.level = logging.WARNING
        settings.peering.standalone = not self.settings.peering
        settings.peering.name = "kubetune"
        settings.execution.max_workers = self.settings.max_workers
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.persistence.finalizer = f"{GROUP}/operator"

    def _webhook_server(self) -> kopf.WebhookServer:
        s = self.settings
        certfile, keyfile, cafile = s.webhook_cert, s.webhook_key, None
        if not certfile:  # dev/test: a self-signed certificate that is its own CA
            certfile, keyfile = self_signed_certificate(s.webhook_host or "127.0.0.1",
                                                        tempfile.mkdtemp(prefix="kubetune-webhook-"))
            cafile = certfile
        return kopf.WebhookServer(port=s.webhook_port, host=s.webhook_host, addr=s.webhook_addr,
                                  certfile=certfile, pkeyfile=keyfile, cafile=cafile)

    def stop(self, **_: Any) -> None:
        self._stop.set()
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics = None

    # -- reconciling ---------------------------------------------------------------------------
    def _safe_reconcile(self, key: Key, *, progress_only: bool = False) -> None:
        """Reconcile; API errors that may heal are retried by the resync loop (and logged)."""
        try:
            self.reconciler.reconcile(key, progress_only=progress_only)
        except ApiException as exc:
            if exc.status in (409, 429) or exc.status >= 500:
                log.warning("%s %s/%s: API %s, retrying on the next resync", *key, exc.status)
            else:
                log.error("%s %s/%s: API error %s: %s %s", *key, exc.status, exc.reason, str(exc.body)[:2000])
        except Exception:
            log.exception("%s %s/%s: reconcile failed; retrying on the next resync", *key)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.settings.resync_seconds):
            for key, cr in list(self.world.crs.items()):
                st = cr.get("status") or {}
                if (st.get("phase") in TERMINAL_PHASES
                        and st.get("observedGeneration") == (cr.get("metadata") or {}).get("generation")):
                    continue
                self._safe_reconcile(key)

    # -- watch events --------------------------------------------------------------------------
    def on_cr_event(self, event: kopf.RawEvent, **_: Any) -> None:
        obj = event["object"]
        if event["type"] == "DELETED":
            meta = obj.get("metadata") or {}
            key: Key = (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
            self.world.drop_cr(key)
            self.reconciler.forget(key)
        else:
            key = self.world.put_cr(obj)
            self._safe_reconcile(key)
        if key[0] == FINETUNEJOB:
            for dep in self.world.dependents(key):
                self._safe_reconcile(dep)

    def on_job_event(self, event: kopf.RawEvent, **_: Any) -> None:
        obj = event["object"]
        key = self.world.drop_job(obj) if event["type"] == "DELETED" else self.world.put_job(obj)
        if key is not None:
            self._safe_reconcile(key)

    def on_pod_event(self, event: kopf.RawEvent, **_: Any) -> None:
        obj = event["object"]
        if event["type"] == "DELETED":
            key = self.world.drop_pod(obj)
            if key is not None:
                self._safe_reconcile(key)
            return
        key, old = self.world.put_pod(obj)
        if key is None:
            return
        cur = trim_pod(obj)
        same = old is not None and _pod_signature(old) == _pod_signature(cur)
        progress_only = same and _progress(old) != _progress(cur)
        if same and not progress_only:
            return  # nothing we read changed
        self._safe_reconcile(key, progress_only=progress_only)

    def admission(self, *, body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
        old = kwargs.get("old")
        ns = str((body.get("metadata") or {}).get("namespace"))

        def lookup(name: str) -> FineTuneJobSpec | None:
            cr = self.world.cr((FINETUNEJOB, ns, name))
            return FineTuneJobSpec.model_validate(cr.get("spec") or {}) if cr else None

        errors, warns = review(dict(body), dict(old) if old else None, lookup)
        warnings.extend(warns)
        if errors:
            raise kopf.AdmissionError(refusal(errors), code=422)


def register(handlers: Handlers, registry: kopf.OperatorRegistry) -> None:
    """Put the handlers on `registry`; the webhook's only when settings.webhook is on. The ids are
    stable: the chart's ValidatingWebhookConfiguration names `validate-<plural>`."""
    on = kopf.on
    # kopf's login from the kubernetes client (in-cluster, else kubeconfig: what KubeApi loads); only
    # kopf's default registry adds it by itself
    on.login(registry=registry, id="login_via_client", errors=kopf.ErrorsMode.IGNORED)(kopf.login_via_client)
    on.startup(registry=registry, id="configure")(handlers.configure)
    on.cleanup(registry=registry, id="stop")(handlers.stop)
    for kind in KINDS:
        on.event(GROUP, VERSION, PLURALS[kind], id=f"{PLURALS[kind]}-event", registry=registry)(handlers.on_cr_event)
    on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT}, id="on_job_event",
             registry=registry)(handlers.on_job_event)
    on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, id="on_pod_event",
             registry=registry)(handlers.on_pod_event)
    if handlers.settings.webhook:
        for kind in KINDS:
            on.validate(GROUP, VERSION, PLURALS[kind], id=f"validate-{PLURALS[kind]}", operations=["CREATE", "UPDATE"],
                        registry=registry)(handlers.admission)
