"""kopf handlers: thin wiring of watch events to the reconciler, bound to one operator's world.

- the CRs (both kinds): every watch event (create, resume at start-up, update, delete) updates the
  cache and reconciles; a deleted FineTuneJob re-reconciles the PreferenceAlignments that wait on it;
- batch/v1 Jobs and Pods labelled kubetune.io/job: update the cache and reconcile their owner
  (a change of the progress annotation alone is rate-limited);
- a resync thread re-derives the status of every non-terminal job every KUBETUNE_RESYNC_SECONDS
  (grace periods, progress mirroring); a job whose reconcile failed (429, 5xx, a conflict, a dropped
  connection) is retried after an exponential backoff with jitter (policy.retry_delay), not on every
  resync;
- with leader election (several replicas), only the replica holding the Lease reconciles; every
  replica keeps its cache warm from the watches and serves the webhook;
- the validating admission webhook, when KUBETUNE_WEBHOOK is on.
No finalizers: children are garbage-collected through their ownerReferences.

`register` puts them on a kopf registry; kubetune.controller.app.build_operator calls it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import FINETUNEJOB, GROUP, KINDS, LABEL_JOB, PLURALS, VERSION
from kubetune.api.enums import TERMINAL_PHASES
from kubetune.api.spec import FineTuneJobSpec
from kubetune.controller.config import OperatorSettings
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.policy import Bounded, retry_after_seconds, retry_delay
from kubetune.controller.reconciler import Reconciler
from kubetune.controller.webhook import refusal, review, self_signed_certificate
from kubetune.controller.webhook_tls import WebhookCertificates
from kubetune.controller.world import Key, World, trim_pod
from kubetune.derivation import ANNOTATION_PROGRESS

log = logging.getLogger("kubetune.controller")
RETRY_MEMORY = 100_000


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
                 connect: Callable[[], object], *, is_leader: Callable[[], bool] = lambda: True,
                 start_background: Callable[[threading.Event], None] = lambda _stop: None,
                 stop_background: Callable[[], None] = lambda: None,
                 webhook_tls: WebhookCertificates | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.world = world
        self.reconciler = reconciler
        self.metrics = metrics
        self.connect = connect
        self.is_leader = is_leader
        self.start_background = start_background  # leader election (app.py)
        self.stop_background = stop_background  # releases the Lease on a clean stop
        self.webhook_tls = webhook_tls  # the operator's own webhook certificate (KUBETUNE_WEBHOOK_CERT_SECRET)
        self.clock = clock
        self._stop = threading.Event()
        self._stop_metrics: Callable[[], None] | None = None
        # per failing CR: (failures in a row, monotonic time of the next retry); bounded, and a CR that
        # reconciles again (or is deleted) leaves it
        self._retries: Bounded[Key, tuple[int, float]] = Bounded(RETRY_MEMORY)
        self._retries_lock = threading.Lock()

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
        self.start_background(self._stop)
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
        if self.webhook_tls is not None:  # the operator's own certificate, kept in a Secret
            certfile, keyfile, _ = self.webhook_tls.start()
        elif not certfile:  # dev/test: a CA and a certificate of our own, in a temporary folder
            certfile, keyfile, cafile = self_signed_certificate(s.webhook_host or "127.0.0.1",
                                                                tempfile.mkdtemp(prefix="kubetune-webhook-"))
        # kopf re-reads the files this often and restarts its server on a renewed certificate
        return kopf.WebhookServer(port=s.webhook_port, host=s.webhook_host, addr=s.webhook_addr,
                                  certfile=certfile, pkeyfile=keyfile, cafile=cafile,
                                  file_check_interval=s.webhook_cert_check_seconds)

    def stop(self, **_: Any) -> None:
        self._stop.set()
        self.stop_background()
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics = None

    # -- reconciling ---------------------------------------------------------------------------
    def _safe_reconcile(self, key: Key, *, progress_only: bool = False) -> None:
        """Reconcile (only the leader does); a failure is logged and retried after a backoff."""
        if not self.is_leader():
            return
        try:
            self.reconciler.reconcile(key, progress_only=progress_only)
        except ApiException as exc:
            delay = self._failed(key, retry_after_seconds(exc.headers))
            if exc.status in (409, 429) or exc.status >= 500:
                log.warning("%s %s/%s: API %s, retrying in %.1fs", *key, exc.status, delay)
            else:
                log.error("%s %s/%s: API error %s: %s %s; retrying in %.1fs", *key, exc.status, exc.reason,
                          str(exc.body)[:2000], delay)
        except Exception:
            delay = self._failed(key, None)
            log.exception("%s %s/%s: reconcile failed; retrying in %.1fs", *key, delay)
        else:
            with self._retries_lock:
                self._retries.pop(key)

    def _failed(self, key: Key, retry_after: float | None) -> float:
        s = self.settings
        with self._retries_lock:
            attempts = (self._retries.get(key) or (0, 0.0))[0] + 1
            delay = retry_delay(attempts, base=s.retry_base_seconds, cap=s.retry_max_seconds, retry_after=retry_after)
            self._retries[key] = (attempts, self.clock() + delay)
        return delay

    def due(self, key: Key) -> bool:
        """Whether the resync may reconcile `key` now (not while it backs off after a failure)."""
        with self._retries_lock:
            entry = self._retries.get(key)
        return entry is None or self.clock() >= entry[1]

    def resync_once(self) -> None:
        for key, cr in list(self.world.crs.items()):
            st = cr.get("status") or {}
            if (st.get("phase") in TERMINAL_PHASES
                    and st.get("observedGeneration") == (cr.get("metadata") or {}).get("generation")):
                continue
            if self.due(key):
                self._safe_reconcile(key)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.settings.resync_seconds):
            self.resync_once()

    # -- watch events --------------------------------------------------------------------------
    def on_cr_event(self, event: kopf.RawEvent, **_: Any) -> None:
        obj = event["object"]
        if event["type"] == "DELETED":
            meta = obj.get("metadata") or {}
            key: Key = (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
            self.world.drop_cr(key)
            self.reconciler.forget(key)
            with self._retries_lock:
                self._retries.pop(key)
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
