"""The model cache on a shared volume (a ReadWriteMany PVC named in the chart values): the data
preflight pod downloads the base model into it before any GPU Job exists; the trainer pod reads it
from there. Keys, eviction choice and the report are pure (kubetune.api.model_cache); this module is
the file system side.

Layout under the cache root::

    models/<key>/                  a complete entry; its .kubetune-complete marker (JSON: uri, revision,
                                   size) is written before the rename that publishes the folder, and
                                   its mtime is the entry's last use (LRU)
    tmp/<key>-<random>/            a download in progress (never read)
    locks/<key>.lock               flock: exclusive to download or evict an entry, shared to take a hit
    locks/evict.lock               one eviction pass at a time
    leases/<job uid>.json          in use by a job ({"key": ...}); its mtime is the job's heartbeat

Concurrency: two jobs on the same cold model both take the key's lock; the second waits and then
finds the entry complete (one download). A job writes its lease *before* it looks for its entry,
and eviction re-reads the leases while it holds the key's lock exclusively, so an entry a job has
found is never removed under it. flock works across pods on one node and on NFSv4 (Linux maps it to
POSIX locks there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubetune.api.enums import Reason
from kubetune.api.model_cache import (
    COMPLETE_MARKER,
    DownloadProgress,
    Entry,
    ModelCacheConfig,
    ModelCacheReport,
    cache_key,
    choose_evictions,
    download_progress,
    live_leases,
    normalize_uri,
)
from kubetune_trainer.failures import TrainerFailure
from kubetune_trainer.reporting import Log, stderr_log

HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]
PROGRESS_INTERVAL_S = 0.5  # at most this often to on_progress while downloading (and once at the end)

OnProgress = Callable[[DownloadProgress], None]


class _Meter:
    """Counts the bytes of a download and hands on_progress the bytes done, the total and the ETA, at most
    once per PROGRESS_INTERVAL_S (the reporter throttles its channels further)."""

    def __init__(self, total: int | None, on_progress: OnProgress | None) -> None:
        self.total, self.on_progress = total, on_progress
        self.done = 0
        self.t0 = time.monotonic()
        self._last = -PROGRESS_INTERVAL_S

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self.emit()

    def emit(self) -> None:
        if self.on_progress is not None:
            self.on_progress(download_progress(self.done, self.total, time.monotonic() - self.t0))


@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


class ModelCache:
    def __init__(self, config: ModelCacheConfig) -> None:
        self.config = config
        self.root = Path(config.root)

    # --- layout ---------------------------------------------------------------------------------
    def entry(self, key: str) -> Path:
        return self.root / "models" / key

    def complete(self, key: str) -> bool:
        return (self.entry(key) / COMPLETE_MARKER).is_file()

    def _lock(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def lease_path(self, job_uid: str) -> Path:
        return self.root / "leases" / f"{job_uid}.json"

    # --- leases ---------------------------------------------------------------------------------
    def take_lease(self, job_uid: str, key: str) -> None:
        path = self.lease_path(job_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"key": key}))
        tmp.replace(path)

    def lease_key(self, job_uid: str) -> str | None:
        try:
            return str(json.loads(self.lease_path(job_uid).read_text())["key"])
        except (OSError, ValueError, KeyError):
            return None

    def renew(self, job_uid: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.lease_path(job_uid))

    def release(self, job_uid: str) -> None:
        with contextlib.suppress(OSError):
            self.lease_path(job_uid).unlink()

    def leases(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for p in (self.root / "leases").glob("*.json"):
            try:
                key = str(json.loads(p.read_text())["key"])
                out.setdefault(key, []).append(p.stat().st_mtime)
            except (OSError, ValueError, KeyError):
                continue
        return out

    @contextlib.contextmanager
    def heartbeat(self, job_uid: str) -> Iterator[None]:
        """Renew the job's lease every lease_seconds / 4 while the block runs (training); release it after."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(1.0, self.config.lease_seconds / 4)):
                self.renew(job_uid)

        self.renew(job_uid)
        t = threading.Thread(target=beat, name="model-cache-lease", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            self.release(job_uid)

    # --- entries --------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        out = []
        for d in (self.root / "models").glob("*"):
            marker = d / COMPLETE_MARKER
            try:
                size = int(json.loads(marker.read_text()).get("size") or 0)
                out.append(Entry(d.name, size, marker.stat().st_mtime))
            except (OSError, ValueError):
                continue
        return out

    def revision(self, key: str) -> str | None:
        """The revision a complete entry holds (its marker's)."""
        try:
            return json.loads((self.entry(key) / COMPLETE_MARKER).read_text()).get("revision")
        except (OSError, ValueError):
            return None

    def _touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.entry(key) / COMPLETE_MARKER)

    def evict(self, keep: str | None, log: Log) -> list[str]:
        """Remove least-recently-used entries until the cache fits its limit (none with a live lease)."""
        if self.config.size_limit_bytes is None:
            return []
        removed: list[str] = []
        with _flock(self.root / "locks" / "evict.lock"):
            now = time.time()
            in_use = live_leases(self.leases(), now, self.config.lease_seconds)
            for key in choose_evictions(self.entries(), self.config.size_limit_bytes, in_use=in_use, keep=keep):
                with _flock(self._lock(key), blocking=False) as locked:
                    if not locked:  # someone is taking a hit or downloading: not now
                        continue
                    if key in live_leases(self.leases(), time.time(), self.config.lease_seconds):
                        continue  # a job found it since the choice
                    trash = self.root / "tmp" / f"evicted-{key}-{uuid.uuid4().hex[:8]}"
                    trash.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        self.entry(key).rename(trash)
                    except OSError:
                        continue
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(key)
                log(f"[model cache] evicted {key} (least recently used; size limit "
                    f"{self.config.size_limit_bytes:,} bytes)")
        return removed

    def ensure(self, uri: str, *, revision: str | None, job_uid: str, token_env: str | None = None,
               log: Log = stderr_log, on_progress: OnProgress | None = None) -> tuple[Path, ModelCacheReport]:
        """The cached folder of the model at `uri` (downloading it once if missing) and what was done.
        The job's lease on it is taken first and kept (the trainer renews it; :meth:`release`).
        `on_progress`: the download's progress (bytes done, total, ETA), throttled; for s3:// per chunk,
        for hf:// once at the end (huggingface_hub gives no byte count here)."""
        started = time.monotonic()
        rev, source = resolve_revision(uri, revision, token_env)
        key = cache_key(uri, rev)
        self.take_lease(job_uid, key)
        try:
            with _flock(self._lock(key), shared=True):
                hit = self.complete(key)
                if hit:
                    self._touch(key)
            downloaded = 0
            progress: DownloadProgress | None = None
            if not hit:
                with _flock(self._lock(key)):
                    if self.complete(key):  # another job finished it while this one waited
                        hit = True
                        self._touch(key)
                        log(f"[model cache] {uri}: downloaded by another job while this one waited; cache hit")
                    else:
                        downloaded, progress = self._download(uri, rev, key, source, token_env, log, on_progress)
        except BaseException:
            self.release(job_uid)
            raise
        evicted = self.evict(keep=key, log=log)
        report = ModelCacheReport(uri=uri, revision=rev, key=key, used=True, hit=hit, bytes_downloaded=downloaded,
                                  seconds=round(time.monotonic() - started, 2), evicted=evicted or None,
                                  progress=progress)
        if hit:
            log(f"[model cache] {uri} (revision {rev}): cache hit, nothing downloaded")
        return self.entry(key), report

    def _download(self, uri: str, rev: str, key: str, source: Any, token_env: str | None, log: Log,
                  on_progress: OnProgress | None) -> tuple[int, DownloadProgress]:
        tmp = self.root / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        t0 = time.monotonic()
        log(f"[model cache] {uri} (revision {rev}): downloading into the cache")
        total = sum(size for size, _ in source.values()) if uri.startswith("s3://") else None
        meter = _Meter(total, on_progress)
        meter.emit()  # 0 of the total: the download started
        try:
            if uri.startswith("s3://"):
                _get_s3(uri, source, tmp, meter)
            else:
                _get_hf(uri, rev, tmp, token_env)
            size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
            meter.done, meter.total = size, size
            meter.emit()  # the end: bytesDone = bytesTotal, ETA 0
            marker = {"uri": normalize_uri(uri), "revision": rev, "size": size}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(marker))
            dest = self.entry(key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # an incomplete leftover (never published: it has no marker)
                shutil.rmtree(dest)
            tmp.rename(dest)  # atomic: readers see nothing or the whole entry
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.monotonic() - t0
        log(f"[model cache] {uri}: {size:,} bytes in {seconds:.1f} s ({size / 1e6 / max(seconds, 1e-3):.1f} MB/s)")
        return size, download_progress(size, size, seconds)


def resolve_revision(uri: str, revision: str | None, token_env: str | None) -> tuple[str, Any]:
    """(revision, what the download needs): the Hub commit that `revision` names for hf://; for s3:// a
    digest of the folder's listing (keys, sizes, times). ModelUnavailable when the model is not there
    (wrong repo, missing object, gated or no token), StorageUnavailable when the store cannot be used."""
    if uri.startswith("s3://"):
        from kubetune.api.manifest import digest_of
        from kubetune_trainer.storage import StorageError, StorageNotFound, folder_listing

        try:
            listing = folder_listing(uri, doing="model: cannot read")
        except StorageNotFound as e:
            raise TrainerFailure(Reason.MODEL_UNAVAILABLE, str(e)) from None
        except StorageError as e:
            raise TrainerFailure(Reason.STORAGE_UNAVAILABLE, str(e)) from None
        if not listing:
            raise TrainerFailure(Reason.MODEL_UNAVAILABLE, f"model {uri}: no object at this key (nothing below it)")
        return digest_of(repr(sorted(listing.items())).encode()), listing
    if uri.startswith("hf://"):
        rest = uri[len("hf://"):].strip("/")
        if "@" in rest and revision is None:
            rest, revision = rest.rsplit("@", 1)
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return revision or "main", rest
        from huggingface_hub import HfApi

        token = os.environ.get(token_env) if token_env else None
        try:
            info = HfApi().model_info(rest, revision=revision, token=token)
        except Exception as e:
            name = type(e).__name__
            why = {"RepositoryNotFoundError": "no such repository, or it is private and the token cannot read it",
                   "GatedRepoError": "the model is gated: the token's account must accept its terms",
                   "RevisionNotFoundError": f"no revision {revision!r}"}.get(name, f"{name}: {str(e).splitlines()[0] if str(e) else ''}")
            hint = "" if token else " (no token: spec.baseModel.tokenSecretRef names none)"
            raise TrainerFailure(Reason.MODEL_UNAVAILABLE, f"model {uri}: {why}{hint}") from None
        if not info.sha:
            raise TrainerFailure(Reason.MODEL_UNAVAILABLE, f"model {uri}: the Hub names no commit for {revision!r}")
        return str(info.sha), rest
    raise ValueError(f"not a cached scheme: {uri!r}")


def _get_s3(uri: str, listing: dict[str, tuple[int, int]], dest: Path, on_bytes: Callable[[int], None]) -> None:
    from kubetune_trainer.storage import StorageError, get_objects

    try:
        get_objects(uri, sorted(listing), dest, doing="model: cannot read", on_bytes=on_bytes)
    except StorageError as e:
        raise TrainerFailure(Reason.STORAGE_UNAVAILABLE, str(e)) from None


def _get_hf(uri: str, commit: str, dest: Path, token_env: str | None) -> None:
    from huggingface_hub import snapshot_download

    repo = uri[len("hf://"):].strip("/").rsplit("@", 1)[0]
    token = os.environ.get(token_env) if token_env else None
    try:
        snapshot_download(repo, revision=commit, token=token, local_dir=str(dest), allow_patterns=HF_PATTERNS)
    except Exception as e:
        raise TrainerFailure(Reason.MODEL_UNAVAILABLE, f"model {uri}: cannot download revision {commit}: "
                                                       f"{type(e).__name__}") from None
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping


__all__ = ["ModelCache", "resolve_revision"]
