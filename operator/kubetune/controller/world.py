"""What the operator has seen: CRs, Jobs and Pods from kopf's watch events, indexed by the CR they
belong to. The reconciler reads the world from here, so a reconcile costs no GET requests.

Jobs and Pods are indexed by the CR's name (label and annotation), but a CR deleted and created
again under the same name is another CR: its children are only those whose controlling owner is
the CR's uid (Job) or the current Job's uid (Pods). An old run's Job or Pods, still being
garbage-collected, are never read as the new run's.

A CR has up to two Jobs: the data preflight's (label kubetune.io/component=preflight) and the
trainer's (any other); each has its own table, and its pods are those it controls.

Bounded: everything here is keyed by a live CR and dropped with it (`drop_cr`), except `deleted`
(names of FineTuneJobs seen deleted, for the PreferenceAlignments that wait on them), which keeps
the most recent DELETED_MEMORY. Which copy of an object is newer is decided by the watch order
(`policy.Freshness`), never by comparing resourceVersions: they are opaque."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from kubetune.api.constants import COMPONENT_PREFLIGHT, LABEL_COMPONENT, LABEL_KIND
from kubetune.controller.policy import Bounded, Freshness
from kubetune.derivation.retry import job_attempt as attempt
from kubetune.render.meta import ANNOTATION_OWNER, controller_uid

Key = tuple[str, str, str]  # (kind, namespace, name)
DELETED_MEMORY = 10_000  # CR names remembered as deleted (a PreferenceAlignment's ref then fails, not waits)

_KEEP_POD_ANNOTATIONS = ("kubetune.io/progress", ANNOTATION_OWNER)


def trim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without managedFields (most of an object's bytes)."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def trim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                     "creationTimestamp": meta.get("creationTimestamp"), "labels": meta.get("labels") or {},
                     "annotations": {k: v for k, v in ann.items() if k in _KEEP_POD_ANNOTATIONS},
                     "ownerReferences": meta.get("ownerReferences") or []},
        "status": obj.get("status") or {},
    }


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    kind, name = labels.get(LABEL_KIND), ann.get(ANNOTATION_OWNER)
    if not kind or not name:
        return None
    return (str(kind), str(meta.get("namespace")), str(name))


class World:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.crs: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, Any]] = {}  # trainer Jobs
        self.preflights: dict[Key, dict[str, Any]] = {}  # data preflight Jobs
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}
        self.deleted: Bounded[Key, bool] = Bounded(DELETED_MEMORY)  # CRs seen deleted by this process
        self._fresh: dict[str, Freshness] = {"cr": Freshness(), "job": Freshness(), "preflight": Freshness()}

    # CRs
    def put_cr(self, obj: Mapping[str, Any], *, written: bool = False) -> Key:
        """A CR from a watch event, or with `written` from the response to our own write: a late
        watch event must not bring back an older status than the one we patched."""
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        with self._lock:
            fresh = self._fresh["cr"]
            if fresh.written(key, obj) if written else fresh.watched(key, obj):
                self.crs[key] = trim(obj)
            self.deleted.pop(key)
        return key

    def drop_cr(self, key: Key) -> None:
        with self._lock:
            self.crs.pop(key, None)
            self.jobs.pop(key, None)
            self.preflights.pop(key, None)
            self.pods.pop(key, None)
            for fresh in self._fresh.values():
                fresh.forget(key)
            self.deleted[key] = True

    def was_deleted(self, key: Key) -> bool:
        with self._lock:
            return key in self.deleted

    def cr(self, key: Key) -> dict[str, Any] | None:
        return self.crs.get(key)

    def objects(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            items = list(self.crs.values())
        return iter(items)

    def update_cr_status(self, key: Key, status: dict[str, Any]) -> None:
        with self._lock:
            cr = self.crs.get(key)
            if cr is not None:
                self.crs[key] = {**cr, "status": status}

    # Jobs
    def _table(self, obj: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
        return self.preflights if self._kind(obj) == "preflight" else self.jobs

    @staticmethod
    def _kind(obj: Mapping[str, Any]) -> str:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return "preflight" if labels.get(LABEL_COMPONENT) == COMPONENT_PREFLIGHT else "job"

    def put_job(self, obj: Mapping[str, Any], *, written: bool = False, created: bool = False) -> Key | None:
        """A Job from a watch event, or with `written` from our own patch (`created`: our create):
        never replace a newer copy with an older one (a create response racing a watch event)."""
        key = owner_key(obj)
        if key is not None:
            with self._lock:
                table = self._table(obj)
                old = table.get(key)
                if old is not None and _other_attempt(obj, old):
                    # a CR's later attempt (spec.training.oomRetry) is never replaced by an earlier one
                    newest = attempt(obj) > attempt(old)
                else:
                    fresh = self._fresh[self._kind(obj)]
                    newest = fresh.written(key, obj, created=created) if written or created else fresh.watched(key, obj)
                if newest:
                    table[key] = trim(obj)
        return key

    def sizes(self) -> dict[str, int]:
        """How many entries each cache holds (the soak test checks they follow the live CRs)."""
        with self._lock:
            return {"crs": len(self.crs), "jobs": len(self.jobs), "preflights": len(self.preflights),
                    "pods": len(self.pods), "deleted": len(self.deleted),
                    **{f"fresh_{k}": len(v) for k, v in self._fresh.items()}}

    def drop_job(self, obj: Mapping[str, Any]) -> Key | None:
        key = owner_key(obj)
        if key is not None:
            with self._lock:
                table = self._table(obj)
                cur = table.get(key)
                if cur is not None and (cur.get("metadata") or {}).get("uid") == (obj.get("metadata") or {}).get("uid"):
                    table.pop(key, None)
        return key

    def _owned(self, table: dict[Key, dict[str, Any]], key: Key) -> dict[str, Any] | None:
        with self._lock:
            job = table.get(key)
            cr_uid = ((self.crs.get(key) or {}).get("metadata") or {}).get("uid")
        return job if job is not None and controller_uid(job) == cr_uid else None

    def job(self, key: Key) -> dict[str, Any] | None:
        """The CR's trainer Job: only one whose controlling owner is this CR (by uid) — not an orphan."""
        return self._owned(self.jobs, key)

    def preflight_job(self, key: Key) -> dict[str, Any] | None:
        """The CR's data preflight Job, owned as :meth:`job` is."""
        return self._owned(self.preflights, key)

    # Pods
    def put_pod(self, obj: Mapping[str, Any]) -> tuple[Key | None, dict[str, Any] | None]:
        """Returns the key and the previous version of the pod."""
        key = owner_key(obj)
        if key is None:
            return None, None
        name = str((obj.get("metadata") or {}).get("name"))
        with self._lock:
            if key not in self.crs and key in self.deleted:  # a deleted CR's pod, still terminating
                return key, None
            pods = self.pods.setdefault(key, {})
            old = pods.get(name)
            pods[name] = trim_pod(obj)
        return key, old

    def drop_pod(self, obj: Mapping[str, Any]) -> Key | None:
        key = owner_key(obj)
        if key is not None:
            with self._lock:
                pods = self.pods.get(key)
                if pods is not None:
                    pods.pop(str((obj.get("metadata") or {}).get("name")), None)
                    if not pods:
                        del self.pods[key]
        return key

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        """The pods of the CR's current trainer Job (none before it has one); a pod without an owner
        (made by hand, never by the Job controller) is kept."""
        job = self.job(key)
        job_uid = (job.get("metadata") or {}).get("uid") if job is not None else None
        with self._lock:
            pods = list(self.pods.get(key, {}).values())
        return [p for p in pods if controller_uid(p) in (None, job_uid)]

    def preflight_pods_of(self, key: Key) -> list[dict[str, Any]]:
        """The pods of the CR's data preflight Job."""
        job = self.preflight_job(key)
        if job is None:
            return []
        job_uid = (job.get("metadata") or {}).get("uid")
        with self._lock:
            pods = list(self.pods.get(key, {}).values())
        return [p for p in pods if controller_uid(p) == job_uid]

    def dependents(self, ftj_key: Key) -> list[Key]:
        """PreferenceAlignments referencing a FineTuneJob."""
        _, ns, name = ftj_key
        with self._lock:
            return [k for k, cr in self.crs.items()
                    if k[0] == "PreferenceAlignment" and k[1] == ns
                    and ((cr.get("spec") or {}).get("fineTuneJobRef") or {}).get("name") == name]



def _other_attempt(obj: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Two Jobs of the same CR that are different attempts (spec.training.oomRetry)."""
    return controller_uid(obj) == controller_uid(old) and attempt(obj) != attempt(old)
