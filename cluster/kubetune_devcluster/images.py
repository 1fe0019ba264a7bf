"""`kubetune dev images build`: the operator and trainer images, built here without a Docker engine.

Debian's buildah (chroot isolation) builds the two Dockerfiles production builds, each from a base
given as the build argument ``BASE_IMAGE``: here a Debian bookworm root filesystem with python3 and
python3-venv, made by ``mmdebstrap`` and committed as a one-layer image (``buildah add`` unpacks the
tar with its owners and modes). Everything lives under ``$KUBETUNE_CACHE/images`` (default
``~/.cache/kubetune/images``), outside the repository:

- ``<name>-<key12>.tar``: each image as a docker-archive (what ``ctr images import`` takes). The key
  hashes the image's inputs: its Dockerfile, the files its COPY lines name (git-tracked and untracked
  but not ignored, as they are in the working tree), ``.dockerignore`` and the base's recipe. When
  both archives exist, nothing is built. ``<name>-<key12>.json`` names the checkout an archive was
  built from: a new build replaces the archive of its own checkout (checkouts share the cache) and
  any archive no call has used for ``UNUSED_DAYS``.
- ``storage-<driver>/``: buildah's image store with its layer cache (``--layers``): after a change to
  the code only the layers from the first COPY of it on are rebuilt. After a build, untagged images
  that no tagged image builds on are removed.
- ``tmp/buildah-cache/``: the Dockerfiles' cache mounts (pip's downloads: torch's CUDA wheels are
  fetched once).
- ``logs/<name>-<key12>.log``: each build's output.

With a cluster (``--dir`` of a cluster that runs a real node, or ``--containerd-socket`` and ``--ctr``)
both archives are imported into the node's containerd, unless it has them already. Progress goes to
stderr; stdout is exactly two lines, ``operator=REF`` and ``trainer=REF``, REF as the chart's
``image.*`` / ``trainer.image.*`` values take it (``repository:tag``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .binaries import cache_root, cluster_dir
from .node import import_image

REGISTRY = "localhost/kubetune"
KEY_LENGTH = 12
UNUSED_DAYS = 7  # an archive no call used for this long goes with the next build (any checkout's)

# The local base: Debian's python3 with what the Dockerfiles use from it (venv and its bundled pip),
# and the C++ runtime torch's wheels link against (the CUDA runtime image has it).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libstdc++6")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    name: str  # operator | trainer
    dockerfile: str  # relative to the repository root, which is the build context

    def ref(self, key: str) -> str:
        return f"{REGISTRY}/{self.name}:{key[:KEY_LENGTH]}"


IMAGES = (Image("operator", "operator/Dockerfile"), Image("trainer", "trainer_image/Dockerfile"))


class ImageBuildError(RuntimeError):
    pass


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- inputs and keys --------------------------------------------------------------------------------


def base_command(rootfs_tar: Path) -> list[str]:
    """The mmdebstrap call that makes the base's root filesystem (without device nodes: the runtime
    provides /dev; without apt's lists and logs)."""
    return [
        "mmdebstrap", "--variant=essential", f"--include={','.join(BASE_PACKAGES)}", "--skip=output/dev",
        "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/* \"$1\"/var/log/*",
        BASE_SUITE, str(rootfs_tar),
    ]  # fmt: skip


def base_ref() -> str:
    recipe = json.dumps(base_command(Path("ROOTFS")))
    return f"{REGISTRY}/base-{BASE_SUITE}:{hashlib.sha256(recipe.encode()).hexdigest()[:KEY_LENGTH]}"


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths that a Dockerfile's COPY and ADD instructions name (not those copied
    from another stage)."""
    sources: list[str] = []
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        flags = [w for w in words[1:] if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        rest = line.split(None, 1 + len(flags))[-1].strip()
        paths = json.loads(rest) if rest.startswith("[") else rest.split()
        sources += paths[:-1]
    return sources


def context_files(root: Path, sources: Sequence[str]) -> list[str]:
    """The files below `sources` that a build copies: git-tracked or untracked but not ignored, as
    they are in the working tree (outside a git checkout: every file but Python caches)."""
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *sources],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode == 0:
        names = {n for n in proc.stdout.split("\0") if n}
    else:
        names = set()
        for src in sources:
            path = root / src
            found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            names |= {str(p.relative_to(root)) for p in found if "__pycache__" not in p.parts}
    return sorted(n for n in names if (root / n).is_file())  # a tracked file deleted in the tree is not copied


def image_key(root: Path, image: Image, base: str) -> str:
    """sha256 over the image's Dockerfile, the files it copies (path, executable bit, content),
    .dockerignore and the base image's reference (which names its recipe)."""
    h = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    text = (root / image.dockerfile).read_text(encoding="utf-8")
    feed("Dockerfile", text.encode())
    feed("base", base.encode())
    ignore = root / ".dockerignore"
    feed(".dockerignore", ignore.read_bytes() if ignore.is_file() else b"")
    for name in context_files(root, copy_sources(text)):
        path = root / name
        feed(f"{name}:{'x' if os.access(path, os.X_OK) else '-'}", path.read_bytes())
    return h.hexdigest()


# --- buildah ------------------------------------------------------------------------------------------


def storage_driver() -> str:
    """overlay where the kernel has it (a layer costs its own files), else vfs (a full copy per layer)."""
    with contextlib.suppress(OSError):
        if re.search(r"\boverlay$", Path("/proc/filesystems").read_text(), re.M):
            return "overlay"
    return "vfs"


def ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts: a build behind a TLS-intercepting proxy needs it."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      os.environ.get("REQUESTS_CA_BUNDLE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Buildah:
    """buildah with its image store, run root and build caches under `cache` (the images cache)."""

    cache: Path
    driver: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "STORAGE_DRIVER": self.driver, "BUILDAH_ISOLATION": "chroot",
                "TMPDIR": str(self.cache / "tmp")}  # buildah keeps the cache mounts in $TMPDIR/buildah-cache

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.cache / f"storage-{self.driver}"),
                "--runroot", str(self.cache / "run"), *args]

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env())
        if proc.returncode != 0:
            raise ImageBuildError(f"buildah {args[0]}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout.strip()

    def stream(self, args: Sequence[str], log_file: Path, log: Log) -> None:
        """Run buildah, its output to `log` and `log_file`; on failure the error carries its tail."""
        tail: deque[str] = deque(maxlen=25)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("w") as out, subprocess.Popen(
            self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env()
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip())
                log(line.rstrip())
        if proc.returncode != 0:
            hint = ""
            if any("no space left on device" in line for line in tail):
                free = shutil.disk_usage(self.cache).free / 2**30
                hint = (f"\n{free:.0f} GiB free under {self.cache}: a cold trainer build needs ~20 GiB "
                        "(its ~6 GiB dependency layer is written three times while it is committed)")
            raise ImageBuildError(f"buildah {args[0]} failed (log: {log_file}):\n" + "\n".join(tail) + hint)

    def has_image(self, ref: str) -> bool:
        return subprocess.run(self.argv("inspect", "--type", "image", ref), capture_output=True,
                              env=self.env()).returncode == 0


def ensure_base(buildah: Buildah, log: Log) -> str:
    """The base image in buildah's store (mmdebstrap + one `buildah add`, ~40 s the first time)."""
    ref = base_ref()
    if buildah.has_image(ref):
        return ref
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("the local base needs Debian's mmdebstrap (apt-get install mmdebstrap)")
    rootfs = buildah.cache / "tmp" / "base-rootfs.tar"
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    log(f"# base {ref}: mmdebstrap {BASE_SUITE} with {', '.join(BASE_PACKAGES)}")
    proc = subprocess.run(base_command(rootfs), capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(f"mmdebstrap failed: {proc.stderr.strip()[-2000:]}")
    try:
        container = buildah("from", "--quiet", "scratch")
        buildah("add", "--quiet", container, str(rootfs), "/")
        buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd", "/bin/sh", "--created-by", " ".join(base_command(Path("rootfs.tar"))), container)
        buildah("commit", "--quiet", "--rm", container, ref)
    finally:
        rootfs.unlink(missing_ok=True)
    return ref


def build_image(buildah: Buildah, root: Path, image: Image, base: str, key: str, log: Log) -> Path:
    """Build one image (layer cache on), write its docker-archive and drop the one this checkout
    built before; other checkouts share the cache and keep theirs until unused for UNUSED_DAYS."""
    ref, archive = image.ref(key), archive_path(buildah.cache, image, key)
    args = ["bud", "--layers", "--force-rm", "--pull=never", "--build-arg", f"BASE_IMAGE={base}", "-f",
            str(root / image.dockerfile), "-t", ref]  # --force-rm: a failed step leaves no container
    bundle = ca_bundle()
    if bundle is not None:
        args += ["--secret", f"id=ca,src={bundle}"]
    buildah.stream([*args, str(root)], buildah.cache / "logs" / f"{archive.stem}.log", log)
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    buildah("push", "--quiet", ref, f"docker-archive:{partial}:{ref}")
    partial.rename(archive)
    checkout = str(root.resolve())
    for old in buildah.cache.glob(f"{image.name}-*.tar"):
        origin = old.with_suffix(".json")
        mine = origin.is_file() and json.loads(origin.read_text()).get("checkout") == checkout
        if old == archive or not (mine or time.time() - old.stat().st_mtime > UNUSED_DAYS * 86400):
            continue
        old.unlink()
        origin.unlink(missing_ok=True)
        (buildah.cache / "logs" / f"{old.stem}.log").unlink(missing_ok=True)
        with contextlib.suppress(ImageBuildError):  # the layers its successor shares stay
            buildah("rmi", f"{REGISTRY}/{image.name}:{old.stem.removeprefix(image.name + '-')}")
    for origin in buildah.cache.glob(f"{image.name}-*.json"):
        if not origin.with_suffix(".tar").exists():  # its archive is gone
            origin.unlink()
    archive.with_suffix(".json").write_text(json.dumps({"ref": ref, "checkout": checkout}) + "\n")
    return archive


def prune_store(buildah: Buildah) -> None:
    """Remove the untagged images no tagged one builds on: the layers a changed pyproject.toml or a
    replaced build left behind (a trainer dependency layer is ~6 GB). The layer cache of the tagged
    images (their intermediate images) stays."""
    chains = {}
    for img in json.loads(buildah("images", "--all", "--json") or "[]"):
        inspected = json.loads(buildah("inspect", "--type", "image", img["id"]))
        chains[img["id"]] = (bool(img.get("names")), tuple(inspected["OCIv1"]["rootfs"]["diff_ids"]))
    tagged = [chain for named, chain in chains.values() if named]
    for image_id, (named, chain) in chains.items():
        if not named and not any(t[: len(chain)] == chain for t in tagged):
            with contextlib.suppress(ImageBuildError):  # in use by a working container
                buildah("rmi", image_id)


def archive_path(cache: Path, image: Image, key: str) -> Path:
    return cache / f"{image.name}-{key[:KEY_LENGTH]}.tar"


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (a second call waits, then finds the archives)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Built:
    image: Image
    ref: str
    archive: Path
    cached: bool


def build_all(cache: Path, root: Path | None = None, log: Log = _stderr) -> list[Built]:
    """Both images from the repository at `root` (default: the checkout of cluster/), each built only
    when no archive exists for its key."""
    root = root or cluster_dir().parent
    buildah = Buildah(cache, storage_driver())
    results = []
    with _locked(cache):
        base = base_ref()
        for image in IMAGES:
            key = image_key(root, image, base)
            archive = archive_path(cache, image, key)
            if archive.is_file():
                os.utime(archive)  # in use: see UNUSED_DAYS
                results.append(Built(image, image.ref(key), archive, cached=True))
                continue
            if shutil.which("buildah") is None:
                raise ImageBuildError("building the images needs Debian's buildah (apt-get install buildah)")
            t0 = time.monotonic()
            ensure_base(buildah, log)
            log(f"# {image.name}: building {image.ref(key)} from {image.dockerfile}")
            build_image(buildah, root, image, base, key, log)
            log(f"# {image.name}: built in {time.monotonic() - t0:.0f} s, "
                f"{archive.stat().st_size / 2**20:,.0f} MiB ({archive})")
            results.append(Built(image, image.ref(key), archive, cached=False))
        if not all(b.cached for b in results):
            prune_store(buildah)
    return results


# --- loading into the node ------------------------------------------------------------------------------


def node_runtime(cluster_dir: Path | None, socket: Path | None, ctr: Path | None) -> tuple[Path, Path] | None:
    """(ctr, containerd socket) of the node to load into: explicit, or from the cluster's cluster.json."""
    if socket or ctr:
        if not (socket and ctr):
            raise ImageBuildError("--containerd-socket and --ctr go together")
        return ctr, socket
    if cluster_dir is None:
        return None
    state_file = cluster_dir / "cluster.json"
    if not state_file.is_file():
        raise ImageBuildError(f"no cluster in {cluster_dir} (no cluster.json)")
    state = json.loads(state_file.read_text())
    if not state.get("containerd_socket") or not state.get("bin_dir"):
        raise ImageBuildError(f"the cluster in {cluster_dir} runs no real node (cluster.json names no "
                              "containerd_socket and bin_dir); pass --containerd-socket and --ctr")
    return Path(state["bin_dir"]) / "ctr", Path(state["containerd_socket"])


def load(built: Sequence[Built], ctr: Path, socket: Path, log: Log = _stderr) -> None:
    """Import each archive into the node's containerd (namespace k8s.io) unless it has that ref."""
    listed = subprocess.run([str(ctr), "--address", str(socket), "--namespace", "k8s.io", "images", "ls", "-q"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise ImageBuildError(f"ctr images ls: {listed.stderr.strip()}")
    present = set(listed.stdout.split())
    for b in built:
        if b.ref in present:
            log(f"# {b.image.name}: the node has {b.ref}")
            continue
        t0 = time.monotonic()
        try:
            import_image(ctr, socket, b.archive)
        except RuntimeError as e:
            raise ImageBuildError(str(e)) from None
        log(f"# {b.image.name}: loaded into the node in {time.monotonic() - t0:.0f} s")


# --- command line ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune dev images",
        description="Build the operator and trainer images without a Docker engine (buildah), cached by a "
                    "hash of their inputs; optionally load them into the local node's containerd. Prints "
                    "operator=REF and trainer=REF last.")  # fmt: skip
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("build", help="build (or find cached) both images; load them with --dir")
    p.add_argument("--dir", type=Path, metavar="DIR", help="a local cluster's folder (`kubetune dev cluster up --dir DIR`): load "
                                             "both images into its node")
    p.add_argument("--cache", type=Path, metavar="DIR", help="cache folder (default $KUBETUNE_CACHE/images, ~/.cache/kubetune/images)")
    p.add_argument("--containerd-socket", type=Path, metavar="PATH", help="load into the containerd behind this socket (with --ctr)")
    p.add_argument("--ctr", type=Path, metavar="PATH", help="the ctr binary to load with")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cache = (args.cache or cache_root() / "images").resolve()
    try:
        runtime = node_runtime(args.dir, args.containerd_socket, args.ctr)
        built = build_all(cache)
        if runtime is not None:
            load(built, *runtime)
    except ImageBuildError as e:
        print(f"kubetune dev images: error: {e}", file=sys.stderr)
        return 1
    for b in built:
        print(f"{b.image.name}={b.ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
