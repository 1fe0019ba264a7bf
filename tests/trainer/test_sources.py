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


def test_revisions_of_a_hub_snapshot_a_folder_and_an_adapter(tmp_path: Path) -> None:
    from kubetune.api.manifest import MANIFEST_NAME, manifest_of
    from kubetune_trainer.provenance import adapter_revision, input_file, model_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"a": 1}')
    assert model_revision("hf://org/m", snap).revision == commit  # the Hub commit the revision resolved to
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    first = model_revision("s3://b/model", folder).revision
    assert first.startswith("sha256:") and first == model_revision("s3://b/model", folder).revision
    (folder / "model.safetensors").write_bytes(b"x" * 11)  # other weights: another revision
    assert model_revision("s3://b/model", folder).revision != first
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    computed = adapter_revision("pvc://c/a", adapter).revision
    assert computed == manifest_of(adapter).digest
    (adapter / MANIFEST_NAME).write_bytes(manifest_of(adapter).to_bytes())  # a promoted folder: its manifest's digest
    assert adapter_revision("pvc://c/a", adapter).revision == computed
    f = input_file("dataset", "s3://b/train.jsonl", adapter / "adapter_config.json")
    assert (f.size, f.sha256) == (2, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
