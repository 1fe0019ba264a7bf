"""Rendering: every shape of Job the operator creates, as plain dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from operator_builders import ftj, load_example, typed

from kubetune.api.exit_codes import PERMANENT_EXIT_CODES
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_contract import TrainerConfig
from kubetune.render.job import (
    CONTAINER,
    KUEUE_QUEUE_LABEL,
    PREFLIGHT_CONTAINER,
    gpu_memory_min_mib,
    render_children,
)
from kubetune.render.names import (
    MAX_JOB_NAME,
    base_name,
    configmap_name,
    job_name,
    label_value,
    preflight_job_name,
)
from kubetune.render.settings import RenderSettings
from kubetune.render.sources import to_local

S = RenderSettings(trainer_image="registry.local/kubetune-trainer:test")


def render(obj: dict[str, Any], **kw: Any) -> Any:
    return render_children(typed(obj), S, **kw)


def container(children: Any) -> dict[str, Any]:
    return children.job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def pod_spec(children: Any) -> dict[str, Any]:
    return children.job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def env_names(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in c["env"]}


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_each_method_renders_a_single_gpu_job(method: str) -> None:
    obj = ftj(method=method)
    if method != "qlora":
        obj["spec"].pop("quantization")
    if method == "full":
        obj["spec"].pop("lora")
    ch = render(obj)
    c = container(ch)
    assert c["image"] == S.trainer_image
    assert c["command"] == ["kubetune-trainer", "--config", "/etc/kubetune/config.json"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cfg = json.loads(ch.configmap["data"]["config.json"])
    assert cfg["spec"]["method"] == method
    assert cfg["task"] == "sft"
    assert ("quantization" in cfg["spec"]) == (method == "qlora")
    assert ("lora" in cfg["spec"]) == (method != "full")
    assert ch.service is None
    assert ch.job["spec"]["completions"] == 1 and "completionMode" not in ch.job["spec"]


def test_gpu_placement_affinity_and_toleration() -> None:
    obj = ftj()
    obj["spec"]["resources"].update({"nodeSelector": {"pool": "h100"}, "priorityClassName": "train-high",
                                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                      "effect": "NoSchedule"}]})
    ps = pod_spec(render(obj))
    expr = ps["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]
    assert expr["key"] == "nvidia.com/gpu.memory" and expr["operator"] == "Gt"
    threshold = int(expr["values"][0])
    assert threshold < 81559  # an "80 GB" H100 (GFD reports 81559 MiB) qualifies for 80Gi
    assert threshold >= 24576  # a 24 GB L4 does not
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in ps["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in ps["tolerations"]
    assert ps["nodeSelector"] == {"pool": "h100"}
    assert ps["priorityClassName"] == "train-high"


def test_gpu_memory_threshold_in_mib() -> None:
    assert gpu_memory_min_mib("80Gi", 0.0) == 81920
    assert gpu_memory_min_mib("80Gi", 0.05) == 77824
    assert gpu_memory_min_mib("24Gi", 0.05) == 23347


def test_restricted_pod_security() -> None:
    """The fields Pod Security "restricted" checks, one by one."""
    ch = render(ftj())
    ps, c = pod_spec(ch), container(ch)
    assert ps["securityContext"]["runAsNonRoot"] is True
    assert ps["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert ps["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and sc.get("privileged") is False
    assert sc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert sc["readOnlyRootFilesystem"] is True
    assert not ps.get("hostNetwork") and not ps.get("hostPID") and not ps.get("hostIPC")
    allowed_volume_kinds = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI",
                            "csi", "ephemeral", "name"}
    for v in ps["volumes"]:
        assert set(v) <= allowed_volume_kinds, v
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/dev/shm", "/etc/kubetune", "/var/cache/huggingface"} <= mounts
    shm = next(v for v in ps["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_trainer_channel_env_and_termination_message() -> None:
    c = container(render(ftj()))
    env = env_names(c)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert c["terminationMessagePolicy"] == "File"
    assert c["terminationMessagePath"] == "/dev/termination-log"


def test_failure_policy_backoff_and_deadline() -> None:
    spec = render(ftj()).job["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 172800
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"] == {"containerName": CONTAINER, "operator": "In",
                                       "values": sorted(int(c) for c in PERMANENT_EXIT_CODES)}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it


def test_pvc_sources_are_mounted_and_resolved() -> None:
    ch = render(ftj())
    cfg = json.loads(ch.configmap["data"]["config.json"])
    src = cfg["sources"]
    assert src["dataset"] == "/mnt/pvc/triage-data/train/triage-instructions.jsonl"
    assert src["golden"] == "/mnt/pvc/triage-data/eval/golden.jsonl"
    assert src["output"] == "/mnt/pvc/triage-models/triage-llama3-70b"
    assert src["promoted"] == "/mnt/pvc/triage-models/promoted/triage-llama3-70b"
    assert src["model"] == "hf://meta-llama/Meta-Llama-3-70B-Instruct"
    ps = pod_spec(ch)
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in ps["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"triage-data": True, "triage-models": False}  # data read-only, output writable
    mounts = {m["mountPath"]: m["readOnly"] for m in container(ch)["volumeMounts"] if m["mountPath"].startswith("/mnt/pvc")}
    assert mounts == {"/mnt/pvc/triage-data": True, "/mnt/pvc/triage-models": False}


def test_the_replay_set_is_mounted_read_only_for_both_pods_and_resolved() -> None:
    obj = ftj()
    obj["spec"]["dataset"]["replay"] = {"uri": "pvc://general-data/general/instructions.jsonl", "ratio": 0.2}
    ch = render(obj)
    src = json.loads(ch.configmap["data"]["config.json"])["sources"]
    assert src["replay"] == "/mnt/pvc/general-data/general/instructions.jsonl"
    for spec in (pod_spec(ch), ch.preflight["spec"]["template"]["spec"]):  # the preflight pod checks it, training reads it
        claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
                  for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims["general-data"] is True


def test_hf_and_s3_sources_pass_through() -> None:
    obj = load_example("llama3-8b-lora.yaml")
    ch = render(obj)
    src = json.loads(ch.configmap["data"]["config.json"])["sources"]
    assert src["model"].startswith("hf://")
    assert src["dataset"].startswith("s3://")
    # an s3:// output is staged in the pod's /tmp and uploaded by the trainer (its URI: spec.output.uri)
    assert src["output"] == "/tmp/kubetune/output" and "outputUri" not in src
    assert not [v for v in pod_spec(ch)["volumes"] if "persistentVolumeClaim" in v]


def test_storage_secret_reaches_the_trainer_by_envfrom_only() -> None:
    obj = load_example("llama3-8b-lora.yaml")
    ch = render(obj)
    preflight = preflight_pod(ch)["containers"][0]  # it reads s3:// data sets too
    for c in (container(ch), preflight):
        assert c["envFrom"] == [{"secretRef": {"name": "ml-team-s3"}}]
        assert not [e for e in c["env"] if e["name"].startswith("AWS_")]  # values only from the Secret
    del obj["spec"]["storage"]
    assert "envFrom" not in container(render(obj)) and "envFrom" not in preflight_pod(render(obj))["containers"][0]


def test_secrets_only_by_reference() -> None:
    obj = ftj()
    obj["spec"]["evaluation"]["judge"] = {"endpoint": "https://llm.internal/v1", "model": "judge",
                                          "apiKeySecretRef": {"name": "judge-key", "key": "api-key"}}
    ch = render(obj)
    env = env_names(container(ch))
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert env["KUBETUNE_JUDGE_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "judge-key", "key": "api-key"}}
    assert all("value" not in env[n] for n in ("HF_TOKEN", "KUBETUNE_JUDGE_API_KEY"))
    cfg = json.loads(ch.configmap["data"]["config.json"])
    assert cfg["secretEnv"] == {"hfToken": "HF_TOKEN", "judgeApiKey": "KUBETUNE_JUDGE_API_KEY"}
    assert not any("secretKeyRef" in json.dumps(v) for v in pod_spec(ch)["volumes"])


def test_multi_gpu_runs_torchrun_standalone() -> None:
    obj = ftj()
    obj["spec"]["resources"]["gpus"] = 8
    ch = render(obj)
    c = container(ch)
    # torchrun through the trainer's launcher, which turns a killed rank into a typed exit code
    assert c["command"] == ["kubetune-trainer", "launch", "--nproc-per-node=8", "--standalone", "--",
                            "--config", "/etc/kubetune/config.json"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert json.loads(ch.configmap["data"]["config.json"])["worldSize"] == 8
    assert ch.service is None


def test_multi_node_indexed_job_with_headless_service() -> None:
    obj = ftj()
    obj["spec"]["resources"].update({"gpus": 8, "nodes": 4})
    ch = render(obj)
    spec = ch.job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    ps = pod_spec(ch)
    assert ch.service is not None
    assert ch.service["spec"]["clusterIP"] == "None"
    assert ps["subdomain"] == ch.service["metadata"]["name"]
    assert ch.service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    cmd = container(ch)["command"]
    assert "--nnodes=4" in cmd and "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd
    # rank 0's address: pod 0 behind the headless Service, through an env var the kubelet expands
    assert "--master-addr=$(KUBETUNE_MASTER_ADDR)" in cmd
    env = {e["name"]: e.get("value") for e in container(ch)["env"]}
    assert env["KUBETUNE_MASTER_ADDR"] == f"{job_name('FineTuneJob', 'triage-llama3-70b')}-0.{ch.service['metadata']['name']}"
    assert json.loads(ch.configmap["data"]["config.json"])["worldSize"] == 32
    assert [c["kind"] for c in ch.training_objects()] == ["ConfigMap", "Service", "Job"]
    assert [c["kind"] for c in ch.preflight_objects()] == ["ConfigMap", "Job"]


def test_cpu_job_on_two_nodes_runs_one_gloo_process_per_pod() -> None:
    obj = ftj()
    obj["spec"]["resources"] = {"gpus": 0, "nodes": 2, "memory": "3Gi", "cpu": "1"}
    ch = render(obj)
    assert ch.job["spec"]["completionMode"] == "Indexed" and ch.job["spec"]["completions"] == 2
    assert ch.service is not None and pod_spec(ch)["subdomain"] == ch.service["metadata"]["name"]
    cmd = container(ch)["command"]
    assert cmd[:3] == ["kubetune-trainer", "launch", "--nproc-per-node=1"] and "--nnodes=2" in cmd
    assert "nvidia.com/gpu" not in container(ch)["resources"].get("limits", {})
    cfg = json.loads(ch.configmap["data"]["config.json"])
    assert cfg["worldSize"] == 2 and cfg["device"] == "cpu"  # the trainer picks gloo on cpu


def test_kueue_queue_label_and_suspended() -> None:
    obj = ftj(queueName="gpu-queue")
    j = render(obj).job
    assert j["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert j["spec"]["template"]["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert j["spec"]["suspend"] is True
    assert render(ftj()).job["spec"]["suspend"] is False
    assert render(ftj(suspend=True)).job["spec"]["suspend"] is True


def test_owner_references_on_every_child() -> None:
    obj = ftj()
    obj["spec"]["resources"]["nodes"] = 2
    for child in render(obj).all():
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "triage-llama3-70b",
                       "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["namespace"] == "clinical-ai"


def test_names_are_stable_bounded_and_kind_specific() -> None:
    assert render(ftj()).job["metadata"]["name"] == render(ftj()).job["metadata"]["name"] == "triage-llama3-70b-ft"
    long = "x" * 200
    assert job_name("FineTuneJob", long) == job_name("FineTuneJob", long)
    assert len(job_name("FineTuneJob", long)) <= MAX_JOB_NAME
    assert job_name("FineTuneJob", long) != job_name("FineTuneJob", "x" * 199)
    assert base_name("FineTuneJob", "a") != base_name("PreferenceAlignment", "a")
    assert configmap_name("FineTuneJob", "a") == "a-ft-config"
    assert len(label_value(long)) <= 63


def test_preference_alignment_chained_on_a_finetunejob() -> None:
    pa = load_example("triage-dpo.yaml")
    ref = FineTuneJobSpec.model_validate(ftj()["spec"])
    ch = render(pa, referenced=ref, adapter_uri="pvc://triage-models/triage-llama3-70b/adapter")
    cfg = json.loads(ch.configmap["data"]["config.json"])
    assert cfg["task"] == "dpo"
    assert cfg["sources"]["model"] == "hf://meta-llama/Meta-Llama-3-70B-Instruct"
    assert cfg["sources"]["adapter"] == "/mnt/pvc/triage-models/triage-llama3-70b/adapter"
    assert cfg["spec"]["tuning"] == "qlora" and cfg["spec"]["quantization"]["bits"] == 4
    assert env_names(container(ch))["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert ch.job["metadata"]["name"] == "triage-llama3-70b-dpo-pa"


def test_uri_round_trip() -> None:
    # a pvc:// output is mounted; the trainer reports what it writes there under the URI again
    config = TrainerConfig.model_validate_json(
        render(load_example("llama3-70b-qlora-triage.yaml")).configmap["data"]["config.json"])
    assert config.sources.output == to_local("pvc://triage-models/triage-llama3-70b")
    assert config.uri_of(to_local("pvc://triage-models/triage-llama3-70b")) == "pvc://triage-models/triage-llama3-70b"
    with pytest.raises(ValueError, match="hf://"):
        to_local("ftp://x")


@pytest.mark.parametrize(("example", "output_uri"), [("llama3-70b-qlora-triage.yaml", "pvc://triage-models/triage-llama3-70b"),
                                                     ("llama3-8b-lora.yaml", "s3://ml-team-models/support-llama31-8b")])
def test_the_trainer_reports_its_artifact_under_the_spec_output_uri(example: str, output_uri: str) -> None:
    # the pod's config ⇒ TrainerResult.artifactUri ⇒ status.artifact.uri: the URI the user wrote,
    # not the path inside the pod
    config = TrainerConfig.model_validate_json(render(load_example(example)).configmap["data"]["config.json"])
    assert config.uri_of(Path(config.sources.output) / "adapter") == output_uri + "/adapter"
    assert config.uri_of("/somewhere/else/adapter") is None


def test_settings_from_env() -> None:
    s = RenderSettings.from_env({"KUBETUNE_TRAINER_IMAGE": "img:1", "KUBETUNE_UNSCHEDULABLE_GRACE": "30",
                                 "KUBETUNE_TRAINER_METRICS_PORT": "9400"})
    assert s.trainer_image == "img:1" and s.unschedulable_grace_seconds == 30.0 and s.trainer_metrics_port == 9400


def test_operator_wide_trainer_defaults() -> None:
    s = RenderSettings.from_env({"KUBETUNE_TRAINER_IMAGE_PULL_SECRETS": "regcred, other",
                                 "KUBETUNE_TRAINER_NODE_SELECTOR": '{"pool": "gpu", "zone": "a"}',
                                 "KUBETUNE_TRAINER_TOLERATIONS": '[{"key": "spot", "operator": "Exists"}]'})
    obj = ftj()
    obj["spec"]["resources"]["nodeSelector"] = {"pool": "h100"}
    ps = render_children(typed(obj), s).job["spec"]["template"]["spec"]
    assert ps["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert ps["nodeSelector"] == {"pool": "h100", "zone": "a"}
    assert {"key": "spot", "operator": "Exists"} in ps["tolerations"]
    assert RenderSettings.from_env({"KUBETUNE_TRAINER_NODE_SELECTOR": "null"}).node_selector == {}


CPU_RESOURCES = {"gpus": 0, "memory": "8Gi", "cpu": "2"}


def cpu_job(**resources: Any) -> dict[str, Any]:
    obj = ftj()
    obj["spec"]["resources"] = {**CPU_RESOURCES, **resources}
    return obj


def test_cpu_job_requests_no_gpu() -> None:
    ch = render(cpu_job())
    c, ps = container(ch), pod_spec(ch)
    assert c["resources"] == {"limits": {"cpu": "2", "memory": "8Gi"}, "requests": {"cpu": "2", "memory": "8Gi"}}
    assert "nvidia.com" not in json.dumps(ch.job)  # no GPU request, toleration or GPU-memory affinity
    assert "affinity" not in ps and "tolerations" not in ps
    assert c["command"] == ["kubetune-trainer", "--config", "/etc/kubetune/config.json"]
    assert env_names(c)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": CONTAINER, "resource": "limits.cpu", "divisor": "1"}
    cfg = json.loads(ch.configmap["data"]["config.json"])
    assert (cfg["device"], cfg["worldSize"]) == ("cpu", 1)
    assert ch.service is None and ch.job["spec"]["completions"] == 1


def test_cpu_job_keeps_the_users_and_the_operators_placement() -> None:
    s = RenderSettings.from_env({"KUBETUNE_TRAINER_NODE_SELECTOR": '{"zone": "a"}',
                                 "KUBETUNE_TRAINER_TOLERATIONS": '[{"key": "spot", "operator": "Exists"}]'})
    obj = cpu_job(nodeSelector={"pool": "cpu"}, priorityClassName="batch-low",
                  tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}])
    ps = render_children(typed(obj), s).job["spec"]["template"]["spec"]
    assert ps["nodeSelector"] == {"zone": "a", "pool": "cpu"}
    assert ps["tolerations"] == [{"key": "spot", "operator": "Exists"},
                                 {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert ps["priorityClassName"] == "batch-low"
    assert "affinity" not in ps


@pytest.mark.parametrize("gpus", [1, 4])
def test_gpu_jobs_keep_their_gpu_fields(gpus: int) -> None:
    obj = ftj()
    obj["spec"]["resources"].update({"gpus": gpus, "memory": "64Gi"})
    ch = render(obj)
    c, ps = container(ch), pod_spec(ch)
    assert c["resources"]["limits"] == {"nvidia.com/gpu": str(gpus), "memory": "64Gi"}
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert ps["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert "nvidia.com/gpu.memory" in json.dumps(ps["affinity"])
    assert "OMP_NUM_THREADS" not in env_names(c)
    cfg = json.loads(ch.configmap["data"]["config.json"])
    assert (cfg["device"], cfg["worldSize"]) == ("cuda", gpus)


# --- the data preflight's Job -------------------------------------------------------------------------


def preflight_pod(children: Any) -> dict[str, Any]:
    return children.preflight["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_the_preflight_job_is_a_small_cpu_pod_of_the_same_image() -> None:
    obj = ftj(queueName="gpu-team-a")
    obj["spec"]["resources"].update({"nodeSelector": {"pool": "h100"}, "priorityClassName": "train-high"})
    ch = render(obj)
    pf = ch.preflight
    assert pf["metadata"]["name"] == "triage-llama3-70b-ft-preflight" == preflight_job_name(
        "FineTuneJob", "triage-llama3-70b")
    assert len(preflight_job_name("FineTuneJob", "x" * 200)) <= 63
    assert pf["metadata"]["labels"]["kubetune.io/component"] == "preflight"
    assert ch.job["metadata"]["labels"]["kubetune.io/component"] == "trainer"
    assert pf["spec"]["template"]["metadata"]["labels"]["kubetune.io/component"] == "preflight"
    assert ch.job["spec"]["template"]["metadata"]["labels"]["kubetune.io/component"] == "trainer"
    ps = preflight_pod(ch)
    (c,) = ps["containers"]
    assert c["name"] == PREFLIGHT_CONTAINER and c["image"] == S.trainer_image
    assert c["command"] == ["kubetune-trainer", "--config", "/etc/kubetune/config.json", "--stage", "preflight"]
    # no GPU: no request, no GPU toleration or GPU-memory affinity, not the spec's GPU node pool,
    # not Kueue's queue; the spec's priority class is for the GPUs too
    assert "nvidia.com" not in json.dumps(pf) and "kueue" not in json.dumps(pf)
    assert not {"affinity", "tolerations", "nodeSelector", "priorityClassName"} & set(ps)
    assert pf["spec"]["suspend"] is False
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}}
    assert env_names(c)["KUBETUNE_PREFLIGHT_CPUS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": PREFLIGHT_CONTAINER, "resource": "limits.cpu", "divisor": "1"}
    # the trainer's reporting rights and nothing more: the same ServiceAccount as the trainer pod (RBAC:
    # patch pods, narrowed by the chart's admission policy to its own pod's kubetune.io/progress), its
    # token mounted for that one call, and its own pod's name and namespace from the downward API
    assert ps["serviceAccountName"] == pod_spec(ch)["serviceAccountName"] == S.trainer_service_account
    assert ps["automountServiceAccountToken"] is True
    assert env_names(c)["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_names(c)["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert not [v for v in ps["volumes"] if "projected" in v or "secret" in v]  # no other credential
    assert c["terminationMessagePath"] == "/dev/termination-log" and c["terminationMessagePolicy"] == "File"
    rule = pf["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"]["containerName"] == PREFLIGHT_CONTAINER and 3 in rule["onExitCodes"]["values"]
    assert (pf["spec"]["backoffLimit"], pf["spec"]["activeDeadlineSeconds"]) == (2, 172800)


def test_the_preflight_pod_is_restricted_and_mounts_the_sources() -> None:
    ch = render(load_example("llama3-70b-qlora-triage.yaml"))
    ps, tps = preflight_pod(ch), pod_spec(ch)
    (c,) = ps["containers"]
    assert ps["securityContext"] == tps["securityContext"]
    assert c["securityContext"] == container(ch)["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in ps["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"triage-data": True, "triage-models": False}  # the output is written: the checked data
    assert {m["mountPath"] for m in c["volumeMounts"]} == {
        "/etc/kubetune", "/tmp", "/var/cache/huggingface", "/mnt/pvc/triage-data", "/mnt/pvc/triage-models"}
    assert env_names(c)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"  # an hf:// dataset
    cfg = TrainerConfig.model_validate_json(ch.configmap["data"]["config.json"])
    assert cfg.sources.checked_data == "/mnt/pvc/triage-models/triage-llama3-70b/kubetune/preflight"
    s3 = TrainerConfig.model_validate_json(render(load_example("llama3-8b-lora.yaml")).configmap["data"]["config.json"])
    assert s3.sources.checked_data == "s3://ml-team-models/support-llama31-8b/kubetune/preflight"


def test_preflight_resources_and_placement_come_from_the_operator() -> None:
    s = RenderSettings.from_env({
        "KUBETUNE_PREFLIGHT_RESOURCES": '{"requests": {"cpu": "8", "memory": "16Gi"}, "limits": {}}',
        "KUBETUNE_PREFLIGHT_NODE_SELECTOR": '{"pool": "cpu"}',
        "KUBETUNE_PREFLIGHT_TOLERATIONS": '[{"key": "batch", "operator": "Exists"}]',
        "KUBETUNE_TRAINER_NODE_SELECTOR": '{"pool": "gpu"}', "KUBETUNE_TRAINER_IMAGE_PULL_SECRETS": "regcred"})
    ch = render_children(typed(ftj(suspend=True)), s)
    ps = preflight_pod(ch)
    (c,) = ps["containers"]
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "16Gi"}}
    assert env_names(c)["KUBETUNE_PREFLIGHT_CPUS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert ps["nodeSelector"] == {"pool": "cpu"} and ps["tolerations"] == [{"key": "batch", "operator": "Exists"}]
    assert ps["imagePullSecrets"] == [{"name": "regcred"}]
    assert ch.preflight["spec"]["suspend"] is True  # spec.suspend holds the data check too
    bare = RenderSettings.from_env({"KUBETUNE_PREFLIGHT_RESOURCES": "{}"})
    (c,) = preflight_pod(render_children(typed(ftj()), bare))["containers"]
    assert c["resources"] == {} and "KUBETUNE_PREFLIGHT_CPUS" not in env_names(c)


def test_tracking_credentials_reach_the_trainer_by_reference_only() -> None:
    cr = ftj(tracking={"mlflow": {"trackingUri": "http://mlflow.mlops:5000", "experiment": "triage",
                                  "credentialsSecret": {"name": "mlflow-creds"}}},
             storage={"secretRef": {"name": "s3-creds"}})
    children = render(cr)
    assert container(children)["envFrom"] == [{"secretRef": {"name": "s3-creds"}}, {"secretRef": {"name": "mlflow-creds"}}]
    config = json.loads(children.configmap["data"]["config.json"])
    assert config["spec"]["tracking"]["mlflow"] == {"trackingUri": "http://mlflow.mlops:5000", "experiment": "triage",
                                                    "credentialsSecret": {"name": "mlflow-creds"}}
    preflight = children.preflight["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "mlflow-creds"}} not in preflight.get("envFrom", [])  # it logs nothing


def test_an_oom_retry_attempt_renders_its_own_job_and_config() -> None:
    cr = ftj()
    cr["spec"]["training"].update(batchSize=4, gradientAccumulationSteps=4, oomRetry={"maxRetries": 1})
    second = render(cr, attempt=2)
    assert second.job["metadata"]["name"] == "triage-llama3-70b-ft-a2"
    assert second.configmap["metadata"]["name"] == "triage-llama3-70b-ft-a2-config"
    assert (second.config.spec.training.batch_size, second.config.spec.training.gradient_accumulation_steps) == (2, 8)
    assert render(cr).job["metadata"]["name"] == "triage-llama3-70b-ft"
    with pytest.raises(ValueError, match="allows 2 attempt"):
        render(cr, attempt=3)
    long = job_name("FineTuneJob", "x" * 80, 7)
    assert len(long) <= 52 and long.endswith("-a7")
