"""Labels, annotations and ownerReferences every child carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.constants import API_VERSION, LABEL_JOB, LABEL_KIND, LABEL_MANAGED_BY
from kubetune.render.names import label_value

MANAGED_BY = "kubetune"
ANNOTATION_OWNER = "kubetune.io/owner"  # the CR's full name (a label value is cut to 63 characters)


def child_labels(kind: str, name: str) -> dict[str, str]:
    return {LABEL_JOB: label_value(name), LABEL_KIND: kind, LABEL_MANAGED_BY: MANAGED_BY}


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """The CR as the controlling owner: children are garbage-collected with it."""
    return {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def child_metadata(kind: str, name: str, namespace: str, uid: str | None, child_name: str,
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": child_name,
        "namespace": namespace,
        "labels": {**child_labels(kind, name), **(labels or {})},
        "annotations": {ANNOTATION_OWNER: name},
    }
    if uid:
        meta["ownerReferences"] = [owner_reference(kind, name, uid)]
    return meta


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of an object's controlling owner (a child's CR, a pod's Job), or None without one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
