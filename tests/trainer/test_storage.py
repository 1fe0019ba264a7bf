"""s3:// through kubetune_trainer.storage against a real S3 server (SeaweedFS on 127.0.0.1), and
promotion (kubetune_trainer.promotion) to s3:// and to a local folder: the manifest written last,
idempotent re-runs, partial promotions redone, and storage failures named in words."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import instruction_records, sft_manifest, write_jsonl

from kubetune.api.manifest import MANIFEST_NAME, Manifest, manifest_of, verify_folder
from kubetune.api.resources import parse_resource
from kubetune.api.trainer_contract import EXIT_CODES, ReportChannel, Sources
from kubetune.render.trainer_config import build_trainer_config
from kubetune_trainer import storage
from kubetune_trainer.promotion import promote, promote_local
from kubetune_trainer.sources import SourceError, resolve

pytestmark = pytest.mark.trainer


def artifact(folder: Path, *, seed: str = "a") -> Path:
    (folder / "nested").mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64 + seed.encode())
    (folder / "nested" / "tokenizer.json").write_text('{"v": 1}')
    return folder


def listing(server, prefix: str) -> dict[str, int]:
    from pyarrow import fs as pafs

    infos = server.client().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path[len(prefix) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


# ---- promotion to s3:// ---------------------------------------------------------------------------

def test_promotion_to_s3_writes_the_manifest_last_and_is_idempotent(s3_env, tmp_path):
    s3_env.make_bucket("promo")
    src = artifact(tmp_path / "adapter")
    lines: list[str] = []
    p = promote(src, "s3://promo/triage/v1", uri="s3://promo/triage/v1", log=lines.append)
    manifest = manifest_of(src)
    assert (p.uri, p.manifest_digest, p.files, p.bytes) == ("s3://promo/triage/v1", manifest.digest, 3,
                                                           manifest.total_bytes)
    found = listing(s3_env, "promo/triage/v1")
    assert set(found) == {MANIFEST_NAME, "adapter_config.json", "adapter_model.safetensors", "nested/tokenizer.json"}
    # what a reader does: fetch the folder, check every file against the manifest
    local = resolve("s3://promo/triage/v1", kind="adapter", cache=tmp_path / "cache")
    stored = Manifest.parse((local / MANIFEST_NAME).read_bytes())
    assert stored == manifest and verify_folder(local, stored) == []
    assert "written" in lines[-1]
    # the same artifact again (a retried pod): nothing is copied, the objects are untouched
    before = {i.path: i.mtime_ns for i in s3_env.client().get_file_info(
        __import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector("promo/triage/v1", recursive=True))}
    again = promote(src, "s3://promo/triage/v1", uri="s3://promo/triage/v1", log=lines.append)
    assert again == p and "nothing copied" in lines[-1]
    after = {i.path: i.mtime_ns for i in s3_env.client().get_file_info(
        __import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector("promo/triage/v1", recursive=True))}
    assert after == before


def test_a_partial_s3_promotion_is_redone(s3_env, tmp_path):
    s3_env.make_bucket("partial")
    src = artifact(tmp_path / "adapter")
    fs = s3_env.client()
    # a copy that died half-way: one object there, no manifest; plus a stale object from an older one
    with fs.open_output_stream("partial/p/adapter_config.json") as out:
        out.write(b"{}")
    with fs.open_output_stream("partial/p/old-weights.bin") as out:
        out.write(b"stale")
    p = promote(src, "s3://partial/p", uri="s3://partial/p")
    assert set(listing(s3_env, "partial/p")) == {MANIFEST_NAME, *manifest_of(src).sizes()}  # stale object gone
    # a different artifact over a complete promotion: the old manifest goes first, the new one comes last
    src2 = artifact(tmp_path / "adapter2", seed="b")
    p2 = promote(src2, "s3://partial/p", uri="s3://partial/p")
    assert p2.manifest_digest != p.manifest_digest
    local = resolve("s3://partial/p", kind="adapter", cache=tmp_path / "cache")
    assert Manifest.parse((local / MANIFEST_NAME).read_bytes()).digest == p2.manifest_digest
    assert (local / "adapter_config.json").read_text() == (src2 / "adapter_config.json").read_text()


def test_a_download_that_does_not_match_its_manifest_is_refused(s3_env, tmp_path):
    s3_env.make_bucket("tampered")
    src = artifact(tmp_path / "adapter")
    promote(src, "s3://tampered/a", uri="s3://tampered/a")
    with s3_env.client().open_output_stream("tampered/a/adapter_model.safetensors") as out:
        out.write(b"x" * 10)
    with pytest.raises(storage.StorageError, match=r"does not match its kubetune-manifest\.json"):
        resolve("s3://tampered/a", kind="adapter", cache=tmp_path / "cache")


# ---- promotion to a local / PVC folder --------------------------------------------------------------

def test_local_promotion_renames_a_verified_copy_into_place(tmp_path):
    src = artifact(tmp_path / "adapter")
    dest = tmp_path / "promoted" / "triage"
    manifest = manifest_of(src)
    assert promote_local(src, dest, manifest) is True
    assert Manifest.parse((dest / MANIFEST_NAME).read_bytes()) == manifest and verify_folder(dest, manifest) == []
    assert not list(dest.parent.glob(".triage.promoting-*"))
    stamp = (dest / MANIFEST_NAME).stat().st_mtime_ns
    assert promote_local(src, dest, manifest) is False  # same manifest: a no-op
    assert (dest / MANIFEST_NAME).stat().st_mtime_ns == stamp
    # partial: a file lost (or a folder without a manifest) is redone whole
    (dest / "nested" / "tokenizer.json").unlink()
    assert promote_local(src, dest, manifest) is True and verify_folder(dest, manifest) == []
    (dest / MANIFEST_NAME).unlink()
    assert promote_local(src, dest, manifest) is True and (dest / MANIFEST_NAME).exists()


def test_a_local_copy_that_dies_never_shows_under_the_promoted_name(tmp_path, monkeypatch):
    src = artifact(tmp_path / "adapter")
    dest = tmp_path / "promoted" / "triage"
    calls = []
    real_copy = shutil.copyfile

    def dying_copy(a, b, **kw):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(a, b, **kw)

    monkeypatch.setattr("kubetune_trainer.promotion.shutil.copyfile", dying_copy)
    with pytest.raises(storage.StorageError, match="No space left on device"):
        promote_local(src, dest, manifest_of(src))
    assert not dest.exists()  # only the hidden temporary folder holds the half copy
    monkeypatch.undo()
    assert promote_local(src, dest, manifest_of(src)) is True  # the next try cleans it and finishes
    assert [p.name for p in dest.parent.iterdir()] == ["triage"]


# ---- storage failures, named in words ----------------------------------------------------------------

def test_missing_bucket_wrong_credentials_and_unreachable_endpoint(s3_env, tmp_path, monkeypatch):
    s3_env.make_bucket("data")
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket/x.jsonl: the bucket 'no-such-bucket' does not exist"):
        resolve("s3://no-such-bucket/x.jsonl", kind="dataset", cache=tmp_path)
    with pytest.raises(SourceError, match="no object at this key"):  # a missing key is a missing file
        resolve("s3://data/missing.jsonl", kind="dataset", cache=tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(storage.StorageError, match=r"s3://data/x.jsonl: access denied: check AWS_ACCESS_KEY_ID"):
        resolve("s3://data/x.jsonl", kind="dataset", cache=tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.env()["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(storage.StorageError, match=r"s3://data/x.jsonl: cannot reach the S3 endpoint http://127.0.0.1:9"):
        resolve("s3://data/x.jsonl", kind="dataset", cache=tmp_path)


@pytest.mark.parametrize("case", ["missing-bucket", "wrong-credentials", "unreachable", "output-bucket"])
def test_storage_failures_end_the_run_before_training(case, s3_env, tmp_path, monkeypatch, run_main):
    """Every s3:// location is checked first: StorageUnavailable naming the URI, exit 8, no model loaded,
    no traceback in the message, no credential anywhere in what the trainer wrote."""
    s3_env.make_bucket("inputs")
    fs = s3_env.client()
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(30))
    with fs.open_output_stream("inputs/train.jsonl") as out:
        out.write(data.read_bytes())
    dataset, output_uri = "s3://inputs/train.jsonl", None
    if case == "missing-bucket":
        dataset = "s3://absent-bucket/train.jsonl"
    elif case == "wrong-credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_env.env()["AWS_SECRET_ACCESS_KEY"][::-1])
    elif case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    else:
        output_uri = "s3://absent-output-bucket/run"
    manifest = sft_manifest("lora")
    manifest["spec"]["baseModel"]["uri"] = "file:///nonexistent-model"  # never reached
    out = tmp_path / "out"
    job = parse_resource(manifest)
    config = build_trainer_config(job, sources=Sources(model="/nonexistent-model", dataset=dataset, output=str(out),
                                                       output_uri=output_uri),
                                  report=ReportChannel(termination_log=str(out / "termination-log")), device="cpu")
    rc, result = run_main(config)
    uri = {"missing-bucket": dataset, "output-bucket": output_uri}.get(case, dataset)
    assert (rc, result["reason"]) == (EXIT_CODES["StorageUnavailable"], "StorageUnavailable"), result
    assert uri in result["message"] and "Traceback" not in result["message"]
    assert result["progress"]["stage"] == "failed" and "step" not in result["progress"]
    stages = [json.loads(line)["stage"] for line in (out / "kubetune" / "progress.jsonl").read_text().splitlines()]
    assert "loading" not in stages and "training" not in stages
    secrets = {s3_env.env()["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SECRET_ACCESS_KEY"]}
    for path in out.rglob("*"):  # result.json, the termination log, progress, the preflight report
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not [s for s in secrets if s in text], path


def test_sdk_text_is_scrubbed_of_every_credential(monkeypatch):
    # should an SDK error ever echo a credential, the message the job ends with (status, Events) does not
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-value-123")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "planted-session-token-456")
    err = OSError("AWS Error UNKNOWN: signing with planted-secret-value-123 / planted-session-token-456 failed")
    message = str(storage.explain(err, "s3://b/k", doing="cannot read"))
    assert message.startswith("cannot read s3://b/k: ") and "planted" not in message and "***" in message
