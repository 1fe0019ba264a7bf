"""The artifact manifest: `kubetune-manifest.json`, every file of an artifact folder with its size
and sha256, written LAST into a promoted folder (and into an artifact uploaded to s3://).

A reader knows a folder is complete when its manifest is there and every file matches it; a copy
that stopped half-way has no manifest (or, over an older promotion being replaced, none until the
new one is whole: the old manifest goes first). The manifest names content only — no time, no job —
so the same files give the same bytes and the same digest: re-promoting identical files is
recognised as done, and `sha256:<hex>` of the manifest's bytes identifies the content of the whole
folder (status.artifact.manifestDigest, the adapter revision a chained job records).

    {"apiVersion": "kubetune.io/artifact-manifest/v1",
     "files": [{"path": "adapter_config.json", "sha256": "…", "size": 731}, …],
     "totalBytes": 123456}

Paths are relative, with `/`, sorted; the manifest does not list itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from kubetune.api.base import KubeModel

MANIFEST_NAME = "kubetune-manifest.json"
MANIFEST_API_VERSION = "kubetune.io/artifact-manifest/v1"
_CHUNK = 1 << 20


class ManifestFile(KubeModel):
    path: str = Field(description="Relative path inside the folder, with /.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the bytes (hex).")


class Manifest(KubeModel):
    api_version: Literal["kubetune.io/artifact-manifest/v1"] = Field(default="kubetune.io/artifact-manifest/v1", alias="apiVersion")
    files: list[ManifestFile] = Field(default_factory=list)
    total_bytes: int = 0

    @classmethod
    def of(cls, files: Iterable[ManifestFile]) -> Manifest:
        ordered = sorted(files, key=lambda f: f.path)
        return cls(files=ordered, total_bytes=sum(f.size for f in ordered))

    def to_bytes(self) -> bytes:
        """Canonical bytes: the same files always give the same bytes (and digest)."""
        return (json.dumps(self.model_dump(by_alias=True, mode="json"), sort_keys=True, indent=1) + "\n").encode()

    @property
    def digest(self) -> str:
        return digest_of(self.to_bytes())

    @classmethod
    def parse(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)

    def sizes(self) -> dict[str, int]:
        return {f.path: f.size for f in self.files}

    def problems(self, found: Mapping[str, int], *, hashes: Mapping[str, str] | None = None) -> list[str]:
        """What differs between the manifest and a folder's files (`found`: path ⇒ size, the
        manifest itself left out; `hashes`: path ⇒ sha256 when they were computed). Empty: it matches."""
        out = [f"{f.path}: missing" for f in self.files if f.path not in found]
        out += [f"{path}: not in the manifest" for path in sorted(set(found) - {f.path for f in self.files})]
        for f in self.files:
            if f.path in found and found[f.path] != f.size:
                out.append(f"{f.path}: {found[f.path]} bytes, the manifest says {f.size}")
            elif hashes is not None and f.path in hashes and hashes[f.path] != f.sha256:
                out.append(f"{f.path}: sha256 differs from the manifest")
        return out


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def local_files(folder: Path) -> dict[str, Path]:
    """Every file below `folder` by relative path (with /), the manifest left out."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                out[rel] = p
    return out


def manifest_of(folder: Path) -> Manifest:
    """The manifest of a local folder (reads and hashes every file)."""
    return Manifest.of(ManifestFile(path=rel, size=p.stat().st_size, sha256=sha256_file(p))
                       for rel, p in local_files(folder).items())


def verify_folder(folder: Path, manifest: Manifest) -> list[str]:
    """Every file of `folder` re-read and compared with `manifest`; the problems, empty when it matches."""
    files = local_files(folder)
    sizes = {rel: p.stat().st_size for rel, p in files.items()}
    expected = manifest.sizes()
    hashes = {rel: sha256_file(p) for rel, p in files.items() if sizes[rel] == expected.get(rel)}
    return manifest.problems(sizes, hashes=hashes)


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None when it has none (or an unreadable one)."""
    try:
        return Manifest.parse((folder / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return None


__all__ = [
    "MANIFEST_API_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestFile",
    "digest_of",
    "local_files",
    "manifest_of",
    "read_manifest",
    "sha256_file",
    "verify_folder",
]
