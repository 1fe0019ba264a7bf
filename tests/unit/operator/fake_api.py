"""A recording fake of the operator's Kubernetes calls (kubetune.controller.k8s.KubeApi)."""

from __future__ import annotations

import copy
from typing import Any

from kubetune.controller.k8s import ForeignChild
from kubetune.render.meta import controller_uid


class FakeApi:
    """Objects by (kind, namespace, name), each created one with a fresh uid; status patches and
    Events recorded."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.status: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.created = 0
        self.workloads: dict[str, dict[str, Any]] = {}  # Kueue's Workloads, by their Job's uid
        self.pod_event_log: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.pods_of_job: dict[str, list[dict[str, Any]]] = {}

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """What KubeApi.create does on a 409: the existing one if it has the same controlling owner."""
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.calls.append(("create", obj["kind"]))
        if key in self.objects:
            existing = self.objects[key]
            if controller_uid(obj) is not None and controller_uid(existing) != controller_uid(obj):
                raise ForeignChild(existing, controller_uid(obj))
            return existing
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(len(self.calls))
        stored["metadata"]["uid"] = f"uid-{self.created}"
        self.created += 1
        self.objects[key] = stored
        return stored

    def patch_job(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", "Job"))
        job = self.objects[("Job", ns, name)]
        job["spec"].update(body.get("spec", {}))
        job["metadata"].setdefault("annotations", {}).update(body.get("metadata", {}).get("annotations", {}))
        return job

    def patch_status(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", f"{kind}/status"))
        st = self.status.setdefault((kind, ns, name), {})
        for k, v in patch.items():
            if v is None:
                st.pop(k, None)
            else:
                st[k] = v
        return st

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def workload_of(self, ns: str, job_uid: str) -> dict[str, Any] | None:
        self.calls.append(("list", "Workload"))
        return self.workloads.get(job_uid)

    def job_pods(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Pods others (the Job controller) made: `pods_of_job[job_uid]`."""
        self.calls.append(("list", "Pod"))
        return list(self.pods_of_job.get(job_uid, []))

    def pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        """Events others (the cluster autoscaler) posted about a pod: `pod_event_log[(namespace, pod)]`."""
        self.calls.append(("list", "Event"))
        return list(self.pod_event_log.get((namespace, pod), []))

    def collect_garbage(self, owner_uid: str) -> list[dict[str, Any]]:
        """What the garbage collector does once a CR is gone: delete the children it controlled."""
        gone = [k for k, o in self.objects.items() if controller_uid(o) == owner_uid]
        return [self.objects.pop(k) for k in gone]
