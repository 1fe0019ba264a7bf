"""Locating (and, on a cold cache, building) the control-plane binaries."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm",
         "kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "pause",
         "cni/bridge", "cni/host-local", "cni/loopback")


class BinariesError(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    bin_dir: Path

    def __getitem__(self, name: str) -> Path:
        if name not in NAMES:
            raise KeyError(name)
        return self.bin_dir / name

    @property
    def etcd(self) -> Path:
        return self["etcd"]

    @property
    def kube_apiserver(self) -> Path:
        return self["kube-apiserver"]

    @property
    def kube_controller_manager(self) -> Path:
        return self["kube-controller-manager"]

    @property
    def kube_scheduler(self) -> Path:
        return self["kube-scheduler"]

    @property
    def kwok(self) -> Path:
        return self["kwok"]

    @property
    def kubectl(self) -> Path:
        return self["kubectl"]

    @property
    def helm(self) -> Path:
        return self["helm"]

    # the real node's
    @property
    def kubelet(self) -> Path:
        return self["kubelet"]

    @property
    def kube_proxy(self) -> Path:
        return self["kube-proxy"]

    @property
    def containerd(self) -> Path:
        return self["containerd"]

    @property
    def ctr(self) -> Path:
        return self["ctr"]

    @property
    def pause(self) -> Path:
        return self["pause"]

    def missing(self) -> list[str]:
        return [n for n in NAMES if not os.access(self[n], os.X_OK)]


def cluster_dir() -> Path:
    """The repository's `cluster/` folder (versions.env, go.mod, build.sh).

    KUBETUNE_CLUSTER_DIR, else the folder this package sits in: a checkout on PYTHONPATH and an
    editable install (`pip install -e cluster`) both import it from there.
    """
    env = os.environ.get("KUBETUNE_CLUSTER_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")


def read_versions(path: Path | None = None) -> dict[str, str]:
    """Parse cluster/versions.env (KEY=VALUE lines, # comments)."""
    if path is None:
        path = cluster_dir() / "versions.env"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: install kubetune-devcluster editable (pip install -e cluster) "
                "or set KUBETUNE_CLUSTER_DIR to a kubetune checkout's cluster/ folder"
            )
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def expected_bin_dir() -> Path:
    v = read_versions()
    return cache_root() / f"cluster-{v['K8S_VERSION']}-{v['KWOK_VERSION']}" / "bin"


@functools.cache
def _ensure(build: bool, bin_override: str | None, cache: str | None) -> Binaries:
    if bin_override:
        bins = Binaries(Path(bin_override))
        if bins.missing():
            raise BinariesError(f"KUBETUNE_CLUSTER_BIN={bin_override} lacks {bins.missing()}")
        return bins
    script = cluster_dir() / "build.sh"
    if not script.exists():
        raise BinariesError(
            f"{script} not found: set KUBETUNE_CLUSTER_DIR to the repository's cluster/ folder "
            "or KUBETUNE_CLUSTER_BIN to a folder holding the binaries"
        )
    bins = Binaries(expected_bin_dir())
    if not build:
        if bins.missing():
            raise BinariesError(f"binaries missing in {bins.bin_dir}: {bins.missing()} (run {script})")
        return bins
    # build.sh returns at once on a warm cache; on a cold one it builds (10-25 min).
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    if proc.returncode != 0:
        raise BinariesError(f"{script} failed with exit code {proc.returncode}")
    bins = Binaries(Path(proc.stdout.strip().splitlines()[-1]))
    if bins.missing():
        raise BinariesError(f"{script} finished but {bins.bin_dir} lacks {bins.missing()}")
    return bins


def ensure_binaries(build: bool = True) -> Binaries:
    """Paths of every binary; runs cluster/build.sh when the cache is cold (unless build=False).

    KUBETUNE_CLUSTER_BIN=<dir> skips the build script and uses the binaries found there.
    """
    return _ensure(build, os.environ.get("KUBETUNE_CLUSTER_BIN"), os.environ.get("KUBETUNE_CACHE"))
