"""kopf handlers: thin wiring of watch events to the reconciler.

- the CRs (both kinds): every watch event (create, resume at start-up, update, delete) updates the
  cache and reconciles; a deleted FineTuneJob re-reconciles the PreferenceAlignments that wait on it;
- batch/v1 Jobs and Pods labelled kubetune.io/job: update the cache and reconcile their owner
  (a change of the progress annotation alone is rate-limited);
- a resync thread re-derives the status of every non-terminal job every KUBETUNE_RESYNC_SECONDS
  (grace periods, progress mirroring, retries after API errors);
- the validating admission webhook, when KUBETUNE_WEBHOOK is on.
No finalizers: children are garbage-collected through their ownerReferences.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import FINETUNEJOB, GROUP, KINDS, LABEL_JOB, PLURALS, VERSION
from kubetune.api.enums import TERMINAL_PHASES
from kubetune.api.spec import FineTuneJobSpec
from kubetune.operator import k8s, metrics
from kubetune.operator.config import OperatorSettings
from kubetune.operator.reconciler import Reconciler
from kubetune.operator.webhook import refusal, review
from kubetune.operator.world import Key, World
from kubetune.status import ANNOTATION_PROGRESS

log = logging.getLogger("kubetune.operator")

SETTINGS = OperatorSettings.from_env()
WORLD = World()
RECONCILER = Reconciler(WORLD, SETTINGS, k8s)
_stop = threading.Event()


def _safe_reconcile(key: Key, *, progress_only: bool = False) -> None:
    """Reconcile; API errors that may heal are retried by the resync loop (and logged)."""
    try:
        RECONCILER.reconcile(key, progress_only=progress_only)
    except ApiException as exc:
        if exc.status in (409, 429) or exc.status >= 500:
            log.warning("%s %s/%s: API %s, retrying on the next resync", *key, exc.status)
        else:
            log.error("%s %s/%s: API error %s: %s %s", *key, exc.status, exc.reason, str(exc.body)[:2000])
    except Exception:
        log.exception("%s %s/%s: reconcile failed; retrying on the next resync", *key)


def _resync_loop() -> None:
    while not _stop.wait(SETTINGS.resync_seconds):
        for key, cr in list(WORLD.crs.items()):
            st = cr.get("status") or {}
            if st.get("phase") in TERMINAL_PHASES and st.get("observedGeneration") == (cr.get("metadata") or {}).get("generation"):
                continue
            _safe_reconcile(key)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.peering.standalone = not SETTINGS.peering
    settings.peering.name = "kubetune"
    settings.execution.max_workers = SETTINGS.max_workers
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/operator"
    if SETTINGS.webhook:
        certfile, keyfile = SETTINGS.webhook_cert, SETTINGS.webhook_key
        cafile = None
        if not certfile:  # dev/test: a self-signed certificate that is its own CA
            import tempfile

            from kubetune.operator.webhook import self_signed_certificate

            certfile, keyfile = self_signed_certificate(SETTINGS.webhook_host or "127.0.0.1",
                                                        tempfile.mkdtemp(prefix="kubetune-webhook-"))
            cafile = certfile
        settings.admission.server = kopf.WebhookServer(
            port=SETTINGS.webhook_port, host=SETTINGS.webhook_host, addr=SETTINGS.webhook_addr,
            certfile=certfile, pkeyfile=keyfile, cafile=cafile)
        if SETTINGS.webhook_managed:
            settings.admission.managed = f"validate.{GROUP}"
    if SETTINGS.metrics_port:
        from prometheus_client import start_http_server

        metrics.REGISTRY.register(metrics.JobsCollector(WORLD.objects))
        start_http_server(SETTINGS.metrics_port, registry=metrics.REGISTRY)
    k8s.api_client()
    _stop.clear()
    threading.Thread(target=_resync_loop, name="kubetune-resync", daemon=True).start()
    logger.info("kubetune operator: image %s, namespaces %s, metrics :%s, webhook %s",
                SETTINGS.render.trainer_image, ",".join(SETTINGS.namespaces) or "all",
                SETTINGS.metrics_port, "on" if SETTINGS.webhook else "off")


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    _stop.set()


def on_cr_event(event: kopf.RawEvent, **_: Any) -> None:
    obj = event["object"]
    if event["type"] == "DELETED":
        meta = obj.get("metadata") or {}
        key: Key = (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        WORLD.drop_cr(key)
        RECONCILER.forget(key)
        if key[0] == FINETUNEJOB:
            for dep in WORLD.dependents(key):
                _safe_reconcile(dep)
        return
    key = WORLD.put_cr(obj)
    _safe_reconcile(key)
    if key[0] == FINETUNEJOB:
        for dep in WORLD.dependents(key):
            _safe_reconcile(dep)


for _kind in KINDS:
    kopf.on.event(GROUP, VERSION, PLURALS[_kind], id=f"{PLURALS[_kind]}-event")(on_cr_event)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT})
def on_job_event(event: kopf.RawEvent, **_: Any) -> None:
    obj = event["object"]
    key = WORLD.drop_job(obj) if event["type"] == "DELETED" else WORLD.put_job(obj)
    if key is not None:
        _safe_reconcile(key)


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


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def on_pod_event(event: kopf.RawEvent, **_: Any) -> None:
    obj = event["object"]
    if event["type"] == "DELETED":
        key = WORLD.drop_pod(obj)
        if key is not None:
            _safe_reconcile(key)
        return
    key, old = WORLD.put_pod(obj)
    if key is None:
        return
    new = WORLD.pods_of(key)
    name = (obj.get("metadata") or {}).get("name")
    cur = next((p for p in new if p["metadata"]["name"] == name), None)
    progress_only = (old is not None and _pod_signature(old) == _pod_signature(cur)
                     and (old["metadata"]["annotations"].get(ANNOTATION_PROGRESS)
                          != (cur or {}).get("metadata", {}).get("annotations", {}).get(ANNOTATION_PROGRESS)))
    if old is not None and not progress_only and _pod_signature(old) == _pod_signature(cur):
        return  # nothing we read changed
    _safe_reconcile(key, progress_only=progress_only)


def _admission(*, body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
    old = kwargs.get("old")
    meta = body.get("metadata") or {}
    ns = str(meta.get("namespace"))

    def lookup(name: str) -> FineTuneJobSpec | None:
        cr = WORLD.cr((FINETUNEJOB, ns, name))
        return FineTuneJobSpec.model_validate(cr.get("spec") or {}) if cr else None

    errors, warns = review(dict(body), dict(old) if old else None, lookup)
    warnings.extend(warns)
    if errors:
        raise kopf.AdmissionError(refusal(errors), code=422)


if SETTINGS.webhook:
    for _kind in KINDS:
        kopf.on.validate(GROUP, VERSION, PLURALS[_kind], id=f"validate-{PLURALS[_kind]}",
                         operations=["CREATE", "UPDATE"])(_admission)
