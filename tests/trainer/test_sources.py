"""Source resolution: local paths, file://, pvc:// under the mount root; hub offline and unknown
schemes fail with a message naming the location and the options."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer.sources import SourceError, resolve

pytestmark = pytest.mark.trainer


def test_local_file_and_pvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "claim" / "data" / "train.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text("{}\n")
    assert resolve(str(f), kind="dataset") == f
    assert resolve(f"file://{f}", kind="dataset") == f
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path))
    assert resolve("pvc://claim/data/train.jsonl", kind="dataset") == f


def test_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match=r"unknown scheme .ftp.*hf://"):
        resolve("ftp://host/model")


def test_hub_offline_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN_FOR_TEST", "hf_xxx")
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE"):
        resolve("hf://kubetune-test/definitely-not-cached", token_env="HF_TOKEN_FOR_TEST")
    with pytest.raises(SourceError, match="name a file"):
        resolve("hf://datasets/org/name", kind="dataset")
