"""e2e fixtures: a real local control plane (etcd, kube-apiserver, controller-manager,
scheduler) with kwok fake GPU nodes, shared by the whole session.

The first run on a machine builds the binaries (cluster/build.sh, 10-25 min on 2 cores);
later runs start the cluster in ~10-20 s. To reuse a cluster that `python -m
kubetune_devcluster up --dir DIR` left running, set KUBETUNE_E2E_CLUSTER_DIR=DIR (it is
then not stopped at the end).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
for _src in (_ROOT / "operator", _ROOT / "cluster"):  # works without `pip install -e . -e cluster` too
    if str(_src) not in sys.path:
        sys.path.insert(0, str(_src))

from kubetune_devcluster import Cluster, ensure_binaries, start  # noqa: E402


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The running control plane: `.kubeconfig` (admin), `.kubectl(*args)` -> CompletedProcess,
    `.helm` (path), `.apply(*dicts)`, `.get(*args)` -> dict, `.env()`, `.server`."""
    reuse = os.environ.get("KUBETUNE_E2E_CLUSTER_DIR")
    if reuse:
        c = Cluster.attach(reuse)
        c.check_alive()
        yield c
        return
    bins = ensure_binaries()
    c = start(tmp_path_factory.mktemp("devcluster"), binaries=bins)
    try:
        yield c
    finally:
        c.stop_and_report()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards without waiting)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name, check=True)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
