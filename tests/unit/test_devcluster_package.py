"""The development package kubetune-devcluster finds cluster/ (versions.env, build.sh): next to
itself in a checkout or an editable install, or where KUBETUNE_CLUSTER_DIR says."""

from pathlib import Path

import pytest

import kubetune_devcluster
from kubetune_devcluster.binaries import cluster_dir, expected_bin_dir, read_versions


def test_cluster_folder_is_the_one_the_package_sits_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETUNE_CLUSTER_DIR", raising=False)
    here = Path(kubetune_devcluster.__file__).resolve().parent.parent
    assert cluster_dir() == here
    assert (here / "build.sh").is_file()
    assert read_versions()["K8S_VERSION"].startswith("v1.")


def test_kubetune_cluster_dir_overrides_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CLUSTER_DIR", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="KUBETUNE_CLUSTER_DIR"):
        read_versions()
    (tmp_path / "versions.env").write_text('# pinned\nK8S_VERSION="v1.2.3"\nKWOK_VERSION=v0.4.5\n')
    assert cluster_dir() == tmp_path
    assert expected_bin_dir() == tmp_path / "cache" / "cluster-v1.2.3-v0.4.5" / "bin"
