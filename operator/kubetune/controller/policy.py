"""The operator's plain decisions, kept apart from kopf and the API client so each is a function with
unit tests (tests/unit/operator/test_policy.py):

- `retry_delay`: how long a job waits before the next reconcile after an API error that may heal
  (409, 429, 5xx, a dropped connection): exponential, capped, with jitter, and never sooner than a
  `Retry-After` the API server sent;
- `Bounded`: a mapping that never holds more than `maxsize` entries (least recently used go first)
  and, with `ttl`, forgets entries older than that — every per-CR cache of the operator is one, so
  nothing grows with the number of CRs ever seen;
- `Freshness`: whether an object read from the watch or from a write's response is newer than the
  one cached. A resourceVersion is opaque (Kubernetes API conventions: clients may only compare it
  for equality), so the order comes from the watch stream itself: after the operator writes an
  object, watch events for it are stale until the event carrying the written resourceVersion
  arrives (the stream is ordered), for at most `max_age` seconds (a re-list may skip it);
- `leader_decision`: the Lease-based leader election step (coordination.k8s.io/v1 Lease, as
  client-go's leaderelection does it).
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def retry_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0, retry_after: float | None = None,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `attempt` (1 = the first retry): base·2^(attempt-1) capped at
    `cap`, drawn uniformly from its upper half ("equal jitter": never 0, and many jobs failing at the
    same moment spread out), and at least `retry_after` (the server's Retry-After header)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    delay = ceiling / 2 + rand() * ceiling / 2
    return max(delay, retry_after or 0.0)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The Retry-After header as seconds (the API server sends an integer), or None."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Bounded(Generic[K, V]):
    """A mapping of at most `maxsize` entries: setting or reading an entry makes it the most recent;
    past `maxsize` the least recent goes. With `ttl` (seconds, on `clock`), an entry older than that
    reads as absent and is dropped. Not thread-safe: callers hold their own lock."""

    def __init__(self, maxsize: int, *, ttl: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize, self.ttl, self.clock = maxsize, ttl, clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def get(self, key: K, default: V | None = None) -> V | None:
        item = self._data.get(key)
        if item is None:
            return default
        if self.ttl is not None and self.clock() - item[0] > self.ttl:
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return item[1]

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = (self.clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        item = self._data.pop(key, None)
        return default if item is None else item[1]

    def discard_where(self, pred: Callable[[K], bool]) -> None:
        for k in [k for k in self._data if pred(k)]:
            del self._data[k]


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def uid_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


@dataclass
class _Track:
    uid: str
    pending: str | None = None  # the resourceVersion the operator wrote last, until its watch event arrives
    since: float = 0.0
    watched: deque[str] = field(default_factory=lambda: deque(maxlen=16))  # resourceVersions the watch delivered


class Freshness:
    """Which copy of an object is the newest, without ever ordering resourceVersions. One per cached
    table; keys are whatever the table is keyed by (dropped with `forget`)."""

    def __init__(self, max_age: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age, self.clock = max_age, clock
        self._tracks: dict[Any, _Track] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def _track(self, key: Any, uid: str) -> _Track:
        t = self._tracks.get(key)
        if t is None or t.uid != uid:  # another object under that name: nothing known about it
            t = self._tracks[key] = _Track(uid)
        return t

    def watched(self, key: Any, obj: Mapping[str, Any]) -> bool:
        """A watch event: True when it is to replace the cached copy."""
        t, rv = self._track(key, uid_of(obj)), resource_version(obj)
        t.watched.append(rv)
        if t.pending is None:
            return True
        if rv == t.pending or self.clock() - t.since > self.max_age:
            t.pending = None  # caught up with our write (or gave up waiting for its event)
            return True
        return False  # an event from before our write, delivered late

    def written(self, key: Any, obj: Mapping[str, Any], *, created: bool = False) -> bool:
        """The response to the operator's own write: True when it is to replace the cached copy —
        unless the watch already delivered that version, and possibly newer ones since. `created`:
        the object was created (or found) by that call; no watch event of it can be older, so any
        that the watch delivered already is at least as new."""
        t, rv = self._track(key, uid_of(obj)), resource_version(obj)
        if rv in t.watched:
            return rv == t.watched[-1]
        if created:
            return not t.watched
        t.pending, t.since = rv, self.clock()
        return True

    def forget(self, key: Any) -> None:
        self._tracks.pop(key, None)


# --- leader election -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaseView:
    """What the election reads of a coordination.k8s.io/v1 Lease's spec."""

    holder: str | None
    renewed: datetime | None
    duration_seconds: int
    transitions: int = 0


@dataclass(frozen=True)
class LeaderStep:
    """`write`: the Lease spec to write (None: write nothing and follow); `leader`: whether this
    replica leads after the write succeeds."""

    write: dict[str, Any] | None
    leader: bool


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def leader_decision(lease: LeaseView | None, me: str, now: datetime, duration_seconds: int) -> LeaderStep:
    """One round of the election: renew our own Lease, take one that is free or expired (its holder
    stopped renewing for `duration_seconds`), else follow. The write is made with the Lease's
    resourceVersion as precondition, so of two replicas taking it at once one gets a 409 and follows."""
    spec_new = {"holderIdentity": me, "leaseDurationSeconds": duration_seconds, "renewTime": _fmt(now)}
    if lease is None:
        return LeaderStep({**spec_new, "acquireTime": _fmt(now), "leaseTransitions": 0}, True)
    if lease.holder == me:
        return LeaderStep(spec_new, True)
    expired = lease.renewed is None or now - lease.renewed > timedelta(seconds=lease.duration_seconds)
    if not lease.holder or expired:
        return LeaderStep({**spec_new, "acquireTime": _fmt(now), "leaseTransitions": lease.transitions + 1}, True)
    return LeaderStep(None, False)
