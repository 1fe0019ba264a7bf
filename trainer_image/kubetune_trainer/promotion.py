"""Promotion: the artifact copied to spec.output.promotedUri, verified by a manifest written last.

The trainer promotes — in a pod and under `kubetune run` alike — right after it exported the
artifact, when kubetune.gates.promotion_decision passes on the result it is about to report (the
function and the inputs the operator's status uses). Only once the manifest is in place does the
result carry `promotion` (its URI and the manifest's digest); status says promoted from that alone.

- The manifest (kubetune.api.manifest, `kubetune-manifest.json`) lists every file of the artifact
  with its size and sha256; it is computed from the local artifact before anything is copied.
- A local or PVC target: the artifact is copied to a sibling temporary folder
  (`.<name>.promoting-<pid>`), every copied file is re-read and checked against the manifest, the
  manifest is written into it, and the folder is renamed into place (an older promotion renamed
  away first, then removed). A reader never sees a half-done copy under the promoted name.
- An s3:// target has no rename: kubetune_trainer.storage.publish_folder deletes the old manifest,
  uploads the objects, removes stale ones, checks the sizes, and puts the manifest last.
- Idempotent: when the target already holds a manifest with the same bytes and files of the listed
  sizes, nothing is copied (a retried pod, a re-run). A partial promotion (no manifest, another
  manifest, a missing or resized file) is redone whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kubetune.api.manifest import MANIFEST_NAME, Manifest, local_files, manifest_of, verify_folder
from kubetune.api.trainer_contract import Promotion
from kubetune_trainer.reporting import Log, stderr_log
from kubetune_trainer.storage import StorageError, is_s3, publish_folder


class PromotionError(Exception):
    """The copy does not match the manifest (a disk that lost data); nothing was promoted."""


def promote(artifact: Path, target: str, *, uri: str, log: Log = stderr_log) -> Promotion:
    """Copy the artifact folder to `target` (a local folder or an s3:// URI) with its manifest last;
    `uri` is what `target` stands for in status. StorageError / PromotionError on failure."""
    manifest = manifest_of(artifact)
    if is_s3(target):
        wrote = publish_folder(artifact, target, manifest, log=log)
    else:
        wrote = promote_local(artifact, Path(target), manifest)
    log(f"promotion: {uri} " + ("written" if wrote else "already holds this artifact (same manifest); nothing copied")
        + f": {len(manifest.files)} files, {manifest.total_bytes:,} bytes, manifest {manifest.digest}")
    return Promotion(uri=uri, manifest_digest=manifest.digest, files=len(manifest.files), bytes=manifest.total_bytes)


def is_complete(folder: Path, manifest: Manifest) -> bool:
    """`folder` holds exactly this manifest (same bytes) and files of the sizes it lists."""
    try:
        if (folder / MANIFEST_NAME).read_bytes() != manifest.to_bytes():
            return False
    except OSError:
        return False
    sizes = {rel: p.stat().st_size for rel, p in local_files(folder).items()}
    return not manifest.problems(sizes)


def promote_local(artifact: Path, dest: Path, manifest: Manifest) -> bool:
    """Copy into a sibling temporary folder, verify, write the manifest, rename into place. Returns
    False when `dest` already is this promotion."""
    if is_complete(dest, manifest):
        return False
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in dest.parent.glob(f".{dest.name}.promoting-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.promoting-{os.getpid()}"
        tmp.mkdir()
        for f in manifest.files:
            target = tmp / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact / f.path, target)
            _fsync(target)
        problems = verify_folder(tmp, manifest)
        if problems:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PromotionError(f"the copy in {tmp} differs from the artifact: " + "; ".join(problems[:5]))
        (tmp / MANIFEST_NAME).write_bytes(manifest.to_bytes())
        _fsync(tmp / MANIFEST_NAME)
        from kubetune_trainer.artifacts import publish

        publish(tmp, dest)
        _fsync(dest.parent)
    except OSError as e:
        raise StorageError(str(dest), f"cannot write the promoted copy {dest}: {e.strerror or e}") from None
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["PromotionError", "is_complete", "promote", "promote_local"]
