"""s3:// from trainer pods on the real node, and the model cache (issues #12 and #18), against a real
S3-compatible server: SeaweedFS (tests/trainer/s3server.py) started inside the cluster's network
namespace, bound to the node's address, where pods reach it (no outside address is involved).

1. without a model cache (the chart's default): a FineTuneJob whose base model, data sets, output and
   promotedUri are all s3://, credentials from the Secret spec.storage.secretRef names, trains in a real
   pod and ends Succeeded; the promoted folder in the bucket matches its manifest; the planted secret
   is in no status, Event, ConfigMap or pod log;
2. with the model cache (chart values modelCache: a ReadWriteMany claim): two jobs on the same s3://
   base started together on a cold cache — the server's own byte counter shows the model's objects
   served once; one status says it downloaded, the other that it used the cache; the trainer pods
   read the model from the cache volume (no download with the GPU requested); the operator's metrics
   count the hit and the miss;
3. a job on a model URI that does not exist ends ModelUnavailable, and no trainer Job is ever created.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CHART, RELEASE, RELEASE_NS, apply_yaml, get_cr, helm, make_volume, wait_phase

from kubetune_devcluster import Cluster, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from s3server import SECRET_KEY, SeaweedS3

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

CACHE_CLAIM = "kubetune-model-cache"
SYMPTOMS = ["chest pain", "fever", "cough", "headache", "rash"]
LABELS = ["EMERGENCY", "URGENT", "ROUTINE"]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _put(fs: Any, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def _objects(fs: Any, prefix: str) -> dict[str, bytes]:
    from pyarrow import fs as pafs

    out = {}
    for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True)):
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as src:
                out[i.path[len(prefix) + 1:]] = src.read()
    return out


@pytest.fixture(scope="module")
def s3(real_cluster: Cluster, operator_release: str, tiny_model_dir: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The S3 server in the cluster's namespace with the tiny model in s3://models/tiny and the data
    in s3://data/; a namespace with the credentials Secret (keys: the standard AWS_* names)."""
    assert real_cluster.netns is not None
    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"), netns=real_cluster.netns)
    try:
        fs = server.client()
        for b in ("models", "data", "runs", "promoted"):
            server.make_bucket(b)
        model = {str(p.relative_to(tiny_model_dir)): p.read_bytes() for p in sorted(tiny_model_dir.rglob("*"))
                 if p.is_file()}
        for rel, data in model.items():
            _put(fs, f"models/tiny/{rel}", data)
        rng = random.Random(0)
        _put(fs, "data/train.jsonl", _jsonl([
            {"instruction": f"patient {i} reports {rng.choice(SYMPTOMS)}. what should i do?",
             "output": f"Urgency: {LABELS[i % 3]}. please see a doctor."} for i in range(40)]))
        _put(fs, "data/golden.jsonl", _jsonl([{"prompt": f"case {i}: fever", "answer": "Urgency"} for i in range(3)]))
        ns = f"rn-s3-{uuid.uuid4().hex[:6]}"
        real_cluster.kubectl("create", "namespace", ns, check=True)
        real_cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted", check=True)
        real_cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials", "namespace": ns},
                            "type": "Opaque", "stringData": server.env()})
        yield {"server": server, "fs": fs, "ns": ns, "model_bytes": sum(len(b) for b in model.values()),
               "tmp": tmp_path_factory.mktemp("cache-volume")}
        real_cluster.kubectl("delete", "namespace", ns, "--wait=false")
    finally:
        server.stop()


def s3_job(name: str, ns: str, *, model: str = "s3://models/tiny", promoted: bool = False,
           steps: int = 4, cpu: str = "1500m") -> dict[str, Any]:
    output: dict[str, Any] = {"uri": f"s3://runs/{name}"}
    if promoted:
        output["promotedUri"] = f"s3://promoted/{name}"
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": ns},
            "spec": {
                "baseModel": {"uri": model},
                "method": "qlora",
                "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "float32"},
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "dataset": {"uri": "s3://data/train.jsonl", "format": "instruction", "minExamples": 20,
                            "pii": "off", "validationSplit": 0.1},
                "training": {"maxSteps": steps, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                             "learningRate": 5e-3, "optimizer": "adamw_torch", "warmupRatio": 0.0,
                             "gradientCheckpointing": False},
                "evaluation": {"goldenDataset": {"uri": "s3://data/golden.jsonl", "scorer": "contains"},
                               "gates": [{"metric": "eval.loss", "op": "<=", "threshold": 100}]},
                "resources": {"gpus": 0, "cpu": cpu, "memory": "3Gi"},
                "output": output,
                "storage": {"secretRef": {"name": "s3-credentials"}},
            }}


def _trainer_logs(cluster: Cluster, ns: str, name: str) -> str:
    pods = cluster.get("pods", "-n", ns, "-l", f"kubetune.io/job={name}")["items"]
    return "".join(cluster.kubectl("-n", ns, "logs", p["metadata"]["name"], "--all-containers").stdout for p in pods)


# --- 1 ---------------------------------------------------------------------------------------------

def test_an_all_s3_job_trains_in_a_real_pod_and_promotes_into_the_bucket(real_cluster: Cluster, s3: dict[str, Any]) -> None:
    ns, fs, name = s3["ns"], s3["fs"], "s3-tiny"
    assert apply_yaml(real_cluster, s3_job(name, ns, promoted=True, steps=6)).returncode == 0
    cr = wait_phase(real_cluster, "FineTuneJob", ns, name, {"Succeeded", "Failed", "GateFailed"}, timeout=600)
    st = cr["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert "modelCache" not in st  # no cache configured: the trainer pod fetched the model itself, as before
    assert st["data"]["baseModel"]["uri"] == "s3://models/tiny"
    # the promoted folder in the bucket: every object matches the manifest, which was written last
    promoted = _objects(fs, f"promoted/{name}")
    manifest = json.loads(promoted.pop("kubetune-manifest.json"))
    assert {f["path"] for f in manifest["files"]} == set(promoted) and "adapter_model.safetensors" in promoted
    for f in manifest["files"]:
        body = promoted[f["path"]]
        assert len(body) == f["size"] and hashlib.sha256(body).hexdigest() == f["sha256"], f["path"]
    digest = "sha256:" + hashlib.sha256(_objects(fs, f"promoted/{name}")["kubetune-manifest.json"]).hexdigest()
    assert st["artifact"] == {"uri": f"s3://runs/{name}/adapter", "promoted": True,
                              "promotedUri": f"s3://promoted/{name}", "manifestDigest": digest}
    pods = real_cluster.get("pods", "-n", ns, "-l", f"kubetune.io/job={name}")["items"]
    trainer = [p for p in pods if p["metadata"]["labels"].get("kubetune.io/component") == "trainer"]
    assert trainer and trainer[0]["spec"]["nodeName"] == "kubetune-node-0"
    assert trainer[0]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]

    # the planted secret is nowhere the cluster shows: status, Events, ConfigMaps, pod logs, operator log
    seen = {
        "status": json.dumps(get_cr(real_cluster, "FineTuneJob", ns, name)),
        "events": real_cluster.kubectl("-n", ns, "get", "events", "-o", "json").stdout,
        "configmaps": real_cluster.kubectl("-n", ns, "get", "configmaps", "-o", "json").stdout,
        "pod logs": _trainer_logs(real_cluster, ns, name),
        "operator": real_cluster.kubectl("-n", RELEASE_NS, "logs", "-l", "app.kubernetes.io/component=operator",
                                         "--tail=-1").stdout,
    }
    assert "s3://models/tiny" in seen["pod logs"] and name in seen["events"]  # what was searched is real
    assert [k for k, v in seen.items() if SECRET_KEY in v] == []


# --- 2, 3: the model cache -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_cache(real_cluster: Cluster, s3: dict[str, Any]) -> Any:
    """The chart upgraded with modelCache.claimName, and that ReadWriteMany claim in the namespace; the
    chart's default (no cache) is restored after."""
    ns = s3["ns"]
    volume = make_volume(real_cluster, ns, CACHE_CLAIM, s3["tmp"] / "model-cache", access="ReadWriteMany")
    upgrade = ["upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--reuse-values", "--wait", "--timeout", "5m"]
    # two jobs' preflight pods side by side on the node's 2 CPUs (the suite's install requests 1 CPU each)
    helm(real_cluster, *upgrade, "--set", f"modelCache.claimName={CACHE_CLAIM}", "--set-string",
         "modelCache.sizeLimit=1Gi", "--set-string", "trainer.preflight.resources.requests.cpu=500m", timeout=400)
    _wait_for_the_webhook(real_cluster, ns)
    try:
        yield volume
    finally:
        helm(real_cluster, *upgrade, "--set", "modelCache.claimName=", "--set-string",
             "trainer.preflight.resources.requests.cpu=1", timeout=400)
        _wait_for_the_webhook(real_cluster, ns)


def _wait_for_the_webhook(cluster: Cluster, ns: str) -> None:
    """The upgrade recreated the operator pod: `helm --wait` saw it ready, but the webhook's Service may
    still lead nowhere for a moment. A server-side dry run goes through the webhook."""
    probe = yaml.safe_dump(s3_job("webhook-probe", ns))

    def answers() -> bool:
        return cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=probe).returncode == 0

    wait_until(answers, timeout=120, what="the admission webhook answering after the upgrade", interval=1)


def _operator_metrics(cluster: Cluster) -> str:
    (svc,) = cluster.get("services", "-n", RELEASE_NS, "-l", "app.kubernetes.io/component=metrics")["items"]
    port = svc["spec"]["ports"][0]["port"]
    proc = cluster.kubectl("get", "--raw",
                           f"/api/v1/namespaces/{RELEASE_NS}/services/{svc['metadata']['name']}:{port}/proxy/metrics")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_two_jobs_on_one_s3_model_started_together_fetch_it_once(real_cluster: Cluster, s3: dict[str, Any],
                                                                 model_cache: Any) -> None:
    ns, server = s3["ns"], s3["server"]
    before = server.sent_bytes("models")
    names = ["cached-a", "cached-b"]
    t0 = time.monotonic()
    # both trainer pods fit the node's 2 CPUs at once
    assert apply_yaml(real_cluster, *(s3_job(n, ns, cpu="700m") for n in names)).returncode == 0
    done = {n: wait_phase(real_cluster, "FineTuneJob", ns, n, {"Succeeded", "Failed", "GateFailed"}, timeout=600)
            for n in names}
    print(f"\ntwo cached jobs: {time.monotonic() - t0:.0f}s", file=sys.stderr)
    for cr in done.values():
        assert cr["status"]["phase"] == "Succeeded", json.dumps(cr["status"], indent=1)
    # the server's own counter: the model's bytes were served once, for both jobs
    assert server.sent_bytes("models") - before == s3["model_bytes"]
    caches = {n: cr["status"]["modelCache"] for n, cr in done.items()}
    assert {c["uri"] for c in caches.values()} == {"s3://models/tiny"} and all(c["used"] for c in caches.values())
    assert len({c["key"] for c in caches.values()}) == 1 and all(c["revision"].startswith("sha256:")
                                                                 for c in caches.values())
    assert sorted((c["hit"], c["bytesDownloaded"]) for c in caches.values()) == [(False, s3["model_bytes"]), (True, 0)]
    # the entry on the cache volume, published whole; the trainer pods read it and downloaded nothing
    key = next(iter(caches.values()))["key"]
    assert (model_cache.host / "models" / key / ".kubetune-complete").is_file()
    for n in names:
        logs = _trainer_logs(real_cluster, ns, n)
        assert "from the model cache, fetched by the data preflight pod; nothing downloaded here" in logs, logs[-3000:]
    # the operator's metrics, from what the preflight pods reported
    text = _operator_metrics(real_cluster)
    assert 'kubetune_model_cache_requests_total{result="hit"} 1.0' in text
    assert 'kubetune_model_cache_requests_total{result="miss"} 1.0' in text
    from prometheus_client.parser import text_string_to_metric_families

    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "kubetune_job_model_downloaded_bytes"]
    per_job = {x.labels["name"]: x.value for x in family.samples if x.labels["namespace"] == ns}
    assert per_job == {n: float(c["bytesDownloaded"]) for n, c in caches.items()}


def test_a_model_that_does_not_exist_ends_model_unavailable_before_any_gpu_job(real_cluster: Cluster,
                                                                               s3: dict[str, Any],
                                                                               model_cache: Any) -> None:
    ns, name = s3["ns"], "no-model"
    assert apply_yaml(real_cluster, s3_job(name, ns, model="s3://models/does-not-exist")).returncode == 0
    cr = wait_phase(real_cluster, "FineTuneJob", ns, name, {"Succeeded", "Failed", "GateFailed"}, timeout=300)
    st = cr["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "ModelUnavailable"), json.dumps(st, indent=1)
    assert "s3://models/does-not-exist" in st["message"]
    jobs = real_cluster.get("jobs", "-n", ns, "-l", f"kubetune.io/job={name}")["items"]
    assert [j["metadata"]["labels"]["kubetune.io/component"] for j in jobs] == ["preflight"]  # no trainer Job, ever
