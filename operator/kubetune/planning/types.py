"""Plain input and output records of the memory planner.

Nothing here knows the API models: `kubetune.api` adapts a FineTuneJob / PreferenceAlignment spec into a
`PlanRequest`, and reads a `Plan` back (`Plan.to_dict()` is the JSON the CLI prints and the operator writes
to `status.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.planning.parallelism import world_size as parallel_world_size
from kubetune.planning.quantity import format_bytes

__all__ = [
    "ARCHITECTURE_FIELD",
    "DEFAULT_GPU_MEMORY_BYTES",
    "SPEC_FIELDS",
    "Architecture",
    "AttentionImpl",
    "CannotPlan",
    "ComputeDtype",
    "DpoReference",
    "Kind",
    "LinearModule",
    "Method",
    "Optimizer",
    "Plan",
    "PlanRequest",
    "QuantType",
    "Suggestion",
]

Kind = Literal["sft", "dpo"]
Method = Literal["qlora", "lora", "full"]
QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["bfloat16", "float16", "float32"]
Optimizer = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor"
]
DpoReference = Literal["implicit", "base"]
AttentionImpl = Literal["sdpa", "flash_attention_2", "flash_attention_3", "eager"]

KINDS: tuple[str, ...] = ("sft", "dpo")
METHODS: tuple[str, ...] = ("qlora", "lora", "full")
QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4")
COMPUTE_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
)
DPO_REFERENCES: tuple[str, ...] = ("implicit", "base")
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "flash_attention_2", "flash_attention_3", "eager")

DEFAULT_GPU_MEMORY_BYTES = 80 * 2**30
"""An 80 GiB card (A100-80GB / H100-80GB report 79.6–80 GiB); used when a request gives none."""

ARCHITECTURE_FIELD = "spec.baseModel.architecture"
"""Where a user names the architecture of a model the planner does not recognise."""

SPEC_FIELDS: Mapping[str, str] = {
    # PlanRequest field → the spec path (relative to `spec`, camelCase) a suggestion's `change` uses.
    # One table, so the API adapter and the suggestions agree; adjust here if the API moves a field.
    "method": "method",
    "batch_size": "training.batchSize",
    "gradient_accumulation_steps": "training.gradientAccumulationSteps",
    "gradient_checkpointing": "training.gradientCheckpointing",
    "max_seq_length": "training.maxSeqLength",
    "optimizer": "training.optimizer",
    "gpus": "resources.gpus",
    "nodes": "resources.nodes",
    "quantization_bits": "quantization.bits",
    "lora_r": "lora.r",
}


class CannotPlan(ValueError):
    """The planner cannot estimate this job (the model's architecture is unknown).

    Not a guess and not a verdict: callers decide (the CLI exits 1, the webhook admits with a warning or
    rejects, by its policy). `field` names the spec field that fixes it.
    """

    def __init__(self, message: str, *, field: str = ARCHITECTURE_FIELD) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """What the planner needs to know about one job, with the trainer's defaults.

    Sizes are per GPU: `batch_size` is the per-device micro-batch (sequences; DPO pairs count as two
    sequences internally), `gpus` is per node. `gpus = 0` is a CPU job: one process per node (gloo), no CUDA
    context, and the peak is checked against `memory_bytes`, the pod's memory limit.
    """

    model: str
    """`spec.baseModel.uri`: `hf://org/name`, `org/name`, `file:///path`, `pvc://claim/path`."""
    architecture: str | None = None
    """`spec.baseModel.architecture`: a catalog name (`llama-3.1-8b`) or HF id; wins over the URI."""
    kind: Kind = "sft"
    method: Method = "qlora"
    quantization_bits: int = 4
    """4 (bitsandbytes NF4/FP4) or 8 (LLM.int8); only used by `qlora`."""
    quantization_type: QuantType = "nf4"
    double_quant: bool = True
    compute_dtype: ComputeDtype = "bfloat16"
    lora_r: int = 16
    lora_dropout: float = 0.05
    """A dropout > 0 keeps a 1-byte mask per LoRA input element for backward."""
    target_modules: tuple[str, ...] = ("all-linear",)
    batch_size: int = 1
    max_seq_length: int = 2048
    gradient_checkpointing: bool = True
    optimizer: Optimizer = "adamw_torch"
    gradient_accumulation_steps: int = 1
    packing: bool = False
    gpus: int = 1
    """GPUs per node; 0: a CPU job."""
    nodes: int = 1
    gpu_memory_bytes: int = DEFAULT_GPU_MEMORY_BYTES
    """What one GPU has: the limit of a GPU job."""
    memory_bytes: int | None = None
    """`spec.resources.memory`, the pod's memory limit: the limit of a CPU job (required then)."""
    dpo_reference: DpoReference = "implicit"
    attention: AttentionImpl = "sdpa"

    def __post_init__(self) -> None:
        def bad(name: str, value: object, allowed: str) -> ValueError:
            return ValueError(f"{name} = {value!r} is not valid; expected {allowed}")

        if not self.model and not self.architecture:
            raise bad("model", self.model, "a model URI or an architecture name")
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("method", self.method, METHODS),
            ("quantization_type", self.quantization_type, QUANT_TYPES),
            ("compute_dtype", self.compute_dtype, COMPUTE_DTYPES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("dpo_reference", self.dpo_reference, DPO_REFERENCES),
            ("attention", self.attention, ATTENTION_IMPLS),
        ):
            if value not in allowed:
                raise bad(name, value, "one of " + ", ".join(allowed))
        if self.quantization_bits not in (4, 8):
            raise bad("quantization_bits", self.quantization_bits, "4 or 8")
        for name in (
            "lora_r",
            "batch_size",
            "max_seq_length",
            "gradient_accumulation_steps",
            "nodes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "a positive integer")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise bad("gpus", self.gpus, "0 (a CPU job) or a positive integer")
        if self.cpu_only and self.memory_bytes is None:
            raise bad("memory_bytes", None, "the pod's memory limit: a CPU job (gpus 0) is checked against it")
        if self.memory_bytes is not None and (isinstance(self.memory_bytes, bool) or self.memory_bytes <= 0):
            raise bad("memory_bytes", self.memory_bytes, "a positive byte count")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad("lora_dropout", self.lora_dropout, "a number in [0, 1)")
        if isinstance(self.gpu_memory_bytes, bool) or self.gpu_memory_bytes <= 0:
            raise bad("gpu_memory_bytes", self.gpu_memory_bytes, "a positive byte count")
        if isinstance(self.target_modules, str):  # a bare string would iterate by character
            object.__setattr__(self, "target_modules", (self.target_modules,))
        elif not isinstance(self.target_modules, tuple):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise bad("target_modules", self.target_modules, "at least one module name or 'all-linear'")

    @property
    def cpu_only(self) -> bool:
        return self.gpus == 0

    @property
    def world_size(self) -> int:
        """Trainer processes: one per GPU, or one per node for a CPU job."""
        return parallel_world_size(self.gpus, self.nodes)

    @property
    def limit_bytes(self) -> int:
        """What the peak must fit: one GPU's memory, or for a CPU job the pod's memory limit."""
        if self.cpu_only:
            assert self.memory_bytes is not None  # __post_init__ requires it
            return self.memory_bytes
        return self.gpu_memory_bytes


@dataclass(frozen=True)
class LinearModule:
    """One kind of linear layer in a decoder block, e.g. `q_proj` (hidden → heads × head_dim)."""

    name: str
    in_features: int
    out_features: int
    count: int = 1
    """How many per layer (Mixtral: one per expert)."""
    bias: bool = False
    expert: bool = False
    """An MoE expert weight: each token passes through `experts_per_token` of the `count`."""

    @property
    def weight_elements(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """The numbers of a decoder-only transformer that memory depends on (as in its `config.json`)."""

    name: str
    """Catalog name (`llama-3-70b`) or, for a local config, the folder it was read from."""
    model_type: str
    """Hugging Face `model_type`: llama, mistral, mixtral, qwen2, qwen3, gemma2, phi3, ..."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    num_experts: int = 0
    """0 for a dense model; Mixtral 8x7B: 8."""
    experts_per_token: int = 0
    attention_bias: bool = False
    """Bias on q/k/v (Qwen2/2.5)."""
    qk_norm: bool = False
    """RMSNorm on queries and keys per head (Qwen3)."""
    norms_per_layer: int = 2
    """RMSNorms per block: 2 (Llama), 4 (Gemma 2: pre/post attention and pre/post MLP)."""
    fused_qkv: bool = False
    """One `qkv_proj` and one `gate_up_proj` (Phi-3) instead of separate projections."""
    logit_softcapping: bool = False
    """Gemma 2 caps logits with tanh: one more vocab-sized tensor around the loss."""
    published_params: int | None = None
    """The parameter count the model card / safetensors index states, when known (a cross-check)."""
    hf_ids: tuple[str, ...] = ()

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


@dataclass(frozen=True)
class Suggestion:
    """A concrete change to the spec and what the job would need with it."""

    description: str
    """Short, reads after "…; ": `method qlora`, `batch size 1 with gradient accumulation 8`."""
    change: Mapping[str, Any]
    """Spec path (camelCase, relative to `spec`) → new value, e.g. `{"method": "qlora"}`."""
    peak_bytes: int
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "change": dict(self.change),
            "peakBytes": self.peak_bytes,
            "fits": self.fits,
        }


@dataclass(frozen=True)
class Plan:
    """The planner's verdict for one job: per-GPU peak (per pod for a CPU job), its breakdown, and what
    would fit if it doesn't."""

    fits: bool
    peak_bytes: int
    limit_bytes: int
    """What the peak is checked against: one GPU's memory, or for a CPU job the pod's memory limit."""
    breakdown: Mapping[str, int]
    """Ordered name → bytes of what is resident at the peak; sums to `peak_bytes`."""
    architecture: str
    params_total: int
    params_trainable: int
    kind: str
    method: str
    world_size: int
    peak_phase: str
    """`forward/backward` or `optimizer step`: when the peak happens."""
    suggestions: tuple[Suggestion, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """Assumptions that shaped this estimate, one sentence each."""
    cpu_only: bool = False
    """A CPU job (`resources.gpus: 0`): the limit is `resources.memory`, not GPU memory."""

    @property
    def gpu_memory_bytes(self) -> int | None:
        """The GPU memory planned against; None for a CPU job."""
        return None if self.cpu_only else self.limit_bytes

    @property
    def memory_bytes(self) -> int | None:
        """The pod memory limit planned against (a CPU job); None for a GPU job."""
        return self.limit_bytes if self.cpu_only else None

    @property
    def per(self) -> str:
        """Where the peak lives, for sentences: "per GPU" or "memory per pod (CPU job)"."""
        return "memory per pod (CPU job)" if self.cpu_only else "per GPU"

    @property
    def headroom_bytes(self) -> int:
        return self.limit_bytes - self.peak_bytes

    @property
    def best_suggestion(self) -> Suggestion | None:
        """The first suggestion that fits (they are ranked), if any."""
        return next((s for s in self.suggestions if s.fits), None)

    def summary(self) -> str:
        """One line for humans; the admission webhook and `kubetune validate` print it on rejection.

        e.g. "full fine-tune of llama-3-70b needs ~1.2 TiB per GPU; 80 GiB available; method qlora would
        need ~46 GiB", or for a CPU job "LoRA fine-tune of smollm2-135m needs ~3.1 GiB memory per pod (CPU
        job); 8 GiB available in resources.memory (4.9 GiB headroom)".
        """
        what = {"full": "full fine-tune", "lora": "LoRA fine-tune", "qlora": "QLoRA fine-tune"}[self.method]
        if self.kind == "dpo":
            what = f"DPO ({what.replace(' fine-tune', '')})"
        head = f"{what} of {self.architecture} needs ~{format_bytes(self.peak_bytes)} {self.per}"
        available = format_bytes(self.limit_bytes) + " available" + (" in resources.memory" if self.cpu_only else "")
        if self.fits:
            return f"{head}; {available} ({format_bytes(self.headroom_bytes)} headroom)"
        best = self.best_suggestion
        if best is not None:
            tail = f"{best.description} would need ~{format_bytes(best.peak_bytes)}"
        elif self.suggestions:
            closest = min(self.suggestions, key=lambda s: s.peak_bytes)
            tail = (
                f"no single change fits; closest: {closest.description} (~{format_bytes(closest.peak_bytes)})"
            )
        else:
            tail = "no change to this spec fits"
        return f"{head}; {available}; {tail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON for `kubetune plan --output json` and `status.plan` (camelCase keys). The limit is
        `gpuMemoryBytes` for a GPU job, `memoryBytes` (the pod's) for a CPU job (`cpuOnly: true`)."""
        return {
            "fits": self.fits,
            "peakBytes": self.peak_bytes,
            "memoryBytes" if self.cpu_only else "gpuMemoryBytes": self.limit_bytes,
            "cpuOnly": self.cpu_only,
            "headroomBytes": self.headroom_bytes,
            "breakdown": dict(self.breakdown),
            "suggestions": [s.to_dict() for s in self.suggestions],
            "architecture": self.architecture,
            "paramsTotal": self.params_total,
            "paramsTrainable": self.params_trainable,
            "kind": self.kind,
            "method": self.method,
            "worldSize": self.world_size,
            "peakPhase": self.peak_phase,
            "summary": self.summary(),
            "notes": list(self.notes),
        }
