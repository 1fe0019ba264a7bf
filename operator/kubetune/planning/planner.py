"""`plan(request)`: resolve the architecture, estimate the peak, suggest what would fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kubetune.planning.catalog import catalog_names, lookup
from kubetune.planning.hfconfig import read_config_dir
from kubetune.planning.memory import estimate
from kubetune.planning.suggest import suggest
from kubetune.planning.types import ARCHITECTURE_FIELD, Architecture, CannotPlan, Plan, PlanRequest

__all__ = ["plan", "resolve_architecture"]

_CPU_NOTES = (
    "a CPU job (resources.gpus 0): the peak is checked against resources.memory, the pod's memory limit; "
    "the trainer computes in float32 and uses adamw_torch for bitsandbytes' CUDA-only optimizers",
    "the trainer process itself (Python, torch and the training libraries, ~1.25 GiB) is counted in place of "
    "a CUDA context; the page cache of the model files is not",
)


def _local_path(uri: str, pvc_mounts: Mapping[str, str]) -> Path | None:
    """The readable folder behind a `file://` URI, or a `pvc://claim/path` whose claim is mounted here."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("pvc://"):
        claim, _, rest = uri[len("pvc://") :].partition("/")
        root = pvc_mounts.get(claim)
        return Path(root) / rest if root is not None else None
    if uri.startswith("/"):
        return Path(uri)
    return None


def resolve_architecture(
    model: str, hint: str | None = None, *, pvc_mounts: Mapping[str, str] | None = None
) -> Architecture:
    """The architecture of `model`: the hint (`spec.baseModel.architecture`) if given, else the catalog
    entry for the HF id, else the `config.json` of a readable local folder. Raises `CannotPlan`.

    `pvc_mounts` maps a PersistentVolumeClaim name to where it is mounted (in the pod).
    """
    if hint:
        found = lookup(hint)
        if found is not None:
            return found
        raise CannotPlan(
            f"{ARCHITECTURE_FIELD} {hint!r} is not in the planner's catalog; use one of: "
            + ", ".join(catalog_names())
        )
    found = lookup(model)
    if found is not None:
        return found
    path = _local_path(model, pvc_mounts or {})
    if path is not None and (path.is_dir() or path.suffix == ".json"):
        return read_config_dir(path)
    where = (
        "its config.json is not readable here"
        if path is not None or model.startswith("pvc://")
        else ("it is not in the planner's catalog")
    )
    raise CannotPlan(
        f"cannot plan memory for model {model!r}: {where}; set {ARCHITECTURE_FIELD} to the catalog name of "
        f"its architecture (e.g. llama-3.1-8b, qwen2.5-7b, mistral-7b, smollm2-135m)"
    )


def plan(
    request: PlanRequest,
    *,
    architecture: Architecture | None = None,
    pvc_mounts: Mapping[str, str] | None = None,
) -> Plan:
    """Per-GPU memory plan for one job (per pod for a CPU job, against its memory limit). Raises
    `CannotPlan` when the architecture is unknown."""
    arch = architecture or resolve_architecture(request.model, request.architecture, pvc_mounts=pvc_mounts)
    est = estimate(request, arch)
    fits = est.peak_bytes <= request.limit_bytes
    return Plan(
        fits=fits,
        peak_bytes=est.peak_bytes,
        limit_bytes=request.limit_bytes,
        breakdown=est.breakdown,
        architecture=arch.name,
        params_total=est.params_total,
        params_trainable=est.params_trainable,
        kind=request.kind,
        method=request.method,
        world_size=request.world_size,
        peak_phase=est.peak_phase,
        suggestions=() if fits else suggest(request, arch, est),
        notes=(*est.notes, *(_CPU_NOTES if request.cpu_only else ())),
        cpu_only=request.cpu_only,
    )
