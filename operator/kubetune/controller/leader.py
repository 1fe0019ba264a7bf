"""Leader election through a coordination.k8s.io/v1 Lease, so that `replicaCount: 2` runs one
reconciling replica and a warm standby (both keep their caches from the watches and serve the
webhook). The decision of each round is `policy.leader_decision`; this thread reads and writes the
Lease every lease/5 seconds, with the Lease's resourceVersion as write precondition (a 409: someone
else won). A leader that has not renewed for 2/3 of the lease stops reconciling before anyone else
may take over; on a clean stop it releases the Lease (empty holder) so a standby takes over at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.controller.k8s import KubeApi
from kubetune.controller.policy import LeaseView, leader_decision
from kubetune.derivation.timeutil import parse_time

log = logging.getLogger("kubetune.controller")


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaderElector:
    def __init__(self, api: KubeApi, namespace: str, name: str, identity: str, lease_seconds: int = 15,
                 *, on_change: Callable[[bool], None] = lambda _leader: None) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.lease_seconds = lease_seconds
        self.on_change = on_change
        self._renewed_at: float | None = None  # monotonic time of our last successful write as leader
        self._lease: dict[str, Any] | None = None
        self._released = False  # after a clean stop: never take the Lease again

    def is_leader(self) -> bool:
        at = self._renewed_at
        return at is not None and time.monotonic() - at < self.lease_seconds * 2 / 3

    def step(self) -> bool:
        """One round: read the Lease, renew or take it when due; True while leading."""
        was = self.is_leader()
        if self._released:
            return False
        try:
            lease = self.api.get("Lease", self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            view = None if lease is None else LeaseView(
                holder=spec.get("holderIdentity") or None, renewed=parse_time(spec.get("renewTime")),
                duration_seconds=int(spec.get("leaseDurationSeconds") or self.lease_seconds),
                transitions=int(spec.get("leaseTransitions") or 0))
            decision = leader_decision(view, self.identity, datetime.now(UTC), self.lease_seconds)
            if decision.write is not None:
                if lease is None:
                    self._lease = self.api.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                   "metadata": {"name": self.name, "namespace": self.namespace},
                                                   "spec": decision.write})
                    if (self._lease.get("spec") or {}).get("holderIdentity") != self.identity:
                        raise ApiException(status=409, reason="created by another replica")
                else:
                    self._lease = self.api.replace({**lease, "spec": {**spec, **decision.write}})
                self._renewed_at = time.monotonic()
            elif self._renewed_at is not None:
                self._renewed_at = None
        except ApiException as exc:
            if exc.status != 409:
                log.warning("leader election: Lease %s/%s: API %s", self.namespace, self.name, exc.status)
        except Exception as exc:  # a dropped connection: try again next round
            log.warning("leader election: %s", exc)
        now = self.is_leader()
        if now != was:
            log.info("leader election: %s %s the leader (Lease %s/%s)", self.identity, "is now" if now else "is no longer",
                     self.namespace, self.name)
            self.on_change(now)
        return now

    def release(self) -> None:
        """Give the Lease up (a clean stop): a standby takes over on its next round."""
        self._released = True
        if self._lease is None or not self.is_leader():
            return
        self._renewed_at = None
        try:
            lease = self.api.get("Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                self.api.replace({**lease, "spec": {**lease["spec"], "holderIdentity": None}})
        except Exception as exc:
            log.warning("leader election: could not release the Lease: %s", exc)

    def run(self, stop: threading.Event) -> None:
        period = max(0.5, self.lease_seconds / 5)
        while not stop.is_set():
            self.step()
            stop.wait(period)
