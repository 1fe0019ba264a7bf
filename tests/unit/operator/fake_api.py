"""A recording fake of the operator's Kubernetes calls (kubetune.operator.k8s.KubeApi)."""

from __future__ import annotations

import copy
from typing import Any


class FakeApi:
    """Objects by (kind, namespace, name), each created one with a fresh uid; status patches and
    Events recorded."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.status: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.calls.append(("create", obj["kind"]))
        if key in self.objects:
            return self.objects[key]  # 409 ⇒ the existing one
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(len(self.calls))
        stored["metadata"]["uid"] = f"uid-{len(self.objects)}"
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
