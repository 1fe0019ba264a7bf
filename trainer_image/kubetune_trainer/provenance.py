"""What trained this model: each input file's size and sha256, and the revision of the base model and
of the adapter continued from. Recorded in status.data (the DataSummary) and in the model card.

- A file (dataset, golden, safety, forgetting): sha256 of its bytes as read, after any download.
- The base model: for hf:// the Hub commit (the snapshot folder huggingface_hub resolved the
  revision to); otherwise `sha256:` of its config.json followed by its weights index
  (model.safetensors.index.json / pytorch_model.bin.index.json) or, without one, the list of its
  weight files with their sizes — cheap for a 70B model, and it changes with the weights' layout.
- An adapter: the digest of its kubetune-manifest.json when it has one (a promoted folder, or one
  uploaded to s3://: the manifest names every file with its sha256), else `sha256:` of a manifest
  computed over its files.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from kubetune.api.manifest import MANIFEST_NAME, digest_of, manifest_of, sha256_file
from kubetune.api.status import InputFile, SourceRevision

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def input_file(name: str, uri: str, path: Path) -> InputFile:
    return InputFile(name=name, uri=uri, size=path.stat().st_size, sha256=sha256_file(path))


def hub_commit(path: Path) -> str | None:
    """The commit of a huggingface_hub snapshot folder (…/snapshots/<commit>[/file])."""
    for part in (path, *path.parents):
        if part.parent.name == "snapshots" and _COMMIT.match(part.name):
            return part.name
    return None


def model_revision(uri: str, path: Path) -> SourceRevision:
    if uri.startswith("hf://"):
        commit = hub_commit(path.resolve())
        if commit:
            return SourceRevision(uri=uri, revision=commit)
    h = hashlib.sha256()
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if config.is_file():
        h.update(b"config.json\0" + config.read_bytes() + b"\0")
    index = next((folder / n for n in WEIGHT_INDEXES if (folder / n).is_file()), None)
    if index is not None:
        h.update(index.name.encode() + b"\0" + index.read_bytes() + b"\0")
    else:
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
                h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
    return SourceRevision(uri=uri, revision="sha256:" + h.hexdigest())


def adapter_revision(uri: str, path: Path) -> SourceRevision:
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        return SourceRevision(uri=uri, revision=digest_of(manifest.read_bytes()))
    return SourceRevision(uri=uri, revision=manifest_of(path).digest)


__all__ = ["adapter_revision", "hub_commit", "input_file", "model_revision"]
