"""The batch/v1 Jobs of a CR — the data preflight's, then the trainer's — and `render_children`,
which builds every child of a CR.

The preflight Job (`build_preflight_job`) runs `kubetune-trainer --stage preflight` in a small CPU
pod: no GPU request, toleration or affinity, the operator's preflight resources and placement, the
trainer's ServiceAccount and nothing more (its result goes to its termination message; while it
downloads the base model into the model cache it patches its own pod's kubetune.io/progress
annotation, as the trainer does), the same image, config and sources as the trainer, the output
mounted writable for the checked data. The reconciler creates the trainer's
Job only once it succeeded.

Pod shape, in order of concern: placement (GPU count, GPU memory affinity, taint toleration, the
spec's nodeSelector/tolerations/priority), storage (config, /dev/shm, /tmp, HF cache, PVCs), the
trainer channel (downward-API POD_NAME/POD_NAMESPACE, termination message), secrets by reference,
the restricted security context, and the Job's failure handling (backoffLimit, podFailurePolicy,
activeDeadlineSeconds). `gpus > 1` runs torchrun (`kubetune-trainer launch`) with a process per GPU; `nodes > 1` an
Indexed Job with a headless Service for rendezvous; `queueName` hands the Job to Kueue suspended. `gpus: 0` is a CPU
job: no GPU request, GPU toleration or GPU-memory affinity, only the spec's and the operator's placement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.constants import COMPONENT_PREFLIGHT, COMPONENT_TRAINER, LABEL_ATTEMPT, LABEL_COMPONENT
from kubetune.api.exit_codes import PERMANENT_EXIT_CODES
from kubetune.api.method_defaults import resolve
from kubetune.api.model_cache import ModelCacheConfig
from kubetune.api.resources import AnyJob, FineTuneJob
from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.trainer_contract import PlanSummary, ReportChannel, SecretEnv, TrainerConfig
from kubetune.planning.oom_retry import attempt_shapes, with_shape
from kubetune.planning.quantity import parse_quantity
from kubetune.render.configmap import CONFIG_DIR, CONFIG_PATH, build_configmap
from kubetune.render.meta import ANNOTATION_OWNER, child_labels, child_metadata
from kubetune.render.names import configmap_name, job_name, preflight_job_name, service_name
from kubetune.render.service import build_service, master_address
from kubetune.render.settings import RenderSettings
from kubetune.render.sources import ResolvedSources, resolve_sources
from kubetune.render.trainer_config import build_trainer_config, pod_device

CONTAINER = "trainer"
PREFLIGHT_CONTAINER = "preflight"
PREFLIGHT_CPUS_ENV = "KUBETUNE_PREFLIGHT_CPUS"  # kubetune_trainer.preflight reads it
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TERMINATION_LOG = "/dev/termination-log"
HF_HOME = "/var/cache/huggingface"
MODEL_CACHE_ROOT = "/var/cache/kubetune-models"
MODEL_CACHE_VOLUME = "model-cache"
TRAINER_UID = 65532  # "nonroot" in distroless images
MASTER_ADDR_ENV = "KUBETUNE_MASTER_ADDR"  # rank 0's address (pod 0 behind the headless Service)


def gpu_memory_min_mib(gpu_memory: str, tolerance: float) -> int:
    """Smallest `nvidia.com/gpu.memory` label (MiB) a node may report for this job."""
    mib = parse_quantity(gpu_memory) / 2**20
    return max(1, math.floor(mib * (1.0 - tolerance)))


def _placement(spec: FineTuneJobSpec | PreferenceAlignmentSpec, s: RenderSettings) -> dict[str, Any]:
    r = spec.resources
    pod: dict[str, Any] = {}
    tolerations: list[dict[str, Any]] = []
    if not r.cpu_only:  # GPU nodes: enough memory per GPU, and their taint tolerated
        pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": s.gpu_memory_label, "operator": "Gt",
                                   "values": [str(gpu_memory_min_mib(r.gpu_memory, s.gpu_memory_tolerance) - 1)]}]},
        ]}}}
        tolerations.append({"key": s.gpu_taint_key, "operator": "Exists", "effect": "NoSchedule"})
    tolerations += [dict(t) for t in s.tolerations]
    tolerations += [t.to_k8s() for t in r.tolerations or []]
    if tolerations:
        pod["tolerations"] = tolerations
    selector = {**s.node_selector, **(r.node_selector or {})}
    if selector:
        pod["nodeSelector"] = selector
    if r.priority_class_name:
        pod["priorityClassName"] = r.priority_class_name
    return pod


def _resources(spec: FineTuneJobSpec | PreferenceAlignmentSpec, s: RenderSettings) -> dict[str, Any]:
    r = spec.resources
    gpus = {} if r.cpu_only else {s.gpu_resource: str(r.gpus)}
    limits: dict[str, str] = dict(gpus)
    requests: dict[str, str] = dict(gpus)
    if r.cpu:
        limits["cpu"] = requests["cpu"] = r.cpu
    if r.memory:
        limits["memory"] = requests["memory"] = r.memory
    return {"limits": limits, "requests": requests}


def security_context_pod() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID, "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def security_context_container() -> dict[str, Any]:
    """Pod Security Standard "restricted" plus a read-only root filesystem."""
    return {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "allowPrivilegeEscalation": False,
            "privileged": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _command(kind: str, name: str, gpus: int, nodes: int, port: int) -> list[str]:
    """One process, or `kubetune-trainer launch` (torchrun with a process per GPU and typed exit codes,
    kubetune_trainer.launch); `kubetune run` runs the same command (kubetune.local.launch)."""
    return trainer_command(CONFIG_PATH, gpus=gpus, nodes=nodes, port=port)


def trainer_command(config_path: str, *, gpus: int, nodes: int, port: int) -> list[str]:
    """The trainer's command line for `gpus` per node over `nodes` (a multi-node rank finds rank 0 at
    $(MASTER_ADDR_ENV), its node rank in $(JOB_COMPLETION_INDEX): the kubelet expands both)."""
    trainer = ["--config", config_path]
    if gpus <= 1 and nodes == 1:  # one GPU, or a CPU job (always one node)
        return ["kubetune-trainer", *trainer]
    run = ["kubetune-trainer", "launch", f"--nproc-per-node={max(gpus, 1)}"]
    if nodes == 1:
        run.append("--standalone")
    else:
        run += [f"--nnodes={nodes}", "--node-rank=$(JOB_COMPLETION_INDEX)",
                f"--master-addr=$({MASTER_ADDR_ENV})", f"--master-port={port}"]
    return [*run, "--", *trainer]


def _pod_env() -> list[dict[str, Any]]:
    """What both pods (the data preflight's and the trainer's) get: their own pod's name, for the progress
    annotation, and the config's path."""
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KUBETUNE_CONFIG", "value": CONFIG_PATH},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _env(kind: str, name: str, src: ResolvedSources, nodes: int, cpu_only: bool) -> list[dict[str, Any]]:
    env = _pod_env()
    if cpu_only:
        # torch starts a thread per node core; a CPU job computes with as many as its CPU limit (rounded
        # up; the node's allocatable cores when no limit is set) instead of thrashing under the quota
        env.append({"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {
            "containerName": CONTAINER, "resource": "limits.cpu", "divisor": "1"}}})
    if nodes > 1:
        env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})
        env.append({"name": MASTER_ADDR_ENV, "value": master_address(kind, name)})
    return env + src.env


def _failure_policy(container: str) -> dict[str, Any]:
    return {"rules": [
        # Permanent trainer failures (bad data, diverged, no model, bad config): fail now.
        {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": "In",
                                              "values": sorted(int(c) for c in PERMANENT_EXIT_CODES)}},
        # Preemption, eviction, node drain: not the trainer's fault; retry without counting.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def build_job(job: AnyJob, spec: FineTuneJobSpec | PreferenceAlignmentSpec, src: ResolvedSources,
              settings: RenderSettings, attempt: int = 1) -> dict[str, Any]:
    kind, name = job.kind, job.metadata.name or ""
    ns, uid = job.metadata.namespace or "default", job.metadata.uid
    r = spec.resources
    labels = child_labels(kind, name)
    job_labels: dict[str, str] = {LABEL_COMPONENT: COMPONENT_TRAINER}
    if attempt > 1:
        job_labels[LABEL_ATTEMPT] = str(attempt)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    volumes = [
        {"name": "config", "configMap": {"name": configmap_name(kind, name, attempt)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "hf-cache", "emptyDir": {}},
        *src.volumes,
        *_model_cache_volumes(settings),
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "hf-cache", "mountPath": HF_HOME},
        *src.mounts,
        *_model_cache_mounts(settings),
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": _command(kind, name, r.gpus, r.nodes, settings.rendezvous_port),
        "env": _env(kind, name, src, r.nodes, r.cpu_only),
        **_env_from(spec),
        "resources": _resources(spec, settings),
        "volumeMounts": mounts,
        "securityContext": security_context_container(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if r.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": settings.rendezvous_port}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are the Job's (backoffLimit, podFailurePolicy)
        "serviceAccountName": settings.trainer_service_account,
        "automountServiceAccountToken": True,  # the trainer patches its own pod's progress annotation
        "securityContext": security_context_pod(),
        "containers": [container],
        "volumes": volumes,
        **_placement(spec, settings),
    }
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    if r.nodes > 1:
        pod_spec["subdomain"] = service_name(kind, name)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": _failure_policy(CONTAINER),
        "suspend": bool(spec.suspend or spec.queue_name),
        "template": {
            "metadata": {
                "labels": {**labels, **job_labels, **settings.extra_pod_labels},
                "annotations": {ANNOTATION_OWNER: name, **settings.extra_pod_annotations},
            },
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if r.nodes > 1:
        job_spec.update({"completionMode": "Indexed", "completions": r.nodes, "parallelism": r.nodes})
    else:
        job_spec.update({"completions": 1, "parallelism": 1})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(kind, name, ns, uid, job_name(kind, name, attempt), labels=job_labels),
        "spec": job_spec,
    }


def _storage_env_from(spec: FineTuneJobSpec | PreferenceAlignmentSpec) -> dict[str, Any]:
    """The standard AWS_* variables for s3:// locations: every key of the Secret spec.storage names
    (values never rendered)."""
    if spec.storage is None or spec.storage.secret_ref is None:
        return {}
    return {"envFrom": [{"secretRef": {"name": spec.storage.secret_ref.name}}]}


def _model_cache_volumes(settings: RenderSettings) -> list[dict[str, Any]]:
    """The model cache's claim (chart values modelCache.claimName), in the job's namespace; none without one."""
    if not settings.model_cache_claim:
        return []
    return [{"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": settings.model_cache_claim}}]


def _model_cache_mounts(settings: RenderSettings) -> list[dict[str, Any]]:
    # writable in both pods: the preflight downloads, the trainer renews its lease (in-use marker)
    return [{"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_ROOT}] if settings.model_cache_claim else []


def model_cache_config(settings: RenderSettings) -> ModelCacheConfig | None:
    """The cache as the trainer config names it; None without a claim (the trainer fetches the model)."""
    if not settings.model_cache_claim:
        return None
    limit = int(parse_quantity(settings.model_cache_size_limit)) if settings.model_cache_size_limit else None
    return ModelCacheConfig(root=MODEL_CACHE_ROOT, size_limit_bytes=limit,
                            lease_seconds=settings.model_cache_lease_seconds)


def _env_from(spec: FineTuneJobSpec | PreferenceAlignmentSpec) -> dict[str, Any]:
    """The trainer's Secrets by reference: spec.storage's AWS_* variables and spec.tracking.mlflow's
    credentialsSecret (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN); values never rendered."""
    refs = list(_storage_env_from(spec).get("envFrom", []))
    mlf = spec.tracking.mlflow if spec.tracking else None
    if mlf is not None and mlf.credentials_secret is not None:
        refs.append({"secretRef": {"name": mlf.credentials_secret.name}})
    return {"envFrom": refs} if refs else {}


def _preflight_env(src: ResolvedSources, resources: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    env = _pod_env()  # its own pod's name: for the progress annotation (the model download)
    # One worker process per CPU of its limit (else of its request), rounded up: not one per node core
    cpu = "limits.cpu" if "cpu" in (resources.get("limits") or {}) else (
        "requests.cpu" if "cpu" in (resources.get("requests") or {}) else None)
    if cpu:
        env.append({"name": PREFLIGHT_CPUS_ENV, "valueFrom": {"resourceFieldRef": {
            "containerName": PREFLIGHT_CONTAINER, "resource": cpu, "divisor": "1"}}})
    return env + src.env


def build_preflight_job(job: AnyJob, spec: FineTuneJobSpec | PreferenceAlignmentSpec, src: ResolvedSources,
                        settings: RenderSettings) -> dict[str, Any]:
    """The data preflight's Job: see the module docstring."""
    kind, name = job.kind, job.metadata.name or ""
    ns, uid = job.metadata.namespace or "default", job.metadata.uid
    component = {LABEL_COMPONENT: COMPONENT_PREFLIGHT}
    resources = settings.preflight_resources
    container: dict[str, Any] = {
        "name": PREFLIGHT_CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kubetune-trainer", "--config", CONFIG_PATH, "--stage", "preflight"],
        "env": _preflight_env(src, resources),
        **_storage_env_from(spec),  # the preflight reads s3:// data sets too
        "resources": {k: dict(v) for k, v in resources.items()},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "hf-cache", "mountPath": HF_HOME},
            *src.mounts,
            *_model_cache_mounts(settings),
        ],
        "securityContext": security_context_container(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.trainer_service_account,
        # the trainer's rights, no more: patch its own pod's progress annotation (the model download's
        # progress), narrowed by the chart's ValidatingAdmissionPolicy like the trainer's
        "automountServiceAccountToken": True,
        "securityContext": security_context_pod(),
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": configmap_name(kind, name)}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "hf-cache", "emptyDir": {}},
            *src.volumes,
            *_model_cache_volumes(settings),
        ],
    }
    if settings.preflight_node_selector:
        pod_spec["nodeSelector"] = dict(settings.preflight_node_selector)
    if settings.preflight_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.preflight_tolerations]
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": _failure_policy(PREFLIGHT_CONTAINER),
        "suspend": bool(spec.suspend),  # never queued: Kueue admits the GPU Job, not this one
        "completions": 1,
        "parallelism": 1,
        "template": {
            "metadata": {
                "labels": {**child_labels(kind, name), **component, **settings.extra_pod_labels},
                "annotations": {ANNOTATION_OWNER: name, **settings.extra_pod_annotations},
            },
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(kind, name, ns, uid, preflight_job_name(kind, name), labels=component),
        "spec": job_spec,
    }


@dataclass
class Children:
    config: TrainerConfig
    configmap: dict[str, Any]
    preflight: dict[str, Any]
    job: dict[str, Any]
    service: dict[str, Any] | None

    def preflight_objects(self) -> list[dict[str, Any]]:
        """What the data preflight needs, in creation order: the ConfigMap, then its Job."""
        return [self.configmap, self.preflight]

    def all(self) -> list[dict[str, Any]]:
        """Every child once, in the order they are created."""
        return [self.configmap, self.preflight, *([self.service] if self.service else []), self.job]

    def training_objects(self) -> list[dict[str, Any]]:
        """What training needs once the preflight passed, in creation order: the ConfigMap (already
        there: the create finds it) and Service before the Job whose pods need them."""
        return [self.configmap, *([self.service] if self.service else []), self.job]


def render_children(job: AnyJob, settings: RenderSettings, *, referenced: FineTuneJobSpec | None = None,
                    adapter_uri: str | None = None, plan: PlanSummary | None = None, attempt: int = 1) -> Children:
    """Every child of `job`. For a PreferenceAlignment chained on a FineTuneJob, `referenced` is that
    job's spec and `adapter_uri` its artifact. `attempt` > 1 (spec.training.oomRetry): the trainer's
    ConfigMap and Job of that attempt, in its smaller configuration (kubetune.planning.oom_retry);
    `plan` is then that configuration's plan."""
    if attempt > 1:
        job = attempt_job(job, attempt, referenced)
    if isinstance(job, FineTuneJob):
        spec: FineTuneJobSpec | PreferenceAlignmentSpec = resolve(job.spec)
        src = resolve_sources(job)
    else:
        spec = resolve(job.spec, referenced)
        base = referenced.base_model if referenced is not None else None
        src = resolve_sources(job, model_uri=spec.base_model.uri if spec.base_model else None,
                              adapter_uri=adapter_uri,
                              model_revision=spec.base_model.revision if spec.base_model else None,
                              token_secret_ref=(spec.base_model.token_secret_ref if spec.base_model else None)
                              or (base.token_secret_ref if base else None))
    report = ReportChannel(pod_annotations=True, termination_log=TERMINATION_LOG,
                           metrics_port=settings.trainer_metrics_port,
                           interval_seconds=settings.progress_interval_seconds)
    config = build_trainer_config(job, sources=src.sources, referenced=referenced, plan=plan, report=report,
                                  secret_env=src.secret_env if src.secret_env != SecretEnv() else None,
                                  device=pod_device(spec.resources))
    config.model_cache = model_cache_config(settings)
    kind, name = job.kind, job.metadata.name or ""
    ns, uid = job.metadata.namespace or "default", job.metadata.uid
    service = None
    if spec.resources.nodes > 1:
        service = build_service(kind, name, ns, uid, port=settings.rendezvous_port)
    return Children(config=config, configmap=build_configmap(config, uid=uid, attempt=attempt),
                    preflight=build_preflight_job(job, spec, src, settings),
                    job=build_job(job, spec, src, settings, attempt), service=service)


def attempt_job(job: AnyJob, attempt: int, referenced: FineTuneJobSpec | None = None) -> AnyJob:
    """`job` as attempt `attempt` runs it: its spec in that attempt's configuration
    (kubetune.planning.oom_retry.attempt_shapes); ValueError for an attempt the spec does not allow."""
    if isinstance(job, FineTuneJob):
        shapes = attempt_shapes(resolve(job.spec))
        spec: FineTuneJobSpec | PreferenceAlignmentSpec = job.spec
    else:
        shapes = attempt_shapes(resolve(job.spec, referenced))
        spec = job.spec
    if not 1 <= attempt <= len(shapes):
        raise ValueError(f"attempt {attempt}: spec.training.oomRetry allows {len(shapes)} attempt(s)")
    return job.model_copy(update={"spec": with_shape(spec, shapes[attempt - 1])})
