"""FineTuneJob / PreferenceAlignment spec ⇒ PlanRequest (with the method-dependent defaults the
trainer will use, from kubetune.api.method_defaults).

A CPU job (`resources.gpus: 0`) is planned as the trainer runs it on CPU: everything in float32 (no
autocast, 4-bit compute in fp32) and adamw_torch in place of bitsandbytes' CUDA-only optimizers, against
`resources.memory`, the pod's memory limit.
"""

from kubetune.api.enums import CUDA_ONLY_OPTIMIZERS, Method
from kubetune.api.method_defaults import resolve, tuning_method
from kubetune.api.resources import AnyJob, PreferenceAlignment
from kubetune.api.semantics import RefLookup
from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.planning.quantity import parse_quantity
from kubetune.planning.types import CannotPlan, PlanRequest


def plan_request(
    job: AnyJob, *, lookup: RefLookup | None = None, gpu_memory: str | None = None, memory: str | None = None
) -> PlanRequest:
    """`gpu_memory` / `memory` replace `resources.gpuMemory` / `resources.memory` (what a GPU / CPU job is
    checked against). Raises CannotPlan when a PreferenceAlignment's FineTuneJob cannot be found to learn
    its model, or a CPU job has no memory limit to check against."""
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
    r = spec.resources
    cpu = r.cpu_only
    pod_memory = memory or r.memory
    if cpu and pod_memory is None:
        raise CannotPlan("a CPU job needs resources.memory so the plan can be checked", field="spec.resources.memory")
    optimizer = str(t.optimizer or "adamw_torch")
    compute_dtype = str(q.compute_dtype) if q else "bfloat16"
    if cpu:
        optimizer = "adamw_torch" if optimizer in CUDA_ONLY_OPTIMIZERS else optimizer
        compute_dtype = "float32"
    return PlanRequest(
        model=spec.base_model.uri,
        architecture=spec.base_model.architecture,
        kind="dpo" if dpo else "sft",
        method=method.value,
        quantization_bits=q.bits if q else 4,
        quantization_type=q.type if q else "nf4",  # type: ignore[arg-type]
        double_quant=q.double_quant if q else True,
        compute_dtype=compute_dtype,  # type: ignore[arg-type]
        lora_r=lora.r if lora and method != Method.FULL else 16,
        lora_dropout=lora.dropout if lora else 0.0,
        target_modules=tuple(lora.target_modules) if lora else ("all-linear",),
        batch_size=t.batch_size or 1,
        max_seq_length=t.max_seq_length,
        gradient_checkpointing=t.gradient_checkpointing,
        optimizer=optimizer,  # type: ignore[arg-type]
        gradient_accumulation_steps=t.gradient_accumulation_steps or 1,
        packing=t.packing,
        gpus=r.gpus,
        nodes=r.nodes,
        gpu_memory_bytes=parse_quantity(gpu_memory or r.gpu_memory),
        memory_bytes=parse_quantity(pod_memory) if pod_memory else None,
        dpo_reference=spec.dpo.reference_model if isinstance(spec, PreferenceAlignmentSpec) else "implicit",  # type: ignore[arg-type]
    )
