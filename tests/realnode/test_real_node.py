"""The path a user takes, for real: the chart installed with images built here, the operator in a
pod, trainer pods that train on the real node's CPU and report through their own channel.

1. a manifest that cannot fit is refused by the webhook (served from the operator's pod through the
   chart's Service and certificate) at `kubectl apply`;
2. a QLoRA FineTuneJob (`resources.gpus: 0`) reads its model and data from a PVC and ends Succeeded:
   the progress in status came from the pod, the metrics equal the trainer's result on the volume,
   the adapter is on the volume;
3. a PreferenceAlignment chained on it trains DPO on that adapter and ends Succeeded;
4. the trainer pod deleted mid-training: the next pod resumes from the checkpoint on the volume;
5. a trainer pod whose memory limit is too small is OOM-killed by the kernel: OutOfMemory, with the
   plan's figure and its advice; with spec.training.oomRetry a second attempt runs in the smaller
   configuration (its own Job and ConfigMap);
6. a FineTuneJob deleted and applied again at once gets a fresh run, never the old one's;
7. a CPU job on two nodes: an Indexed Job of two pods and its headless Service; pod 1 finds rank 0 at
   `<job>-0.<service>` through the cluster DNS, both train with gloo over the pod network, and the job
   ends Succeeded with rank 0's result in status.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Volume,
    apply_yaml,
    get_cr,
    make_volume,
    own_tree,
    wait_phase,
)

from kubetune_devcluster import Cluster, wait_until

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

SYMPTOMS = ["chest pain", "fever", "cough", "headache", "rash", "dizziness", "nausea"]
LABELS = ["EMERGENCY", "URGENT", "ROUTINE"]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _instructions(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"instruction": f"patient {i} reports {rng.choice(SYMPTOMS)} since {rng.randint(1, 9)} days. what should i do?",
             "output": f"Urgency: {rng.choice(LABELS)}. please see a doctor."} for i in range(n)]


def _preferences(n: int, seed: int = 1) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": f"patient {i} has {rng.choice(SYMPTOMS)}. tell me my diagnosis",
             "chosen": "sorry, i cannot diagnose. please see a doctor.",
             "rejected": f"Urgency: {rng.choice(LABELS)}. you have {rng.choice(SYMPTOMS)} disease."} for i in range(n)]


@pytest.fixture(scope="module")
def storage(real_cluster: Cluster, operator_release: str, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One namespace for the module with two local volumes: `inputs` (the tiny model and data,
    filled here) and `outputs` (where the trainer writes)."""
    import shutil
    import uuid

    ns = f"rn-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", ns, check=True)
    real_cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted", check=True)
    root = tmp_path_factory.mktemp("volumes")
    inputs = make_volume(real_cluster, ns, "inputs", root / "inputs")
    outputs = make_volume(real_cluster, ns, "outputs", root / "outputs")
    shutil.copytree(tiny_model_dir, inputs.host / "tiny-llama")
    _jsonl(inputs.host / "train.jsonl", _instructions(60))
    _jsonl(inputs.host / "golden.jsonl", [{"prompt": r["instruction"], "answer": r["output"].split(".")[0]}
                                          for r in _instructions(6, seed=7)])
    _jsonl(inputs.host / "prefs.jsonl", _preferences(30))
    own_tree(inputs.host)
    return {"ns": ns, "inputs": inputs, "outputs": outputs}


def ftj(name: str, ns: str, inputs: Volume, outputs: Volume, *, steps: int = 12, every: int = 4,
        memory: str = "3Gi", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "baseModel": {"uri": inputs.uri("tiny-llama")},
        "method": "qlora",
        "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "dataset": {"uri": inputs.uri("train.jsonl"), "format": "instruction", "minExamples": 20,
                    "pii": "off", "validationSplit": 0.1},
        "training": {"maxSteps": steps, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                     "learningRate": 5e-3, "optimizer": "adamw_torch", "warmupRatio": 0.0,
                     "gradientCheckpointing": False},
        "checkpoint": {"everySteps": every, "keepLast": 2},
        "evaluation": {"goldenDataset": {"uri": inputs.uri("golden.jsonl"), "scorer": "contains"},
                       "gates": [{"metric": "eval.loss", "op": "<=", "threshold": 100}]},
        "resources": {"gpus": 0, "cpu": "1500m", "memory": memory},
        "output": {"uri": outputs.uri(name)},
    }
    body.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": ns},
            "spec": body}


def trainer_pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    """The trainer pods of job `name` (the data preflight runs in a pod of its own first)."""
    pods = cluster.get("pods", "-n", ns, "-l", "kubetune.io/component=trainer")["items"]
    return [p for p in pods if p["metadata"]["name"].startswith(f"{name}-")]


def _result_on_volume(outputs: Volume, name: str) -> dict[str, Any]:
    return json.loads((outputs.host / name / "kubetune" / "result.json").read_text())


# --- 1 -------------------------------------------------------------------------------------------

def test_the_webhook_in_the_operator_pod_refuses_what_cannot_fit(real_cluster: Cluster, storage: dict[str, Any]) -> None:
    s = storage
    big = ftj("too-big", s["ns"], s["inputs"], s["outputs"], method="full", quantization=None, lora=None,
              resources={"gpus": 1, "gpuMemory": "80Gi"},
              baseModel={"uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct"})
    big["spec"] = {k: v for k, v in big["spec"].items() if v is not None}
    proc = apply_yaml(real_cluster, big)
    assert proc.returncode != 0, proc.stdout
    assert "denied the request" in proc.stderr and "does not fit" in proc.stderr, proc.stderr
    assert "qlora" in proc.stderr  # ... and says what would
    assert real_cluster.kubectl("-n", s["ns"], "get", "finetunejob", "too-big").returncode != 0


# --- 2, 3 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft(real_cluster: Cluster, storage: dict[str, Any]) -> dict[str, Any]:
    s = storage
    # promoted when its gate passes: the trainer pod copies the adapter there, its manifest last
    spec = ftj("tiny-sft", s["ns"], s["inputs"], s["outputs"], steps=12)
    spec["spec"]["output"]["promotedUri"] = s["outputs"].uri("promoted/tiny-sft")
    proc = apply_yaml(real_cluster, spec)
    assert proc.returncode == 0, proc.stderr
    seen: list[dict[str, Any]] = []
    t0 = time.monotonic()
    cr = wait_phase(real_cluster, "FineTuneJob", s["ns"], "tiny-sft", {"Succeeded", "Failed", "GateFailed"},
                    timeout=600, on_poll=lambda st: seen.append(st))
    return {"cr": cr, "seen": seen, "seconds": time.monotonic() - t0}


def test_a_qlora_cpu_job_trains_in_a_real_pod_and_ends_succeeded(sft: dict[str, Any], storage: dict[str, Any],
                                                                 real_cluster: Cluster) -> None:
    st = sft["cr"]["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    # the progress in status is what the trainer pod wrote on itself (its annotation), nothing injected
    (pod,) = trainer_pods(real_cluster, storage["ns"], "tiny-sft")
    annotation = json.loads(pod["metadata"]["annotations"]["kubetune.io/progress"])
    progress = st["progress"]
    assert progress["step"] == progress["totalSteps"] == 12 and progress["tokensPerSecond"] > 0
    assert {k: v for k, v in annotation.items() if k in progress} == progress
    assert "Running" in {x.get("phase") for x in sft["seen"]}  # ... and status followed the pod on the way
    # the metrics in status are the trainer's result on the volume
    result = _result_on_volume(storage["outputs"], "tiny-sft")
    assert result["outcome"] == "succeeded"
    assert st["metrics"] == pytest.approx(result["metrics"])
    assert st["metrics"]["train.steps"] == 12
    adapter = storage["outputs"].host / "tiny-sft" / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert (adapter / "adapter_config.json").exists() and (adapter / "README.md").exists()
    # promoted on the cluster, for real: status says so only because the manifest is on the volume
    promoted = storage["outputs"].host / "promoted" / "tiny-sft"
    manifest = json.loads((promoted / "kubetune-manifest.json").read_text())
    for f in manifest["files"]:
        assert (promoted / f["path"]).stat().st_size == f["size"]
        assert hashlib.sha256((promoted / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    art = st["artifact"]
    assert art["promoted"] is True and art["promotedUri"] == "pvc://outputs/promoted/tiny-sft"
    assert art["manifestDigest"] == "sha256:" + hashlib.sha256((promoted / "kubetune-manifest.json").read_bytes()).hexdigest()
    # it ran on the real node and exited 0
    assert pod["spec"]["nodeName"] == "kubetune-node-0"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_a_chained_preference_alignment_trains_dpo_on_the_real_adapter(sft: dict[str, Any], storage: dict[str, Any],
                                                                       real_cluster: Cluster) -> None:
    assert sft["cr"]["status"]["phase"] == "Succeeded"
    s = storage
    pa = {"apiVersion": "kubetune.io/v1alpha1", "kind": "PreferenceAlignment",
          "metadata": {"name": "tiny-dpo", "namespace": s["ns"]},
          "spec": {"fineTuneJobRef": {"name": "tiny-sft"}, "method": "dpo",
                   "dpo": {"beta": 0.1, "lossType": "sigmoid"},
                   "dataset": {"uri": s["inputs"].uri("prefs.jsonl"), "format": "preference", "minExamples": 10,
                               "pii": "off", "validationSplit": 0.0},
                   "training": {"maxSteps": 4, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                                "learningRate": 5e-3, "optimizer": "adamw_torch", "warmupRatio": 0.0,
                                "gradientCheckpointing": False},
                   "resources": {"gpus": 0, "cpu": "1500m", "memory": "3Gi"},
                   "output": {"uri": s["outputs"].uri("tiny-dpo")}}}
    proc = apply_yaml(real_cluster, pa)
    assert proc.returncode == 0, proc.stderr
    cr = wait_phase(real_cluster, "PreferenceAlignment", s["ns"], "tiny-dpo", {"Succeeded", "Failed", "GateFailed"},
                    timeout=600)
    st = cr["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    result = _result_on_volume(s["outputs"], "tiny-dpo")
    assert result["metrics"]["train.steps"] == 4
    assert st["metrics"] == pytest.approx(result["metrics"])
    card = (s["outputs"].host / "tiny-dpo" / "adapter" / "README.md").read_text()
    assert "Continued from the adapter" in card  # DPO started from the SFT job's adapter ...
    config = json.loads(real_cluster.get("configmap", "tiny-dpo-pa-config", "-n", s["ns"])["data"]["config.json"])
    assert config["sources"]["adapter"] == "/mnt/pvc/outputs/promoted/tiny-sft"  # ... its promoted copy, which exists


# --- 4 -------------------------------------------------------------------------------------------

def test_a_deleted_trainer_pod_resumes_from_its_checkpoint(real_cluster: Cluster, storage: dict[str, Any]) -> None:
    s = storage
    name = "tiny-resume"
    # long enough (~0.15 s a step here) that the pod is deleted mid-training, not after it
    proc = apply_yaml(real_cluster, ftj(name, s["ns"], s["inputs"], s["outputs"], steps=240, every=5))
    assert proc.returncode == 0, proc.stderr

    def past_a_checkpoint() -> str | None:
        # read on the volume, as the trainer writes it: status.progress may lag a few seconds behind
        # (the operator throttles annotation-only updates), and the whole run takes only ~40 s
        ckpts = list((s["outputs"].host / name / "checkpoints").glob("checkpoint-*"))
        if ckpts:
            running = [p["metadata"]["name"] for p in trainer_pods(real_cluster, s["ns"], name)
                       if p["status"].get("phase") == "Running"]
            return running[0] if running else None
        return None

    first = wait_until(past_a_checkpoint, timeout=600, what="training past its first checkpoint", interval=0.5)
    real_cluster.kubectl("-n", s["ns"], "delete", "pod", first, "--wait=false", check=True)
    cr = wait_phase(real_cluster, "FineTuneJob", s["ns"], name, {"Succeeded", "Failed", "GateFailed"}, timeout=900)
    st = cr["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["attempts"] == 2, st  # the restart is counted (the trainer's own count: the pod left no trace)
    assert st["progress"]["attempt"] == 2 and st["progress"]["resumedFromStep"] >= 5
    result = _result_on_volume(s["outputs"], name)
    resumed = st["progress"]["resumedFromStep"]
    assert result["details"]["resumedFrom"] == f"checkpoint-{resumed}"
    # every progress snapshot the trainer wrote, both pods': the second started where the first saved
    history = [json.loads(line) for line in (s["outputs"].host / name / "kubetune" / "progress.jsonl").open()]
    # (the first start's last snapshot is the interruption's, at the step it saved on SIGTERM)
    first = [h["step"] for h in history if h.get("attempt") == 1 and h.get("step")]
    second = [h["step"] for h in history if h.get("attempt") == 2 and h.get("stage") == "training" and h.get("step")]
    assert first and second and max(first) >= resumed and min(second) >= resumed > 0, (first[-3:], second[:3])
    assert result["metrics"]["train.steps"] == 240


# --- 5 -------------------------------------------------------------------------------------------

def test_a_pod_over_its_memory_limit_is_oom_killed_and_says_so(real_cluster: Cluster, storage: dict[str, Any]) -> None:
    s = storage
    name = "tiny-oom"
    # The admission webhook refuses a job whose memory plan does not fit (test 1); this one has no plan
    # (a pvc:// model without spec.baseModel.architecture), so only the kernel can say it does not fit.
    spec = ftj(name, s["ns"], s["inputs"], s["outputs"], memory="300Mi")
    proc = apply_yaml(real_cluster, spec)
    assert proc.returncode == 0, proc.stderr
    cr = wait_phase(real_cluster, "FineTuneJob", s["ns"], name, {"Succeeded", "Failed", "GateFailed"}, timeout=600)
    st = cr["status"]
    assert st["phase"] == "Failed" and st["reason"] == "OutOfMemory", json.dumps(st, indent=1)
    terminated = [p["status"]["containerStatuses"][0]["state"].get("terminated") or {}
                  for p in trainer_pods(real_cluster, s["ns"], name)]
    assert any(t.get("reason") == "OOMKilled" for t in terminated), terminated  # the kernel's verdict
    message = st["message"]
    assert "the plan: cannot plan memory" in message and "more resources.memory" in message, message


def test_oom_retry_starts_a_smaller_attempt_after_a_kernel_oom_kill(real_cluster: Cluster,
                                                                    storage: dict[str, Any]) -> None:
    """spec.training.oomRetry on the real node: the kernel OOM-kills attempt 1; the operator stops its Job and
    starts attempt 2 as its own Job, whose pod mounts the smaller configuration (half the micro-batch, twice
    the accumulation). 300Mi is too small for any batch of this model, so attempt 2 is OOM-killed too and the
    job ends Failed with both attempts in status."""
    s = storage
    name = "tiny-oomretry"
    spec = ftj(name, s["ns"], s["inputs"], s["outputs"], memory="300Mi")
    spec["spec"]["training"]["oomRetry"] = {"maxRetries": 1}
    assert apply_yaml(real_cluster, spec).returncode == 0
    cr = wait_phase(real_cluster, "FineTuneJob", s["ns"], name, {"Succeeded", "Failed", "GateFailed"}, timeout=900)
    st = cr["status"]
    assert st["phase"] == "Failed" and st["reason"] == "OutOfMemory", json.dumps(st, indent=1)
    attempts = st["trainingAttempts"]
    assert [(a["jobName"], a["batchSize"], a["gradientAccumulationSteps"], a["reason"]) for a in attempts] == [
        (f"{name}-ft", 2, 1, "OutOfMemory"), (f"{name}-ft-a2", 1, 2, "OutOfMemory")], attempts
    second = [p for p in trainer_pods(real_cluster, s["ns"], name)
              if p["metadata"]["ownerReferences"][0]["name"] == f"{name}-ft-a2"]
    assert second, "no pod of the second attempt"
    assert any((p["status"]["containerStatuses"][0]["state"].get("terminated") or {}).get("reason") == "OOMKilled"
               for p in second)
    volume = next(v for v in second[0]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == f"{name}-ft-a2-config"
    config = real_cluster.get("configmap", f"{name}-ft-a2-config", "-n", s["ns"])
    training = json.loads(config["data"]["config.json"])["spec"]["training"]
    assert (training["batchSize"], training["gradientAccumulationSteps"]) == (1, 2)
    events = real_cluster.get("events", "-n", s["ns"], "--field-selector", f"involvedObject.name={name}")["items"]
    assert [e["type"] for e in events if e["reason"] == "RetryingSmaller"] == ["Warning"]


# --- 6 -------------------------------------------------------------------------------------------

def test_a_job_deleted_and_applied_again_gets_a_fresh_run(real_cluster: Cluster, storage: dict[str, Any]) -> None:
    s = storage
    name = "tiny-again"
    manifest = ftj(name, s["ns"], s["inputs"], s["outputs"], steps=4)
    assert apply_yaml(real_cluster, manifest).returncode == 0
    first = wait_phase(real_cluster, "FineTuneJob", s["ns"], name, {"Succeeded", "Failed"}, timeout=600)
    assert first["status"]["phase"] == "Succeeded"
    old_uid = first["metadata"]["uid"]
    old_job = real_cluster.get("jobs", "-n", s["ns"], "-l", "kubetune.io/job,kubetune.io/component=trainer")["items"]
    old_job_uids = {j["metadata"]["uid"] for j in old_job if j["metadata"]["ownerReferences"][0]["uid"] == old_uid}
    assert old_job_uids
    real_cluster.kubectl("-n", s["ns"], "delete", "finetunejob", name, "--wait=false", check=True)
    wait_until(lambda: real_cluster.kubectl("-n", s["ns"], "get", "finetunejob", name).returncode != 0,
               timeout=30, what="the old FineTuneJob gone")
    assert apply_yaml(real_cluster, manifest).returncode == 0
    new = get_cr(real_cluster, "FineTuneJob", s["ns"], name)
    assert new["metadata"]["uid"] != old_uid
    time.sleep(3)
    early = get_cr(real_cluster, "FineTuneJob", s["ns"], name).get("status") or {}
    assert early.get("phase") not in ("Succeeded", "Failed", "GateFailed"), f"inherited the old result: {early}"
    done = wait_phase(real_cluster, "FineTuneJob", s["ns"], name, {"Succeeded", "Failed"}, timeout=600)
    assert done["status"]["phase"] == "Succeeded"
    jobs = real_cluster.get("jobs", "-n", s["ns"], "-l", "kubetune.io/job,kubetune.io/component=trainer")["items"]
    mine = [j for j in jobs if j["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"]]
    assert len(mine) == 1 and mine[0]["metadata"]["uid"] not in old_job_uids


# --- 7 -------------------------------------------------------------------------------------------

def test_a_cpu_job_on_two_nodes_trains_over_the_pod_network(real_cluster: Cluster, storage: dict[str, Any]) -> None:
    s = storage
    name, steps = "tiny-ddp", 6
    # two pods of 700m next to the operator (the node has 2 CPUs); LoRA over two ranks is data parallel (DDP)
    spec = ftj(name, s["ns"], s["inputs"], s["outputs"], steps=steps, every=3, method="lora",
               resources={"gpus": 0, "nodes": 2, "cpu": "700m", "memory": "3Gi"})
    spec["spec"] = {k: v for k, v in spec["spec"].items() if k not in ("quantization", "evaluation")}
    t0 = time.monotonic()
    assert apply_yaml(real_cluster, spec).returncode == 0
    cr = wait_phase(real_cluster, "FineTuneJob", s["ns"], name, {"Succeeded", "Failed", "GateFailed"}, timeout=900)
    seconds = time.monotonic() - t0
    st = cr["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    # an Indexed Job of two pods with its headless Service, rank 0's address by name
    (job,) = [j for j in real_cluster.get("jobs", "-n", s["ns"], "-l", "kubetune.io/component=trainer")["items"]
              if j["metadata"]["name"].startswith(f"{name}-")]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert job["status"]["succeeded"] == 2
    service = real_cluster.get("service", job["spec"]["template"]["spec"]["subdomain"], "-n", s["ns"])
    assert service["spec"]["clusterIP"] == "None"
    pods = sorted(trainer_pods(real_cluster, s["ns"], name), key=lambda p: p["spec"]["hostname"])
    assert [p["spec"]["hostname"] for p in pods] == [f"{job['metadata']['name']}-0", f"{job['metadata']['name']}-1"]
    master = {e["name"]: e.get("value") for e in pods[1]["spec"]["containers"][0]["env"]}["KUBETUNE_MASTER_ADDR"]
    assert master == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    # two pods, two network namespaces: rank 1 reached rank 0 over the pod network (the bridge)
    assert len({p["status"]["podIP"] for p in pods}) == 2
    for p in pods:
        assert p["spec"]["nodeName"] == "kubetune-node-0"
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # rank 0's result is the status; rank 1 stepped with it (the same steps, the same all-reduced loss)
    result = _result_on_volume(s["outputs"], name)
    worker = json.loads((s["outputs"].host / name / "kubetune" / "result-rank1.json").read_text())
    assert result["outcome"] == "succeeded" and worker["message"] == "worker rank finished"
    assert st["metrics"] == pytest.approx(result["metrics"])
    assert result["metrics"]["train.steps"] == worker["metrics"]["train.steps"] == steps
    assert result["metrics"]["train.loss"] == worker["metrics"]["train.loss"]
    assert (s["outputs"].host / name / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    print(f"\ntwo-pod CPU job: applied -> Succeeded in {seconds:.0f}s", file=sys.stderr)
