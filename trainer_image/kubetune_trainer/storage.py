"""Object storage (s3://) for the trainer: fsspec's interface over pyarrow's S3 filesystem.

Credentials and endpoint come from the standard environment variables, in a pod from the Secret
`spec.storage.secretRef` (envFrom), under `kubetune run` from its own environment:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION)
and AWS_ENDPOINT_URL (an S3-compatible server, e.g. http://127.0.0.1:8333). Without keys, the AWS
SDK's own chain applies (config files, instance metadata).

Why pyarrow and not s3fs: s3fs needs botocore, which requires python-dateutil < 3, while the
operator's kubernetes client (kubernetes==37.0.2, a base dependency) requires >= 3 — pip cannot
install both. pyarrow is already in the trainer's stack (`datasets` needs it), speaks S3 through the
AWS C++ SDK, and fsspec wraps it (`ArrowFSWrapper`), so the code reads like any fsspec filesystem.

Every failure is a :class:`StorageError` whose message names the URI and the cause in words —
the bucket does not exist, access was denied, the endpoint cannot be reached — and never a
credential: text from the SDK is scrubbed of the variables' values before it is shown. A key that
is missing inside a bucket that exists is :class:`StorageNotFound` (the caller's "does not exist",
as for a local path).

Writing a folder (:func:`publish_folder`) deletes the old manifest first, uploads every object,
removes objects the new manifest does not list, checks the sizes the server reports, and puts
kubetune-manifest.json last: a reader never takes a half-written folder for a complete one.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.manifest import MANIFEST_NAME, Manifest, digest_of, verify_folder

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
CREDENTIALS_HINT = ("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the Secret spec.storage.secretRef "
                    "names, or the environment of `kubetune run`)")
PROBE_NAME = ".kubetune-write-check"


class StorageError(Exception):
    """An s3:// location that cannot be used; the message names the URI, never a credential."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(message)
        self.uri = uri


class StorageNotFound(StorageError):
    """The bucket is there and readable, but nothing is at this key."""


def is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("s3://")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # without leading or trailing /

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not is_s3(uri):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(uri, f"{uri}: no bucket named")
        return cls(bucket, key.strip("/"))

    @property
    def path(self) -> str:
        """The path pyarrow (and its fsspec wrapper) takes: bucket/key."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def child(self, relative: str) -> S3Uri:
        return S3Uri(self.bucket, f"{self.key}/{relative}".strip("/") if self.key else relative)

    def __str__(self) -> str:
        return f"s3://{self.path}"


def scrub(text: str) -> str:
    """`text` without the value of any credential variable."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _settings() -> tuple[str | None, ...]:
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    return tuple(os.environ.get(n) for n in names)


def filesystem() -> Any:
    """An fsspec filesystem for s3:// paths (bucket/key), configured from the environment now."""
    return _filesystem(_settings())


@functools.cache
def _filesystem(settings: tuple[str | None, ...]) -> Any:
    from fsspec.implementations.arrow import ArrowFSWrapper
    from pyarrow import fs as pafs

    key, secret, token, region, default_region, ep, ep_s3 = settings
    options: dict[str, Any] = {
        "connect_timeout": 5.0,
        "request_timeout": 60.0,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        "region": region or default_region or "us-east-1",
    }
    if key and secret:
        options.update(access_key=key, secret_key=secret, session_token=token)
    url = ep_s3 or ep
    if url:
        scheme, _, rest = url.partition("://")
        if not rest:
            scheme, rest = "https", url
        options.update(scheme=scheme, endpoint_override=rest.rstrip("/"))
    return ArrowFSWrapper(pafs.S3FileSystem(**options))


def explain(exc: BaseException, uri: str, *, doing: str) -> StorageError:
    """An SDK error as a StorageError in words: what was done, on which URI, and why."""
    text = scrub(" ".join(str(exc).split()))
    low = text.lower()
    bucket = S3Uri.parse(uri).bucket if is_s3(uri) else "?"
    if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low or "bucket not found" in low:
        why = f"the bucket {bucket!r} does not exist"
    elif any(s in low for s in ("access_denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch",
                                "invalid_access_key_id", "signature_does_not_match", "forbidden", "403")):
        why = f"access denied: {CREDENTIALS_HINT}"
    elif any(s in low for s in ("network_connection", "curlcode", "couldn't connect", "connection refused",
                                "could not resolve", "timed out", "timeout", "unreachable")):
        why = f"cannot reach the S3 endpoint {endpoint() or 'of AWS'}"
    else:
        why = text.splitlines()[0][:300] if text else type(exc).__name__
    return StorageError(uri, f"{doing} {uri}: {why}")


def check_bucket(uri: str, *, doing: str) -> None:
    """StorageError unless the bucket exists and the credentials may read it."""
    from pyarrow import fs as pafs

    loc = S3Uri.parse(uri)
    try:
        info = filesystem().fs.get_file_info(loc.bucket)
    except OSError as e:
        raise explain(e, uri, doing=doing) from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(uri, f"{doing} {uri}: the bucket {loc.bucket!r} does not exist")


def kind_of(uri: str, *, doing: str) -> str:
    """"file", "folder" or "missing" for an s3:// URI (the bucket must exist)."""
    from pyarrow import fs as pafs

    check_bucket(uri, doing=doing)
    loc = S3Uri.parse(uri)
    if not loc.key:
        return "folder"
    try:
        info = filesystem().fs.get_file_info(loc.path)
    except OSError as e:
        raise explain(e, uri, doing=doing) from None
    if info.type == pafs.FileType.File:
        return "file"
    if info.type == pafs.FileType.Directory:
        return "folder"
    return "missing"


def check_writable(uri: str, *, doing: str) -> None:
    """Write and delete a small object below `uri`: the bucket exists and the credentials may write."""
    check_bucket(uri, doing=doing)
    probe = S3Uri.parse(uri).child(PROBE_NAME)
    fs = filesystem()
    try:
        fs.pipe_file(probe.path, b"kubetune write check\n")
        fs.rm_file(probe.path)
    except OSError as e:
        raise explain(e, uri, doing=doing) from None


def _listing(loc: S3Uri, doing: str) -> dict[str, int]:
    """Objects below a prefix: relative path ⇒ size (folders' marker objects left out)."""
    from pyarrow import fs as pafs

    try:
        infos = filesystem().fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise explain(e, str(loc), doing=doing) from None
    prefix = loc.path.rstrip("/") + "/"
    return {i.path[len(prefix):]: int(i.size) for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(prefix)}


def folder_listing(uri: str, *, doing: str) -> dict[str, tuple[int, int]]:
    """Objects below an s3:// prefix: relative path ⇒ (size, mtime in ns); {} when there are none.
    StorageError when the bucket is missing or unreadable (the model cache keys its entries by it)."""
    from pyarrow import fs as pafs

    check_bucket(uri, doing=doing)
    loc = S3Uri.parse(uri)
    try:
        infos = filesystem().fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise explain(e, uri, doing=doing) from None
    prefix = loc.path.rstrip("/") + "/"
    return {i.path[len(prefix):]: (int(i.size), int(i.mtime_ns or 0)) for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(prefix)}


GET_CHUNK = 8 << 20


def get_objects(uri: str, relative: list[str], dest: Path, *, doing: str,
                on_bytes: Callable[[int], None] | None = None) -> None:
    """Download the objects `relative` below `uri` into the folder `dest` (each fetched once, as one
    streamed GET); `on_bytes(n)` after each chunk of `n` bytes written."""
    loc = S3Uri.parse(uri)
    fs = filesystem()
    try:
        for rel in relative:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.fs.open_input_stream(loc.child(rel).path) as src, open(target, "wb") as out:
                while chunk := src.read(GET_CHUNK):
                    out.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
    except OSError as e:
        raise explain(e, uri, doing=doing) from None


def put_files(folder: Path, names: list[str], uri: str, *, doing: str) -> None:
    """Upload `folder/<name>` to `<uri>/<name>` for each name, in the order given (the last one is the
    one a reader looks for)."""
    loc = S3Uri.parse(uri)
    fs = filesystem()
    try:
        for name in names:
            fs.put_file(str(folder / name), loc.child(name).path)
    except OSError as e:
        raise explain(e, uri, doing=doing) from None


def _cache_root() -> Path:
    from kubetune_trainer.sources import cache_dir

    root = cache_dir() / "s3"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:  # a read-only root filesystem without a cache volume: the pod's /tmp
        fallback = Path(tempfile.gettempdir()) / "kubetune-cache" / "s3"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def download(uri: str, *, kind: str, cache: Path | None = None) -> Path:
    """A local copy of the object (`kind` "dataset") or folder (any other kind) at `uri`, in the
    cache. A copy is reused while the object's size and time (a folder's listing) are unchanged. A
    folder with a kubetune-manifest.json is checked against it after the download."""
    doing = f"{kind}: cannot read"
    loc = S3Uri.parse(uri)
    found = kind_of(uri, doing=doing)
    if found == "missing" or (found == "folder" and kind == "dataset"):
        raise StorageNotFound(uri, f"{kind} {uri}: no object at this key" + (
            " (it is a folder; name a file)" if found == "folder" else ""))
    dest = (cache or _cache_root()) / loc.bucket / (loc.key or "_bucket")
    fs = filesystem()
    try:
        if found == "file":
            info = fs.fs.get_file_info(loc.path)
            stamp = f"{info.size} {info.mtime_ns}"
            marker = dest.with_name(f".{dest.name}.source")
            if dest.is_file() and marker.is_file() and marker.read_text() == stamp:
                return dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
            fs.get_file(loc.path, str(tmp))
            tmp.replace(dest)
            marker.write_text(stamp)
            return dest
        listing = _listing(loc, doing)
        if not listing:
            raise StorageNotFound(uri, f"{kind} {uri}: the folder is empty")
        stamp = digest_of(repr(sorted(listing.items())).encode())
        marker = dest.with_name(f".{dest.name}.source")
        if dest.is_dir() and marker.is_file() and marker.read_text() == stamp:
            return dest
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel in sorted(listing):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(loc.child(rel).path, str(target))
    except OSError as e:
        raise explain(e, uri, doing=doing) from None
    if MANIFEST_NAME in listing:
        try:
            manifest = Manifest.parse((tmp / MANIFEST_NAME).read_bytes())
        except ValueError as e:
            raise StorageError(uri, f"{kind} {uri}: its {MANIFEST_NAME} is unreadable: {e}") from None
        problems = verify_folder(tmp, manifest)
        if problems:
            raise StorageError(uri, f"{kind} {uri}: does not match its {MANIFEST_NAME}: " + "; ".join(problems[:5]))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    marker.write_text(stamp)
    return dest


def read_manifest_bytes(uri: str) -> bytes | None:
    """The bytes of `<uri>/kubetune-manifest.json`, or None when there is none."""
    loc = S3Uri.parse(uri).child(MANIFEST_NAME)
    fs = filesystem()
    try:
        data: bytes = fs.cat_file(loc.path)
        return data
    except FileNotFoundError:
        return None
    except OSError as e:
        if "not found" in str(e).lower() or "no such" in str(e).lower():
            return None
        raise explain(e, uri, doing="cannot read") from None


def publish_folder(folder: Path, uri: str, manifest: Manifest, *, log: Any = None) -> bool:
    """Make `uri` hold exactly the files of `manifest` (read from `folder`), its manifest last.
    Returns False when it already did (the same manifest is there and the sizes match): nothing is
    written. Otherwise: the old manifest is deleted first (from then on no reader takes the folder
    for complete), every object is uploaded, objects the manifest does not list are removed, the
    sizes the server reports are checked, and the manifest is put last."""
    doing = "cannot write"
    loc = S3Uri.parse(uri)
    data = manifest.to_bytes()
    fs = filesystem()
    existing = read_manifest_bytes(uri)
    if existing == data and not manifest.problems(_without_manifest(_listing(loc, doing))):
        return False
    started = time.monotonic()
    try:
        if existing is not None:
            fs.rm_file(loc.child(MANIFEST_NAME).path)
        for f in manifest.files:
            fs.put_file(str(folder / f.path), loc.child(f.path).path)
        for rel in sorted(set(_without_manifest(_listing(loc, doing))) - set(manifest.sizes())):
            fs.rm_file(loc.child(rel).path)
    except OSError as e:
        raise explain(e, uri, doing=doing) from None
    problems = manifest.problems(_without_manifest(_listing(loc, doing)))
    if problems:
        raise StorageError(uri, f"{doing} {uri}: after the upload the objects differ from the manifest: "
                                + "; ".join(problems[:5]))
    try:
        fs.pipe_file(loc.child(MANIFEST_NAME).path, data)
    except OSError as e:
        raise explain(e, uri, doing=doing) from None
    if log is not None:
        log(f"uploaded {len(manifest.files)} files ({manifest.total_bytes:,} bytes) to {uri} in "
            f"{time.monotonic() - started:.1f}s; {MANIFEST_NAME} last")
    return True


def _without_manifest(listing: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in listing.items() if k != MANIFEST_NAME and not k.endswith("/" + PROBE_NAME)
            and k != PROBE_NAME}


__all__ = [
    "S3Uri",
    "StorageError",
    "StorageNotFound",
    "check_bucket",
    "check_writable",
    "download",
    "explain",
    "filesystem",
    "is_s3",
    "kind_of",
    "publish_folder",
    "read_manifest_bytes",
    "scrub",
]
