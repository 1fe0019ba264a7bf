"""The model cache's pure rules, shared by the trainer (which fills and evicts the cache) and the
operator (which renders its volume and reads what the preflight reported):

- :func:`cache_key` — one entry per model URI and revision (an hf:// commit, an s3:// listing digest);
- :func:`choose_evictions` — least recently used first until the cache fits its size limit, never an
  entry with a live lease (a running job uses it) nor the one just added;
- :class:`ModelCacheReport` — what the data preflight pod reports in ``details.modelCache`` and the
  operator shows in ``status.modelCache``;
- :class:`ModelCacheConfig` — the cache as the trainer config names it (from the chart values).

On disk (kubetune_trainer.model_cache): ``<root>/models/<key>/`` complete entries, each with its
``.kubetune-complete`` marker written before the atomic rename that publishes it; ``<root>/tmp/``
downloads in progress; ``<root>/locks/<key>.lock`` (flock: one download per key);
``<root>/leases/<key>/<job uid>`` in-use markers whose mtime is the job's heartbeat.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import Field

from kubetune.api.base import KubeModel

CACHED_SCHEMES = ("hf://", "s3://")  # downloaded into the cache; pvc:// and local paths are used in place
COMPLETE_MARKER = ".kubetune-complete"


class ModelCacheConfig(KubeModel):
    """The model cache in a trainer config (set by the operator from the chart's modelCache values)."""

    root: str = Field(description="Where the cache volume is mounted in the preflight and trainer pods.")
    size_limit_bytes: int | None = Field(default=None, ge=0, description=(
        "Evict least-recently-used models once the cache holds more than this; None: no limit."))
    lease_seconds: float = Field(default=600.0, gt=0, description=(
        "An in-use marker not renewed for this long is stale (its job is gone): its model may be evicted."))


class DownloadProgress(KubeModel):
    """How far the data preflight pod is in downloading the base model into the cache."""

    bytes_done: int = Field(ge=0, description="Bytes downloaded so far.")
    bytes_total: int | None = Field(default=None, ge=0, description=(
        "Bytes to download in all (the objects' sizes for s3://); None when unknown."))
    eta_seconds: float | None = Field(default=None, ge=0, description=(
        "Seconds left at the mean rate so far; 0 when done, None before the rate is known."))

    def line(self) -> str:
        """``12.0 of 48.0 MiB, ETA 9 s`` (``12.0 MiB`` without a total)."""
        done = f"{self.bytes_done / 2**20:,.1f}"
        text = f"{done} of {self.bytes_total / 2**20:,.1f} MiB" if self.bytes_total is not None else f"{done} MiB"
        return text + (f", ETA {self.eta_seconds:.0f} s" if self.eta_seconds is not None else "")


def download_progress(done: int, total: int | None, elapsed: float) -> DownloadProgress:
    """Progress after `done` of `total` bytes in `elapsed` seconds; the ETA extrapolates the mean rate."""
    eta: float | None = None
    if total is not None and done >= total:
        eta = 0.0
    elif total is not None and done > 0 and elapsed > 0:
        eta = max(0.1, round((total - done) * elapsed / done, 1))  # 0 means done
    return DownloadProgress(bytes_done=done, bytes_total=total, eta_seconds=eta)


class ModelCacheReport(KubeModel):
    """What the model cache did for one job (status.modelCache)."""

    uri: str = Field(description="The base model's URI.")
    revision: str | None = Field(default=None, description=(
        "The revision cached: the Hugging Face commit for hf:// (pinned: the trainer loads exactly it), "
        "sha256:<hex> of the object listing (keys, sizes, ETags) for s3://."))
    key: str | None = Field(default=None, description="The cache entry's name (cache_key of URI and revision).")
    used: bool = Field(description="True when the trainer read the base model from the cache volume.")
    hit: bool = Field(default=False, description="True when the model was already cached: nothing was downloaded.")
    bytes_downloaded: int = Field(default=0, ge=0, description="Bytes this job downloaded into the cache.")
    seconds: float | None = Field(default=None, description="Time spent fetching (or waiting for) the model.")
    evicted: list[str] | None = Field(default=None, description="Cache entries evicted to stay under the size limit.")
    message: str | None = Field(default=None, max_length=1024, description="Why the cache was not used, when it was not.")
    progress: DownloadProgress | None = Field(default=None, description=(
        "The download into the cache (a miss): while the data preflight pod downloads, from its progress "
        "annotation; at the end, from its report (bytesDone = bytesTotal). None for a hit."))


def cacheable(uri: str) -> bool:
    """Whether a model at `uri` goes through the cache (hf://, s3://); pvc:// and paths are used in place."""
    return uri.startswith(CACHED_SCHEMES)


def normalize_uri(uri: str) -> str:
    """One spelling per location: no trailing slash, an hf:// `@revision` split off (it is the revision)."""
    uri = uri.strip().rstrip("/")
    if uri.startswith("hf://") and "@" in uri:
        uri = uri.rsplit("@", 1)[0]
    return uri


def cache_key(uri: str, revision: str | None) -> str:
    """A folder name for (URI, revision): readable slug + sha256 prefix of both, stable across versions."""
    base = normalize_uri(uri)
    h = hashlib.sha256(f"{base}\0{revision or ''}".encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base.split("://", 1)[-1]).strip("-.")[-60:] or "model"
    return f"{slug}-{h}"


@dataclass(frozen=True)
class Entry:
    """One complete cache entry: its size and when a job last used it (seconds since the epoch)."""

    key: str
    size: int
    last_used: float


def live_leases(leases: Mapping[str, Iterable[float]], now: float, lease_seconds: float) -> set[str]:
    """Keys with at least one in-use marker renewed within `lease_seconds` (key ⇒ marker mtimes)."""
    return {k for k, times in leases.items() if any(now - t <= lease_seconds for t in times)}


def choose_evictions(entries: Iterable[Entry], limit: int | None, *, in_use: set[str],
                     keep: str | None = None) -> list[str]:
    """The keys to remove, least recently used first, until the rest fit `limit` bytes. Entries in
    `in_use` and `keep` (the one just added) are never chosen; when they alone exceed the limit the
    cache stays over it rather than break a running job."""
    items = list(entries)
    if limit is None:
        return []
    total = sum(e.size for e in items)
    out: list[str] = []
    for e in sorted(items, key=lambda e: (e.last_used, e.key)):
        if total <= limit:
            break
        if e.key in in_use or e.key == keep:
            continue
        out.append(e.key)
        total -= e.size
    return out


__all__ = ["CACHED_SCHEMES", "COMPLETE_MARKER", "DownloadProgress", "Entry", "ModelCacheConfig", "ModelCacheReport", "cache_key",
           "cacheable", "choose_evictions", "download_progress", "live_leases", "normalize_uri"]
