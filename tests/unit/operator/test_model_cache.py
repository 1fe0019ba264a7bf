"""The model cache's pure parts: the key, the eviction choice, the rendered volume and config, status
from the preflight's report, and the metrics derived from it."""

from __future__ import annotations

from typing import Any

import pytest
from operator_builders import DATA_OK, ftj, typed
from test_reconciler import jobs, key_of, pass_preflight, setup

from kubetune.api.model_cache import (
    Entry,
    ModelCacheReport,
    cache_key,
    cacheable,
    choose_evictions,
    live_leases,
    normalize_uri,
)
from kubetune.api.trainer_contract import TrainerConfig, TrainerResult
from kubetune.controller import metrics
from kubetune.controller.world import World
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
