"""The model cache's pure parts: the key, the eviction choice, the rendered volume and config, status
from the preflight's report and, while the preflight pod downloads, from its progress annotation, and
the metrics derived from it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from operator_builders import DATA_OK, ftj, jcond, job, terminated, typed
from operator_builders import pod as a_pod
from test_reconciler import jobs, key_of, pass_preflight, setup

from kubetune.api.model_cache import (
    DownloadProgress,
    Entry,
    ModelCacheReport,
    cache_key,
    cacheable,
    choose_evictions,
    download_progress,
    live_leases,
    normalize_uri,
)
from kubetune.api.trainer_contract import ProgressReport, TrainerConfig, TrainerResult
from kubetune.controller import metrics
from kubetune.controller.world import World
from kubetune.derivation import Verdict, derive_status
from kubetune.render.job import MODEL_CACHE_ROOT, render_children
from kubetune.render.settings import RenderSettings

GIB = 2**30


# --- the key ----------------------------------------------------------------------------------------

def test_the_key_is_per_uri_and_revision_and_one_spelling_per_location() -> None:
    a = cache_key("s3://models/tiny", "sha256:1")
    assert a == cache_key("s3://models/tiny/", "sha256:1")  # a trailing slash is the same folder
    assert a != cache_key("s3://models/tiny", "sha256:2")  # another revision is another entry
    assert a != cache_key("s3://models/tiny2", "sha256:1")
    assert a.startswith("models-tiny-") and len(a) <= 82 and "/" not in a
    commit = "0" * 40
    assert cache_key("hf://org/m@main", commit) == cache_key("hf://org/m", commit)  # @rev is the revision
    assert normalize_uri("hf://org/m@v1/") == "hf://org/m"
    long = cache_key("s3://b/" + "x" * 300, None)
    assert long.startswith("x" * 60 + "-") and len(long) == 81  # the slug keeps the name's tail


def test_only_hf_and_s3_models_are_cached_pvc_is_used_in_place() -> None:
    assert cacheable("hf://org/m") and cacheable("s3://b/m")
    assert not cacheable("/mnt/pvc/models/m") and not cacheable("pvc://models/m") and not cacheable("file:///m")


# --- eviction ---------------------------------------------------------------------------------------

def test_eviction_removes_least_recently_used_first_until_it_fits() -> None:
    entries = [Entry("old", 4 * GIB, 100.0), Entry("mid", 4 * GIB, 200.0), Entry("new", 4 * GIB, 300.0)]
    assert choose_evictions(entries, 8 * GIB, in_use=set()) == ["old"]
    assert choose_evictions(entries, 4 * GIB, in_use=set()) == ["old", "mid"]
    assert choose_evictions(entries, 12 * GIB, in_use=set()) == []
    assert choose_evictions(entries, None, in_use=set()) == []  # no limit: nothing is evicted


def test_eviction_never_takes_a_model_in_use_nor_the_one_just_added() -> None:
    entries = [Entry("old", 4 * GIB, 100.0), Entry("mid", 4 * GIB, 200.0), Entry("new", 4 * GIB, 300.0)]
    assert choose_evictions(entries, 8 * GIB, in_use={"old"}) == ["mid"]
    assert choose_evictions(entries, 4 * GIB, in_use={"old"}, keep="new") == ["mid"]  # stays over the limit
    assert choose_evictions(entries, 0, in_use={"old", "mid"}, keep="new") == []


def test_a_lease_is_live_while_its_heartbeat_is_recent() -> None:
    leases = {"a": [1000.0], "b": [100.0, 950.0], "c": [100.0]}
    assert live_leases(leases, now=1000.0, lease_seconds=60) == {"a", "b"}
    assert live_leases(leases, now=2000.0, lease_seconds=60) == set()


# --- rendering --------------------------------------------------------------------------------------

def _mounts(pod: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}


def test_a_cache_claim_mounts_the_cache_in_both_pods_and_names_it_in_the_config() -> None:
    s = RenderSettings(model_cache_claim="kubetune-model-cache", model_cache_size_limit="20Gi",
                       model_cache_lease_seconds=120)
    ch = render_children(typed(ftj()), s)
    for pod in (ch.preflight["spec"]["template"]["spec"], ch.job["spec"]["template"]["spec"]):
        assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "kubetune-model-cache"}} in pod["volumes"]
        assert _mounts(pod)["model-cache"] == MODEL_CACHE_ROOT
    config = TrainerConfig.model_validate_json(ch.configmap["data"]["config.json"])
    assert config.model_cache is not None
    assert (config.model_cache.root, config.model_cache.size_limit_bytes, config.model_cache.lease_seconds) == (
        MODEL_CACHE_ROOT, 20 * GIB, 120)


def test_without_a_claim_nothing_changes() -> None:
    ch = render_children(typed(ftj()), RenderSettings())
    assert "model-cache" not in str(ch.job) and "model-cache" not in str(ch.preflight)
    assert TrainerConfig.model_validate_json(ch.configmap["data"]["config.json"]).model_cache is None


def test_settings_come_from_the_chart_env() -> None:
    s = RenderSettings.from_env({"KUBETUNE_MODEL_CACHE_CLAIM": "c", "KUBETUNE_MODEL_CACHE_SIZE_LIMIT": "1Gi",
                                 "KUBETUNE_MODEL_CACHE_LEASE_SECONDS": "30"})
    assert (s.model_cache_claim, s.model_cache_size_limit, s.model_cache_lease_seconds) == ("c", "1Gi", 30.0)
    assert RenderSettings.from_env({"KUBETUNE_MODEL_CACHE_CLAIM": ""}).model_cache_claim is None


# --- status and metrics -----------------------------------------------------------------------------

HIT = ModelCacheReport(uri="hf://meta-llama/Meta-Llama-3-70B-Instruct", revision="a" * 40, key="k", used=True,
                       hit=True, bytes_downloaded=0, seconds=0.1)
MISS = HIT.model_copy(update={"hit": False, "bytes_downloaded": 141 * GIB})


def _with_cache(report: ModelCacheReport) -> TrainerResult:
    return DATA_OK.model_copy(update={"details": {"modelCache": report.model_dump(by_alias=True, mode="json")}})


@pytest.mark.parametrize("report", [HIT, MISS])
def test_status_says_whether_the_cache_was_used_and_pins_the_revision(report: ModelCacheReport) -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    pass_preflight(world, api, rec, cr, result=_with_cache(report))
    st = api.status[key_of(cr)]
    assert st["modelCache"] == report.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert st["modelCache"]["revision"] == "a" * 40 and st["modelCache"]["used"] is True
    assert jobs(api, cr)[1] is not None  # the GPU Job comes after the model is in the cache


def test_a_model_unavailable_preflight_ends_the_job_before_any_gpu_request() -> None:
    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    bad = TrainerResult(outcome="failed", reason="ModelUnavailable", data=DATA_OK.data,
                        message="model s3://models/nope: no object at this key (nothing below it)")
    pass_preflight(world, api, rec, cr, result=bad, exit_code=4, reason="Error", job_reason="PodFailurePolicy")
    st = api.status[key_of(cr)]
    assert (st["phase"], st["reason"]) == ("Failed", "ModelUnavailable") and "s3://models/nope" in st["message"]
    assert jobs(api, cr)[1] is None
    assert not [o for o in api.objects.values() if "nvidia.com/gpu" in str(o)]


def test_metrics_count_hits_misses_and_bytes_per_job() -> None:
    world = World()
    for name, report in (("a", MISS), ("b", HIT), ("c", HIT)):
        cr = ftj()
        cr["metadata"]["name"] = name
        cr["status"] = {"phase": "Running", "modelCache": report.model_dump(by_alias=True, mode="json")}
        world.put_cr(cr)
    fams = {f.name: f for f in metrics.JobsCollector(world.objects).collect()}
    by_result = {s.labels["result"]: s.value for s in fams["kubetune_model_cache_requests"].samples
                 if s.name.endswith("_total")}
    assert by_result == {"hit": 2, "miss": 1}
    downloaded = {s.labels["name"]: s.value for s in fams["kubetune_job_model_downloaded_bytes"].samples}
    assert downloaded == {"a": 141 * GIB, "b": 0, "c": 0}


# --- the download's progress while the preflight pod runs ---------------------------------------------

def _downloading(done: int, total: int, eta: float | None) -> str:
    """The preflight pod's kubetune.io/progress annotation while it downloads (kubetune_trainer.preflight)."""
    p = download_progress(done, total, 0.0)
    report = ModelCacheReport(uri="s3://models/llama", used=True, bytes_downloaded=done,
                              progress=p.model_copy(update={"eta_seconds": eta}))
    return ProgressReport(stage="preflight", model_cache=report).model_dump_json(by_alias=True, exclude_none=True)


def _derive_preflight(*pods: dict[str, Any], result: TrainerResult | None = None) -> dict[str, Any]:
    preflight = job(name="triage-llama3-70b-ft-preflight",
                    conditions=[jcond("Complete")] if result is not None else None)
    return derive_status(ftj(), verdict=Verdict(fits=True), preflight=preflight, preflight_pods=list(pods),
                         now=datetime(2025, 1, 1, 0, 5, tzinfo=UTC)).status


def test_status_shows_the_download_bytes_total_and_eta_while_the_preflight_pod_downloads() -> None:
    ann = {"kubetune.io/progress": _downloading(12 * 2**20, 48 * 2**20, 9.4)}
    st = _derive_preflight(a_pod("pf-1", annotations=ann))
    assert st["modelCache"] == {"uri": "s3://models/llama", "used": True, "hit": False,
                                "bytesDownloaded": 12 * 2**20,
                                "progress": {"bytesDone": 12 * 2**20, "bytesTotal": 48 * 2**20, "etaSeconds": 9.4}}
    assert (st["phase"], st["reason"]) == ("Validating", "CheckingData")
    assert st["message"].startswith("downloading the base model s3://models/llama into the model cache: "
                                    "12.0 of 48.0 MiB, ETA 9 s, in pod pf-1")
    assert "no GPU is requested" in st["message"]


def test_without_a_download_the_preflight_checks_the_data_and_status_has_no_model_cache() -> None:
    # no annotation (a hit, or before the download), a progress of another kind, one that is not JSON
    for ann in ({}, {"kubetune.io/progress": '{"stage":"preflight"}'}, {"kubetune.io/progress": "{nope"}):
        st = _derive_preflight(a_pod("pf-1", annotations=ann))
        assert "modelCache" not in st and st["message"].startswith("checking the data in pod pf-1")
    # a pod that ended without a report: its last progress is no longer a download in progress
    ended = a_pod("pf-1", phase="Failed", annotations={"kubetune.io/progress": _downloading(1, 2, 1.0)},
                state=terminated(137, "OOMKilled"))
    assert "modelCache" not in _derive_preflight(ended)


def test_the_final_report_replaces_the_progress_and_says_the_download_is_done() -> None:
    size = 48 * 2**20
    done = MISS.model_copy(update={"bytes_downloaded": size, "progress": download_progress(size, size, 3.0)})
    ended = a_pod("pf-1", phase="Succeeded", annotations={"kubetune.io/progress": _downloading(size // 2, size, 2.0)},
                state=terminated(0, "Completed", _with_cache(done).termination_message()))
    st = _derive_preflight(ended, result=_with_cache(done))
    assert st["modelCache"]["progress"] == {"bytesDone": size, "bytesTotal": size, "etaSeconds": 0.0}
    assert st["modelCache"]["bytesDownloaded"] == size and st["reason"] == "Validated"


def test_download_progress_extrapolates_the_mean_rate() -> None:
    assert download_progress(0, 100, 0.0) == DownloadProgress(bytes_done=0, bytes_total=100)
    assert download_progress(25, 100, 2.0).eta_seconds == 6.0
    assert download_progress(100, 100, 8.0).eta_seconds == 0.0
    assert download_progress(99_999, 100_000, 1.0).eta_seconds == 0.1  # never 0 before the end
    assert download_progress(5, None, 1.0) == DownloadProgress(bytes_done=5)
    assert DownloadProgress(bytes_done=3 * 2**20, bytes_total=None).line() == "3.0 MiB"


def test_the_reconciler_mirrors_the_preflight_pods_download_progress_before_any_gpu_job() -> None:
    from operator_builders import preflight_pod

    cr = ftj()
    world, api, rec = setup(cr)
    rec.reconcile(key_of(cr))
    preflight, _ = jobs(api, cr)
    running = preflight_pod(preflight, phase="Running")
    running["metadata"]["annotations"]["kubetune.io/progress"] = _downloading(2**20, 4 * 2**20, 3.0)
    world.put_pod(running)
    rec.reconcile(key_of(cr))  # the pod's start (a progress-only event is mirrored at most every interval)
    st = api.status[key_of(cr)]
    assert st["modelCache"]["progress"] == {"bytesDone": 2**20, "bytesTotal": 4 * 2**20, "etaSeconds": 3.0}
    assert "1.0 of 4.0 MiB, ETA 3 s" in st["message"] and jobs(api, cr)[1] is None  # no GPU Job yet
    done = MISS.model_copy(update={"bytes_downloaded": 4 * 2**20,
                                   "progress": download_progress(4 * 2**20, 4 * 2**20, 9.0)})
    pass_preflight(world, api, rec, cr, result=_with_cache(done))
    st = api.status[key_of(cr)]
    assert st["modelCache"]["progress"] == {"bytesDone": 4 * 2**20, "bytesTotal": 4 * 2**20, "etaSeconds": 0.0}
    assert jobs(api, cr)[1] is not None
