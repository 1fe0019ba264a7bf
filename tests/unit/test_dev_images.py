"""`kubetune dev images build` (kubetune_devcluster.images): what keys a build, what the Dockerfiles
promise, and the output contract. The build itself is tests/e2e/test_images.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune.cli import main as kubetune_main
from kubetune_devcluster import images
from kubetune_devcluster.images import IMAGES, Image, ImageBuildError, copy_sources, image_key, node_runtime

ROOT = Path(__file__).resolve().parents[2]
REF = re.compile(r"localhost/kubetune/(operator|trainer):[0-9a-f]{12}")


def _dockerfile(name: str) -> str:
    return (ROOT / next(i.dockerfile for i in IMAGES if i.name == name)).read_text()


# --- the Dockerfiles --------------------------------------------------------------------------------


def test_copy_sources_reads_copy_and_add_but_not_other_stages() -> None:
    text = (
        "FROM x AS build\n"
        "COPY --chown=1:1 a.txt dir/ /dst/\n"
        "COPY --from=build /opt/venv /opt/venv\n"
        "ADD [\"b c.txt\", \"/d/\"]\n"
        "RUN echo COPY nothing \\\n  && true\n"
        "copy e \\\n  /f/\n"
    )
    assert copy_sources(text) == ["a.txt", "dir/", "b c.txt", "e"]


def test_the_dockerfiles_copy_what_the_key_hashes() -> None:
    assert set(copy_sources(_dockerfile("operator"))) == {
        "pyproject.toml", "scripts/pyproject_requirements.py", "README.md", "operator/kubetune/",
    }  # fmt: skip
    trainer = copy_sources(_dockerfile("trainer"))
    assert {"trainer_image/kubetune_trainer/", "operator/kubetune/", "examples/quickstart/data/"} <= set(trainer)


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_each_dockerfile_takes_its_base_as_an_argument_and_runs_as_65532(name: str) -> None:
    text = _dockerfile(name)
    assert re.search(r"^ARG BASE_IMAGE=\S+$", text, re.M)
    # one base; the dependency list is a stage of its own, so their install depends on the list alone
    assert re.findall(r"^FROM .*$", text, re.M) == ["FROM ${BASE_IMAGE} AS python", "FROM python AS requirements",
                                                    "FROM python"]
    assert "COPY --from=requirements /requirements.txt" in text
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in text


def test_the_operator_image_runs_what_the_chart_runs() -> None:
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", _dockerfile("operator"), re.M)
    assert entrypoint is not None
    deployment = (ROOT / "charts" / "kubetune" / "templates" / "deployment.yaml").read_text()
    command = re.search(r"^\s+command: (\[.*\])$", deployment, re.M)
    assert command is not None
    assert json.loads(entrypoint.group(1)) == json.loads(command.group(1)) == ["kubetune", "operator"]


def test_the_image_installs_from_pyproject_with_extras_expanded() -> None:
    script = ROOT / "scripts" / "pyproject_requirements.py"
    run = [sys.executable, str(script), str(ROOT / "pyproject.toml")]
    base = subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()
    trainer = subprocess.run([*run, "trainer"], capture_output=True, text=True, check=True).stdout.split()
    assert any(r.startswith("kopf") for r in base)
    assert not [r for r in base if r.startswith(("torch", "presidio"))]
    assert {"torch", "presidio-analyzer", "trl"} <= {re.split(r"[<>=!~\[; ]", r)[0] for r in trainer}
    assert not [r for r in trainer if r.lower().startswith("kubetune")]  # `kubetune[data]` was expanded
    bad = subprocess.run([*run, "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no extra 'nope'" in bad.stderr


# --- the key -----------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small git checkout: a Dockerfile that copies one file and one folder."""
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "Dockerfile").write_text("ARG BASE_IMAGE=x\nFROM ${BASE_IMAGE}\nCOPY a.txt /a\nCOPY pkg/ /pkg/\n")
    (root / "a.txt").write_text("a\n")
    (root / "pkg" / "m.py").write_text("x = 1\n")
    (root / "other.txt").write_text("not copied\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    return root


def test_the_key_is_stable_and_follows_every_input(repo: Path) -> None:
    image = Image("operator", "Dockerfile")
    key = image_key(repo, image, "base:1")
    assert key == image_key(repo, image, "base:1") and re.fullmatch(r"[0-9a-f]{64}", key)
    seen = {key}

    def changed() -> bool:
        new = image_key(repo, image, "base:1")
        fresh = new not in seen
        seen.add(new)
        return fresh

    (repo / "other.txt").write_text("still not copied\n")
    (repo / "pkg" / "__pycache__").mkdir()
    (repo / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")  # ignored: never copied
    assert not changed()
    (repo / "pkg" / "m.py").write_text("x = 2\n")  # a copied file, changed but not committed
    assert changed()
    (repo / "pkg" / "new.py").write_text("")  # untracked, not ignored: COPY takes it
    assert changed()
    (repo / "pkg" / "new.py").chmod(0o755)
    assert changed()
    (repo / "a.txt").unlink()
    assert changed()
    (repo / "Dockerfile").write_text((repo / "Dockerfile").read_text() + "USER 65532:65532\n")
    assert changed()
    (repo / ".dockerignore").write_text("pkg/new.py\n")
    assert changed()
    assert image_key(repo, image, "base:2") not in seen  # another base recipe


def test_the_base_is_named_by_its_recipe() -> None:
    assert re.fullmatch(r"localhost/kubetune/base-bookworm:[0-9a-f]{12}", images.base_ref())
    command = images.base_command(Path("/x/rootfs.tar"))
    assert command[0] == "mmdebstrap" and command[-2:] == ["bookworm", "/x/rootfs.tar"]
    assert "--include=python3,python3-venv,ca-certificates,libstdc++6" in command


# --- the cache and the output contract ----------------------------------------------------------------


def test_a_warm_call_builds_nothing_and_ends_with_the_two_refs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Archives present for the current keys: no buildah, no mmdebstrap; stdout is the two lines."""
    base = images.base_ref()
    for image in IMAGES:
        images.archive_path(tmp_path, image, image_key(ROOT, image, base)).write_bytes(b"")

    def no_builds(*_: object, **__: object) -> None:
        raise AssertionError("a warm call built something")

    monkeypatch.setattr(images, "ensure_base", no_builds)
    monkeypatch.setattr(images, "build_image", no_builds)
    assert kubetune_main(["dev", "images", "build", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("=", 1)[0] for line in out] == ["operator", "trainer"]
    for line in out:
        name, ref = line.split("=", 1)
        assert REF.fullmatch(ref) and ref.split("/")[-1].startswith(f"{name}:")


def test_a_cold_call_builds_each_missing_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def fake_build(buildah: images.Buildah, root: Path, image: Image, base: str, key: str, log: object) -> Path:
        built.append(image.name)
        archive = images.archive_path(buildah.cache, image, key)
        archive.write_bytes(b"")
        return archive

    monkeypatch.setattr(images.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(images, "ensure_base", lambda buildah, log: images.base_ref())
    monkeypatch.setattr(images, "build_image", fake_build)
    monkeypatch.setattr(images, "prune_store", lambda buildah: None)
    first = images.build_all(tmp_path, ROOT, log=lambda _: None)
    second = images.build_all(tmp_path, ROOT, log=lambda _: None)
    assert built == ["operator", "trainer"]
    assert [b.cached for b in first] == [False, False] and [b.cached for b in second] == [True, True]
    assert [b.ref for b in first] == [b.ref for b in second]


def test_the_node_to_load_into(tmp_path: Path) -> None:
    assert node_runtime(None, None, None) is None
    assert node_runtime(None, Path("/run/c.sock"), Path("/bin/ctr")) == (Path("/bin/ctr"), Path("/run/c.sock"))
    with pytest.raises(ImageBuildError, match="go together"):
        node_runtime(None, Path("/run/c.sock"), None)
    with pytest.raises(ImageBuildError, match="no cluster"):
        node_runtime(tmp_path, None, None)
    (tmp_path / "cluster.json").write_text(json.dumps({"server": "https://127.0.0.1:6443"}))
    with pytest.raises(ImageBuildError, match="no real node"):
        node_runtime(tmp_path, None, None)
    (tmp_path / "cluster.json").write_text(json.dumps({"containerd_socket": "/run/k/c.sock", "bin_dir": "/b"}))
    assert node_runtime(tmp_path, None, None) == (Path("/b/ctr"), Path("/run/k/c.sock"))


def test_an_error_is_one_line_and_no_refs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kubetune_main(["dev", "images", "build", "--dir", str(tmp_path), "--cache", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "no cluster" in captured.err


class FakeBuildah:
    """Records buildah calls; `push` writes the archive, `images`/`inspect` answer from `store`."""

    def __init__(self, cache: Path, store: dict[str, tuple[list[str], list[str]]] | None = None) -> None:
        self.cache, self.store, self.calls = cache, store or {}, []  # store: id -> (names, diff_ids)

    def stream(self, args: list[str], log_file: Path, log: object) -> None:
        self.calls.append(["bud", *args[1:]])

    def __call__(self, *args: str) -> str:
        self.calls.append(list(args))
        if args[0] == "push":
            Path(args[-1].split(":")[1]).write_bytes(b"archive")
        if args[0] == "images":
            return json.dumps([{"id": i, "names": names} for i, (names, _) in self.store.items()])
        if args[0] == "inspect":
            return json.dumps({"OCIv1": {"rootfs": {"diff_ids": self.store[args[-1]][1]}}})
        return ""


def test_a_build_replaces_the_archive_of_its_own_checkout_only(tmp_path: Path) -> None:
    trainer = next(i for i in IMAGES if i.name == "trainer")
    mine, theirs, unknown, unused = (tmp_path / f"trainer-{k * 12}.tar" for k in "abce")
    for archive, checkout in ((mine, ROOT), (theirs, Path("/elsewhere")), (unknown, None), (unused, Path("/old"))):
        archive.write_bytes(b"old")
        if checkout:
            archive.with_suffix(".json").write_text(json.dumps({"checkout": str(checkout)}))
    (tmp_path / "trainer-ffffffffffff.json").write_text("{}")  # its archive is gone
    week_ago = time.time() - images.UNUSED_DAYS * 86400 - 60
    os.utime(unused, (week_ago, week_ago))
    fake = FakeBuildah(tmp_path)
    new = images.build_image(fake, ROOT, trainer, "base:1", "d" * 64, log=lambda _: None)  # type: ignore[arg-type]
    assert new.read_bytes() == b"archive"
    assert json.loads(new.with_suffix(".json").read_text()) == {"ref": trainer.ref("d" * 64), "checkout": str(ROOT)}
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == sorted([theirs.name, unknown.name, new.name])
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted([theirs.with_suffix(".json").name,
                                                                      new.with_suffix(".json").name])
    assert ["rmi", "localhost/kubetune/trainer:" + "a" * 12] in fake.calls
    bud = fake.calls[0]
    assert bud[bud.index("--build-arg"):][:2] == ["--build-arg", "BASE_IMAGE=base:1"] and bud[-1] == str(ROOT)


def test_the_store_keeps_what_tagged_images_build_on(tmp_path: Path) -> None:
    fake = FakeBuildah(tmp_path, {
        "base": (["localhost/kubetune/base-bookworm:1"], ["l0"]),
        "deps-now": ([], ["l0", "l1"]),  # an intermediate image of the tagged trainer: the layer cache
        "trainer": (["localhost/kubetune/trainer:1"], ["l0", "l1", "l2"]),
        "deps-before": ([], ["l0", "l9"]),  # a dependency layer no tagged image uses any more
        "code-before": ([], ["l0", "l9", "l8"]),
    })  # fmt: skip
    images.prune_store(fake)  # type: ignore[arg-type]
    assert [c[1] for c in fake.calls if c[0] == "rmi"] == ["deps-before", "code-before"]
