"""`kubetune dev images build` end to end: both images built here without a Docker engine (buildah),
cached, and what each one carries, inspected in buildah's store.

The first run on a machine builds both (~15-25 min on 2 cores, most of it the trainer's torch
stack); later runs find the archives for the same inputs and return at once. Running the images
in pods on the local node is tests/e2e's real-node test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune_devcluster.binaries import cache_root
from kubetune_devcluster.images import Buildah, storage_driver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CACHE = cache_root() / "images"  # the machine's cache: a cold build downloads torch once, not per run


@dataclass(frozen=True)
class Build:
    refs: dict[str, str]
    stderr: str
    seconds: float


def _build() -> Build:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kubetune.cli", "dev", "images", "build"],
                          capture_output=True, text=True)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["operator", "trainer"], proc.stdout
    return Build(dict(line.split("=", 1) for line in lines), proc.stderr, seconds)


@pytest.fixture(scope="module")
def built() -> Build:
    return _build()


@pytest.fixture(scope="module")
def buildah() -> Buildah:
    return Buildah(CACHE, storage_driver())


@pytest.fixture(scope="module")
def containers(built: Build, buildah: Buildah) -> Iterator[dict[str, str]]:
    """A working container of each image (made from the archive if the store lost the image)."""
    names = {}
    for name, ref in built.refs.items():
        if not buildah.has_image(ref):
            buildah("pull", "--quiet", f"docker-archive:{_archive(ref)}")
        names[name] = buildah("from", "--quiet", "--pull=never", ref)
    yield names
    for container in names.values():
        buildah("rm", container)


def _archive(ref: str) -> Path:
    repo, tag = ref.rsplit(":", 1)
    return CACHE / f"{repo.rsplit('/', 1)[-1]}-{tag}.tar"


def _config(buildah: Buildah, ref: str) -> dict[str, object]:
    return json.loads(buildah("inspect", "--type", "image", ref))["OCIv1"]["config"]  # type: ignore[no-any-return]


def test_both_archives_exist(built: Build) -> None:
    for ref in built.refs.values():
        assert _archive(ref).stat().st_size > 50 * 2**20, ref


def test_the_operator_image_carries_the_base_install_only(
    built: Build, buildah: Buildah, containers: dict[str, str]
) -> None:
    root = Path(buildah("mount", containers["operator"]))
    try:
        [site] = root.glob("opt/venv/lib/python3*/site-packages")
        assert (site / "kubetune" / "cli" / "__init__.py").is_file() and (site / "kopf").is_dir()
        assert [p.name for p in site.iterdir() if p.name.split("-")[0] in
                ("torch", "presidio_analyzer", "spacy", "kubetune_trainer")] == []
    finally:
        buildah("umount", containers["operator"])
    config = _config(buildah, built.refs["operator"])
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["kubetune", "operator"]
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]  # type: ignore[operator]
    # as the image's user: the CLI, and every module the operator process loads (handlers, webhook)
    out = buildah("run", "--isolation", "chroot", containers["operator"], "--", "kubetune", "--help")
    assert "operator" in out and "check-data" in out
    code = ("import sys, os, kubetune.controller.main, kubetune.controller.webhook, kubetune.cli.validate; "
            "print(os.getuid(), sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'presidio_analyzer'}))")
    assert buildah("run", "--isolation", "chroot", containers["operator"], "--", "python", "-c", code) == "65532 []"


def test_the_trainer_image_imports_its_stack(built: Build, buildah: Buildah, containers: dict[str, str]) -> None:
    config = _config(buildah, built.refs["trainer"])
    assert config["User"] == "65532:65532" and config["Entrypoint"] == ["kubetune-trainer"]
    code = ("import kubetune_trainer.run, torch, bitsandbytes, trl, presidio_analyzer; "
            "print(torch.__version__, trl.__version__)")
    out = buildah("run", "--isolation", "chroot", containers["trainer"], "--", "python", "-c", code)
    assert out.splitlines()[-1].startswith("2.13.0")
    data = buildah("run", "--isolation", "chroot", containers["trainer"], "--",
                   "ls", "/opt/kubetune/examples/quickstart/data")
    assert {"train.jsonl", "golden.jsonl", "safety.jsonl", "preferences.jsonl"} <= set(data.split())


def test_a_second_call_is_a_cache_hit(built: Build) -> None:
    again = _build()
    assert again.refs == built.refs
    assert "building" not in again.stderr
    assert again.seconds < 15, again.seconds
