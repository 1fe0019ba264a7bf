"""Headless Service for torchrun rendezvous of a multi-node (Indexed) Job: pod i is reachable as
`<job>-<i>.<service>`, so the master address is pod 0's hostname (the JobSet pattern)."""

from __future__ import annotations

from typing import Any

from kubetune.api.constants import LABEL_JOB, LABEL_KIND
from kubetune.render.meta import child_labels, child_metadata
from kubetune.render.names import job_name, service_name


def build_service(kind: str, name: str, namespace: str, uid: str | None, *, port: int) -> dict[str, Any]:
    labels = child_labels(kind, name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(kind, name, namespace, uid, service_name(kind, name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rendezvous happens before readiness
            "selector": {LABEL_JOB: labels[LABEL_JOB], LABEL_KIND: kind},
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def master_address(kind: str, name: str) -> str:
    return f"{job_name(kind, name)}-0.{service_name(kind, name)}"
