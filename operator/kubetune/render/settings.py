"""Operator settings the renderers and the status derivation read. Pure data; the operator shell
fills it from environment variables (`RenderSettings.from_env`), tests build it directly."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"
# The data preflight pod: CPUs are its worker processes (one each), memory ~150 MiB per process plus
# the dedup tables (~40 MiB per million examples; 200-500 MiB more with nearDuplicates).
DEFAULT_PREFLIGHT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "4", "memory": "4Gi"},
    "limits": {"cpu": "4", "memory": "4Gi"},
}


def _json(text: str | None) -> Any:
    return json.loads(text) if text and text.strip() not in ("", "null") else None


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RenderSettings:
    """What the operator decides about the pods it renders (env var in brackets)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE  # KUBETUNE_TRAINER_IMAGE
    image_pull_policy: str = "IfNotPresent"  # KUBETUNE_IMAGE_PULL_POLICY
    trainer_service_account: str = "kubetune-trainer"  # KUBETUNE_TRAINER_SERVICE_ACCOUNT
    # Pods only land on GPUs reporting at least gpuMemory × (1 − tolerance): an "80 GB" H100 reports
    # 81559 MiB, a little under 80 GiB (81920 MiB).
    gpu_memory_tolerance: float = 0.05  # KUBETUNE_GPU_MEMORY_TOLERANCE
    gpu_resource: str = "nvidia.com/gpu"  # KUBETUNE_GPU_RESOURCE
    gpu_memory_label: str = "nvidia.com/gpu.memory"  # KUBETUNE_GPU_MEMORY_LABEL (MiB, GPU feature discovery)
    gpu_taint_key: str = "nvidia.com/gpu"  # KUBETUNE_GPU_TAINT_KEY
    shm_size: str = "16Gi"  # KUBETUNE_SHM_SIZE (/dev/shm, a memory emptyDir)
    rendezvous_port: int = 29500  # KUBETUNE_RENDEZVOUS_PORT (torchrun, multi-node)
    progress_interval_seconds: float = 10.0  # KUBETUNE_PROGRESS_INTERVAL (trainer's annotation patches)
    trainer_metrics_port: int | None = None  # KUBETUNE_TRAINER_METRICS_PORT (None: off)
    # A pod unschedulable for this long ends the job Failed/Unschedulable instead of an endless Pending.
    unschedulable_grace_seconds: float = 120.0  # KUBETUNE_UNSCHEDULABLE_GRACE
    # Image pull failures (ErrImagePull/ImagePullBackOff) for this long end the job ImageUnavailable.
    image_pull_grace_seconds: float = 120.0  # KUBETUNE_IMAGE_PULL_GRACE
    image_pull_secrets: tuple[str, ...] = ()  # KUBETUNE_TRAINER_IMAGE_PULL_SECRETS (comma-separated)
    # Defaults for every trainer pod; a job's spec.resources.nodeSelector wins per key, its
    # tolerations are added.
    node_selector: Mapping[str, str] = field(default_factory=dict)  # KUBETUNE_TRAINER_NODE_SELECTOR (JSON)
    tolerations: tuple[Mapping[str, Any], ...] = ()  # KUBETUNE_TRAINER_TOLERATIONS (JSON list)
    extra_pod_labels: Mapping[str, str] = field(default_factory=dict)
    extra_pod_annotations: Mapping[str, str] = field(default_factory=dict)
    # The data preflight pod (CPU only, before the GPU Job): its resources (its worker processes follow
    # its CPU limit, else its CPU request) and placement — not the trainer's GPU placement, nor the
    # spec's nodeSelector/tolerations (they pick GPU nodes); the operator's defaults above do not apply.
    preflight_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: dict(DEFAULT_PREFLIGHT_RESOURCES))  # KUBETUNE_PREFLIGHT_RESOURCES (JSON)
    preflight_node_selector: Mapping[str, str] = field(default_factory=dict)  # KUBETUNE_PREFLIGHT_NODE_SELECTOR (JSON)
    preflight_tolerations: tuple[Mapping[str, Any], ...] = ()  # KUBETUNE_PREFLIGHT_TOLERATIONS (JSON list)

    # The model cache (chart values modelCache): a ReadWriteMany PVC of this name in the job's namespace,
    # mounted in the preflight and trainer pods; None: no cache (the trainer fetches the model itself).
    model_cache_claim: str | None = None  # KUBETUNE_MODEL_CACHE_CLAIM
    model_cache_size_limit: str | None = None  # KUBETUNE_MODEL_CACHE_SIZE_LIMIT (a quantity, e.g. 500Gi)
    model_cache_lease_seconds: float = 600.0  # KUBETUNE_MODEL_CACHE_LEASE_SECONDS

    ENV: ClassVar[dict[str, str]] = {
        "model_cache_claim": "KUBETUNE_MODEL_CACHE_CLAIM",
        "model_cache_size_limit": "KUBETUNE_MODEL_CACHE_SIZE_LIMIT",
        "model_cache_lease_seconds": "KUBETUNE_MODEL_CACHE_LEASE_SECONDS",
        "trainer_image": "KUBETUNE_TRAINER_IMAGE",
        "image_pull_policy": "KUBETUNE_IMAGE_PULL_POLICY",
        "trainer_service_account": "KUBETUNE_TRAINER_SERVICE_ACCOUNT",
        "gpu_memory_tolerance": "KUBETUNE_GPU_MEMORY_TOLERANCE",
        "gpu_resource": "KUBETUNE_GPU_RESOURCE",
        "gpu_memory_label": "KUBETUNE_GPU_MEMORY_LABEL",
        "gpu_taint_key": "KUBETUNE_GPU_TAINT_KEY",
        "shm_size": "KUBETUNE_SHM_SIZE",
        "rendezvous_port": "KUBETUNE_RENDEZVOUS_PORT",
        "progress_interval_seconds": "KUBETUNE_PROGRESS_INTERVAL",
        "trainer_metrics_port": "KUBETUNE_TRAINER_METRICS_PORT",
        "unschedulable_grace_seconds": "KUBETUNE_UNSCHEDULABLE_GRACE",
        "image_pull_grace_seconds": "KUBETUNE_IMAGE_PULL_GRACE",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RenderSettings:
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = str(types[name])
            if "float" in kind:
                kwargs[name] = float(raw)
            elif "int" in kind:
                kwargs[name] = int(raw)
            elif "bool" in kind:
                kwargs[name] = _bool(raw)
            else:
                kwargs[name] = raw
        secrets = env.get("KUBETUNE_TRAINER_IMAGE_PULL_SECRETS", "")
        kwargs["image_pull_secrets"] = tuple(x.strip() for x in secrets.split(",") if x.strip())
        kwargs["node_selector"] = dict(_json(env.get("KUBETUNE_TRAINER_NODE_SELECTOR")) or {})
        kwargs["tolerations"] = tuple(_json(env.get("KUBETUNE_TRAINER_TOLERATIONS")) or ())
        resources = _json(env.get("KUBETUNE_PREFLIGHT_RESOURCES"))
        if resources is not None:
            kwargs["preflight_resources"] = {k: dict(v) for k, v in dict(resources).items() if v}
        kwargs["preflight_node_selector"] = dict(_json(env.get("KUBETUNE_PREFLIGHT_NODE_SELECTOR")) or {})
        kwargs["preflight_tolerations"] = tuple(_json(env.get("KUBETUNE_PREFLIGHT_TOLERATIONS")) or ())
        return cls(**kwargs)
