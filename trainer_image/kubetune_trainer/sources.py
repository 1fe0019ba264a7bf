"""Resolve model, adapter and dataset locations to local paths.

Schemes (``Sources`` in the trainer config carries them resolved by the operator):

- a local path, ``file:///abs/path`` or ``pvc://claim/path`` mounted at ``$KUBETUNE_PVC_ROOT/claim``
  (default ``/mnt/pvc``) — used as is;
- ``hf://org/name[@revision]`` (a model) or ``hf://datasets/org/name/path/in/repo.jsonl`` (a file of a
  dataset repo) — downloaded with huggingface_hub into ``$HF_HOME``, with the token from the
  environment variable named by ``secretEnv.hfToken``; ``HF_HUB_OFFLINE=1`` uses the cache only;
- ``s3://bucket/key`` — copied into the cache folder by kubetune_trainer.storage (fsspec over pyarrow's
  S3 filesystem; credentials and endpoint from the standard AWS_* variables). A missing key is a
  SourceError like a missing path; a missing bucket, wrong credentials or an unreachable endpoint is a
  ``StorageError`` (the job's reason StorageUnavailable).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

SCHEMES = ("a local path", "file://", "pvc://", "hf://", "s3://")


class SourceError(Exception):
    """A location that cannot be resolved; the message names it and the valid options."""


def cache_dir() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")


def resolve(uri: str, *, kind: str = "model", revision: str | None = None, token_env: str | None = None,
            cache: Path | None = None) -> Path:
    """A local path for ``uri``; ``kind`` is "model", "adapter" or "dataset" (a folder vs a file)."""
    parsed = urlparse(uri)
    match parsed.scheme:
        case "":
            path = Path(uri)
        case "file":
            path = Path((parsed.netloc or "") + parsed.path)
        case "pvc":
            root = Path(os.environ.get("KUBETUNE_PVC_ROOT", "/mnt/pvc"))
            path = root / parsed.netloc / parsed.path.lstrip("/")
        case "hf":
            return _from_hub(uri, kind=kind, revision=revision, token_env=token_env)
        case "s3":
            return _from_s3(uri, kind=kind, cache=cache)
        case other:
            raise SourceError(f"{kind} {uri!r}: unknown scheme {other!r}; use one of {', '.join(SCHEMES)}")
    if not path.exists():
        raise SourceError(f"{kind} {uri!r}: {path} does not exist")
    return path


def _token(token_env: str | None) -> str | None:
    return os.environ.get(token_env) if token_env else None


def _from_hub(uri: str, *, kind: str, revision: str | None, token_env: str | None) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    rest = uri[len("hf://"):].strip("/")
    if "@" in rest and revision is None:
        rest, revision = rest.rsplit("@", 1)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        if kind == "dataset":
            repo_type = "dataset"
            if rest.startswith("datasets/"):
                rest = rest[len("datasets/"):]
            parts = rest.split("/")
            if len(parts) < 3:
                raise SourceError(f"dataset {uri!r}: name a file, e.g. hf://datasets/org/name/train.jsonl")
            repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
            return Path(hf_hub_download(repo, filename, repo_type=repo_type, revision=revision,
                                        token=_token(token_env), local_files_only=offline))
        return Path(snapshot_download(rest, revision=revision, token=_token(token_env), local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]))
    except SourceError:
        raise
    except Exception as e:
        hint = " (HF_HUB_OFFLINE is set and it is not in the cache)" if offline else ""
        raise SourceError(f"{kind} {uri!r}: cannot download from the Hugging Face Hub{hint}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e


def _from_s3(uri: str, *, kind: str, cache: Path | None) -> Path:
    from kubetune_trainer.storage import StorageNotFound, download

    try:
        return download(uri, kind=kind, cache=cache)
    except StorageNotFound as e:
        raise SourceError(str(e)) from None


__all__ = ["SourceError", "cache_dir", "resolve"]
