"""FineTuneJob / PreferenceAlignment spec ⇒ PlanRequest (with the method-dependent defaults the
trainer will use, from kubetune.api.defaults)."""

from kubetune.api.defaults import resolve, tuning_method
from kubetune.api.enums import Method
from kubetune.api.resources import AnyJob, PreferenceAlignment
from kubetune.api.semantics import RefLookup
from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.planning.quantity import parse_quantity
from kubetune.planning.types import CannotPlan, PlanRequest


def plan_request(
    job: AnyJob, *, lookup: RefLookup | None = None, gpu_memory: str | None = None
) -> PlanRequest:
    """Raises CannotPlan when a PreferenceAlignment's FineTuneJob cannot be found to learn its model."""
    referenced: FineTuneJobSpec | None = None
    if isinstance(job, PreferenceAlignment) and job.spec.fine_tune_job_ref is not None:
        name = job.spec.fine_tune_job_ref.name
        referenced = lookup(name) if lookup is not None else None
        if referenced is None:
            raise CannotPlan(
                f"the base model comes from FineTuneJob {name!r}, which is not available to plan with",
                field="spec.fineTuneJobRef.name",
            )
    spec: FineTuneJobSpec | PreferenceAlignmentSpec = (
        resolve(job.spec, referenced) if isinstance(job.spec, PreferenceAlignmentSpec) else resolve(job.spec))
    method = tuning_method(spec, referenced)
    assert spec.base_model is not None  # resolve() fills it from the referenced job
    t = spec.training
    q = spec.quantization
    lora = spec.lora
    dpo = isinstance(spec, PreferenceAlignmentSpec)
    return PlanRequest(
        model=spec.base_model.uri,
        architecture=spec.base_model.architecture,
        kind="dpo" if dpo else "sft",
        method=method.value,
        quantization_bits=q.bits if q else 4,
        quantization_type=q.type if q else "nf4",  # type: ignore[arg-type]
        double_quant=q.double_quant if q else True,
        compute_dtype=q.compute_dtype if q else "bfloat16",  # type: ignore[arg-type]
        lora_r=lora.r if lora and method != Method.FULL else 16,
        lora_dropout=lora.dropout if lora else 0.0,
        target_modules=tuple(lora.target_modules) if lora else ("all-linear",),
        batch_size=t.batch_size or 1,
        max_seq_length=t.max_seq_length,
        gradient_checkpointing=t.gradient_checkpointing,
        optimizer=t.optimizer or "adamw_torch",  # type: ignore[arg-type]
        gradient_accumulation_steps=t.gradient_accumulation_steps or 1,
        packing=t.packing,
        gpus=spec.resources.gpus,
        nodes=spec.resources.nodes,
        gpu_memory_bytes=parse_quantity(gpu_memory or spec.resources.gpu_memory),
        dpo_reference=spec.dpo.reference_model if isinstance(spec, PreferenceAlignmentSpec) else "implicit",  # type: ignore[arg-type]
    )
