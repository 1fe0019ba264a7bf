"""The trainer config both executors hand to the trainer: the pod (via a ConfigMap) and
`kubetune run` (via a file). One function, so a local run and a pod train the same way."""

from typing import Literal

from kubetune.api.method_defaults import resolve
from kubetune.api.resources import AnyJob, FineTuneJob
from kubetune.api.spec import FineTuneJobSpec, Resources
from kubetune.api.trainer_contract import (
    JobIdentity,
    PlanSummary,
    ReportChannel,
    SecretEnv,
    Sources,
    TrainerConfig,
)


def pod_device(resources: Resources) -> Literal["cpu", "cuda"]:
    """Where a trainer pod computes: `resources.gpus: 0` is a CPU job; otherwise CUDA, and a pod that
    sees no GPU fails with GPUUnavailable instead of quietly training on CPU."""
    return "cpu" if resources.cpu_only else "cuda"


def build_trainer_config(
    job: AnyJob,
    *,
    sources: Sources,
    referenced: FineTuneJobSpec | None = None,
    plan: PlanSummary | None = None,
    report: ReportChannel | None = None,
    secret_env: SecretEnv | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> TrainerConfig:
    spec = resolve(job.spec, referenced) if not isinstance(job, FineTuneJob) else resolve(job.spec)
    resources = spec.resources
    return TrainerConfig(
        job=JobIdentity(kind=job.kind, name=job.metadata.name or "job",
                        namespace=job.metadata.namespace or "default", uid=job.metadata.uid),
        task="sft" if isinstance(job, FineTuneJob) else "dpo",
        spec=spec,
        sources=sources,
        plan=plan or PlanSummary(),
        report=report or ReportChannel(),
        secret_env=secret_env or SecretEnv(),
        device=device,
        world_size=resources.world_size,
    )
