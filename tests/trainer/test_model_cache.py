"""The model cache against a real S3 server (SeaweedFS on 127.0.0.1): two jobs starting together on a
cold cache fetch every object once (the server's own byte counter says so), a later job takes a hit,
the trainer reads the preflight's entry without a download, a missing model is ModelUnavailable, and
eviction is least-recently-used but never takes a model under a live lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_config, sft_manifest  # at import: a later conftest (tests/unit/data) takes the name

from kubetune.api.model_cache import COMPLETE_MARKER, ModelCacheConfig
from kubetune_trainer.failures import TrainerFailure
from kubetune_trainer.model_cache import ModelCache
from kubetune_trainer.tiny import build_tiny_llama

pytestmark = [pytest.mark.trainer]

REPO = Path(__file__).resolve().parents[2]


def _put(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


@pytest.fixture(scope="module")
def s3_model(s3_server, tmp_path_factory) -> dict:
    """Two tiny models in their own bucket: s3://cache-models/tiny-a/ and tiny-b/."""
    fs = s3_server.client()
    s3_server.make_bucket("cache-models")
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny")
    files = {f.name: f.read_bytes() for f in sorted(model.iterdir()) if f.is_file()}
    for prefix in ("tiny-a", "tiny-b"):
        for name, data in files.items():
            _put(fs, f"cache-models/{prefix}/{name}", data)
    return {"size": sum(len(b) for b in files.values()), "files": files}


def _ensure_in_a_process(root: Path, uri: str, job: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = ("import json, sys\n"
            "from kubetune.api.model_cache import ModelCacheConfig\n"
            "from kubetune_trainer.model_cache import ModelCache\n"
            f"path, report = ModelCache(ModelCacheConfig(root={str(root)!r})).ensure({uri!r}, revision=None, "
            f"job_uid={job!r}, log=lambda m: print(m, file=sys.stderr))\n"
            "print(json.dumps({'path': str(path), **report.model_dump(by_alias=True, mode='json')}))\n")
    pythonpath = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env, "PYTHONPATH": pythonpath})


def test_two_jobs_on_a_cold_cache_fetch_the_model_once_and_a_third_takes_a_hit(s3_env, s3_model, tmp_path):
    root = tmp_path / "cache"
    before = s3_env.sent_bytes("cache-models")
    procs = [_ensure_in_a_process(root, "s3://cache-models/tiny-a", f"job-{i}", s3_env.env()) for i in range(2)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    # the server's own counter: the model's bytes were served once, not twice
    assert s3_env.sent_bytes("cache-models") - before == s3_model["size"]
    downloaded = sorted(r["bytesDownloaded"] for r in reports)
    assert downloaded == [0, s3_model["size"]] and sorted(r["hit"] for r in reports) == [False, True]
    assert reports[0]["key"] == reports[1]["key"] and reports[0]["path"] == reports[1]["path"]
    entry = Path(reports[0]["path"])
    assert {p.name: p.read_bytes() for p in entry.iterdir() if p.name != COMPLETE_MARKER} == s3_model["files"]
    marker = json.loads((entry / COMPLETE_MARKER).read_text())
    assert marker["uri"] == "s3://cache-models/tiny-a" and marker["size"] == s3_model["size"]
    assert list((root / "tmp").iterdir()) == []  # nothing half-written left behind
    # each job holds a lease on the entry until it releases it
    cache = ModelCache(ModelCacheConfig(root=str(root)))
    assert cache.lease_key("job-0") == cache.lease_key("job-1") == entry.name

    # a later job: a hit, nothing fetched
    before = s3_env.sent_bytes("cache-models")
    path, report = cache.ensure("s3://cache-models/tiny-a", revision=None, job_uid="job-2", log=lambda m: None)
    assert (path, report.hit, report.bytes_downloaded) == (entry, True, 0)
    assert s3_env.sent_bytes("cache-models") == before


def test_the_trainer_reads_the_preflights_entry_and_downloads_nothing(s3_env, s3_model, tmp_path):
    import contextlib

    from kubetune_trainer.preflight import cache_model
    from kubetune_trainer.run import _model_path

    config = make_config(sft_manifest("qlora"), model=Path("/unused"), dataset=tmp_path / "d.jsonl", output=tmp_path)
    config.sources.model = "s3://cache-models/tiny-b"
    config.job.uid = "uid-7"
    config.model_cache = ModelCacheConfig(root=str(tmp_path / "cache"), lease_seconds=60)
    logs: list[str] = []
    report = cache_model(config, logs.append, progress_path=tmp_path / "progress.json")  # the preflight pod
    assert report is not None and report.used and not report.hit and report.bytes_downloaded == s3_model["size"]
    before = s3_env.sent_bytes("cache-models")
    with contextlib.ExitStack() as stack:  # the trainer pod
        path, pinned = _model_path(config, logs.append, stack)
        assert path == tmp_path / "cache" / "models" / report.key
        assert ModelCache(config.model_cache).lease_key("uid-7") == report.key  # leased while it runs
    assert ModelCache(config.model_cache).lease_key("uid-7") is None  # released at the end
    with contextlib.ExitStack() as stack:  # a restarted trainer pod: no lease left, the entry is a hit
        again, _ = _model_path(config, logs.append, stack)
        assert again == path
    assert any("looking it up in the model cache" in m for m in logs) and any("cache hit" in m for m in logs)
    assert s3_env.sent_bytes("cache-models") == before
    assert any("from the model cache, fetched by the data preflight pod; nothing downloaded here" in m for m in logs)
    assert pinned is None  # s3://: provenance digests the folder; hf:// pins the commit


def test_the_preflight_reports_the_downloads_bytes_total_and_eta_while_it_runs(s3_env, s3_model, tmp_path,
                                                                               monkeypatch):
    """The data preflight pod's progress while it downloads the model: every snapshot in progress.jsonl and
    the kubetune.io/progress patches (the trainer's PodAnnotator against a recording HTTP server) carry
    modelCache.progress — bytes done, the total (the objects' sizes), the ETA — and the last says done."""
    from test_reporting import _ApiServer

    from kubetune.api.trainer_contract import ReportChannel
    from kubetune_trainer import model_cache, reporting, storage
    from kubetune_trainer.preflight import cache_model

    size = s3_model["size"]
    # the cadence, not the contract: small chunks and no throttling, so a loopback download shows its middle
    monkeypatch.setattr(storage, "GET_CHUNK", max(1, size // 16))
    monkeypatch.setattr(model_cache, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(reporting, "FILE_INTERVAL_S", 0.0)
    api = _ApiServer()
    monkeypatch.setattr(reporting.PodAnnotator, "from_env", classmethod(
        lambda cls: cls("ns", "preflight-pod", api=api.url, token_path=tmp_path / "token")))
    (tmp_path / "token").write_text("t")
    config = make_config(sft_manifest("qlora"), model=Path("/unused"), dataset=tmp_path / "d.jsonl", output=tmp_path,
                         report=ReportChannel(pod_annotations=True, interval_seconds=0.05))
    config.sources.model = "s3://cache-models/tiny-a"
    config.job.uid = "uid-progress"
    config.model_cache = ModelCacheConfig(root=str(tmp_path / "cache"))
    logs: list[str] = []
    report = cache_model(config, logs.append, progress_path=tmp_path / "pf" / "progress.json")
    assert report is not None and not report.hit and report.bytes_downloaded == size
    # the final report carries the finished download: status.modelCache.progress once the preflight ended
    assert report.progress is not None and (report.progress.bytes_done, report.progress.bytes_total,
                                            report.progress.eta_seconds) == (size, size, 0.0)

    snaps = [json.loads(line) for line in (tmp_path / "pf" / "progress.jsonl").read_text().splitlines()]
    assert all(s["stage"] == "preflight" and s["modelCache"]["uri"] == "s3://cache-models/tiny-a" for s in snaps)
    progress = [s["modelCache"]["progress"] for s in snaps]
    assert all(p["bytesTotal"] == size for p in progress)
    done = [p["bytesDone"] for p in progress]
    assert done == sorted(done) and done[0] == 0 and done[-1] == size
    middle = [p for p in progress if 0 < p["bytesDone"] < size]
    assert len(middle) >= 3 and all(p["etaSeconds"] > 0 for p in middle)  # during: an ETA from the rate so far
    assert progress[-1]["etaSeconds"] == 0
    assert snaps[-1]["summary"].startswith("downloading the base model: ") and " MiB" in snaps[-1]["summary"]
    assert json.loads((tmp_path / "pf" / "progress.json").read_text()) == snaps[-1]
    # no trainer start counted, no metrics served: the preflight is not an attempt of the trainer
    assert "attempt" not in snaps[-1] and not (tmp_path / "kubetune" / "attempts").exists()

    # the annotation: the same payload, patched on the preflight's own pod; the start and the end always sent
    assert api.requests and all(path == "/api/v1/namespaces/ns/pods/preflight-pod" for path, _, _ in api.requests)
    sent = [json.loads(body["metadata"]["annotations"]["kubetune.io/progress"]) for _, _, body in api.requests]
    assert sent[0]["modelCache"]["progress"] == {"bytesDone": 0, "bytesTotal": size}
    assert sent[-1]["modelCache"]["progress"] == {"bytesDone": size, "bytesTotal": size, "etaSeconds": 0.0}
    assert any("model download" in line and "MiB" in line for line in logs)


def test_a_missing_model_is_model_unavailable_and_a_missing_bucket_storage_unavailable(s3_env, s3_model, tmp_path):
    cache = ModelCache(ModelCacheConfig(root=str(tmp_path / "cache")))
    with pytest.raises(TrainerFailure) as e:
        cache.ensure("s3://cache-models/no-such-model", revision=None, job_uid="j", log=lambda m: None)
    assert e.value.reason == "ModelUnavailable" and "s3://cache-models/no-such-model" in e.value.message
    with pytest.raises(TrainerFailure) as e:
        cache.ensure("s3://no-such-bucket/m", revision=None, job_uid="j", log=lambda m: None)
    assert e.value.reason == "StorageUnavailable" and "no-such-bucket" in e.value.message
    assert cache.lease_key("j") is None  # a failed job holds no lease


def test_eviction_is_lru_and_never_takes_a_leased_model(s3_env, s3_model, tmp_path):
    size = s3_model["size"]
    cfg = ModelCacheConfig(root=str(tmp_path / "cache"), size_limit_bytes=size + size // 2, lease_seconds=30)
    cache = ModelCache(cfg)
    a, ra = cache.ensure("s3://cache-models/tiny-a", revision=None, job_uid="running", log=lambda m: None)
    # tiny-a is in use (its lease is fresh): adding tiny-b leaves the cache over its limit, both kept
    b, rb = cache.ensure("s3://cache-models/tiny-b", revision=None, job_uid="other", log=lambda m: None)
    assert a.is_dir() and b.is_dir() and rb.evicted is None
    # the running job ended long ago (its lease went stale), the other is gone: tiny-a is the LRU entry
    old = time.time() - 3600
    os.utime(cache.lease_path("running"), (old, old))
    cache.release("other")
    os.utime(a / COMPLETE_MARKER, (old, old))
    assert cache.evict(keep=None, log=lambda m: None) == [ra.key]
    assert not a.exists() and b.is_dir()
