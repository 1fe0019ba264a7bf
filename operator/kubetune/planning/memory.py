"""The per-GPU memory model of one training step.

What the trainer does (and so what this models; `docs/memory-planner.md` has the derivations):
- HF Trainer (through TRL's SFTTrainer / DPOTrainer) with `bf16=True` (or fp16): the forward runs under
  `torch.autocast`, the loss is computed inside the model's forward (`labels=`), then `backward()`, then
  the optimizer step; `zero_grad(set_to_none=True)` frees gradients between steps.
- `full`: the model is loaded in fp32 and autocast computes in bf16 → fp32 params, fp32 grads, fp32 Adam
  (16 bytes/param), plus autocast's bf16 weight copies while the step runs. Multi-GPU full fine-tunes use
  FSDP full-shard with bf16 mixed precision (params gathered in bf16 one block at a time).
- `lora`: the base is loaded in the compute dtype and frozen; peft makes the adapters fp32
  (`autocast_adapter_dtype=True`).
- `qlora`: bitsandbytes quantizes every `nn.Linear` of the decoder blocks (not `lm_head`);
  `peft.prepare_model_for_kbit_training` upcasts everything left in 16-bit (embeddings, lm_head, norms)
  to fp32, so the residual stream is fp32; TRL casts the adapters of a quantized model to bf16.

The peak is the larger of two moments: the start of backward (all activations saved by the forward, the
loss's vocab-sized tensors) and the optimizer step (all gradients plus the optimizer's temporaries). The
breakdown lists what is resident at that moment and sums to the peak.

Each term has its own function (`base_weight_bytes`, `gradient_bytes`, `activation_bytes`, ...);
`memory_terms` evaluates them for one request, `forward_backward_moment` / `optimizer_step_moment` pick what
is resident at each moment, and `estimate` takes the larger and adds `runtime_overhead_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from kubetune.planning.catalog import linear_modules, param_count, unquantized_param_count
from kubetune.planning.parallelism import Mode, Parallelism, decide
from kubetune.planning.types import Architecture, ComputeDtype, LinearModule, Method, Optimizer, PlanRequest

__all__ = [
    "BNB_8BIT_MIN_SIZE",
    "CPU_PROCESS_BYTES",
    "CUDA_CONTEXT_BYTES",
    "FRAGMENTATION_FRACTION",
    "NCCL_BYTES",
    "TRAINABLE_PARAM_BYTES",
    "Estimate",
    "MemoryTerms",
    "activation_bytes",
    "adapter_bytes",
    "autocast_copy_bytes",
    "base_weight_bytes",
    "ddp_bucket_bytes",
    "dequantization_buffer_bytes",
    "dpo_reference_bytes",
    "estimate",
    "forward_backward_moment",
    "fragmentation_bytes",
    "fsdp_shards",
    "fsdp_unsharded_bytes",
    "gradient_bytes",
    "gradients_at_backward_bytes",
    "logits_bytes",
    "memory_terms",
    "nccl_bytes",
    "optimizer_state_bytes",
    "optimizer_step_moment",
    "optimizer_step_transient_bytes",
    "parallelism",
    "quantized_linear_bytes",
    "resolve_target_modules",
    "runtime_overhead_bytes",
    "trainable_tensor_shapes",
]

MiB = 2**20
GiB = 2**30

# ---- constants (each one: what it is, and why this value) --------------------------------------------

DTYPE_BYTES: Mapping[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}

NF4_BLOCKSIZE = 64
"""bitsandbytes `quantize_4bit` default: one absmax per 64 weights (fp32 4 B, or uint8 with double quant)."""
NF4_CODE_BYTES = 16 * 4
"""`QuantState.code`: the 16-entry NF4/FP4 table (fp32), one copy per quantized weight."""
DOUBLE_QUANT_BLOCKSIZE = 256
"""Double quant: the absmax vector is quantized blockwise (8-bit) with one fp32 absmax per 256 absmax."""
DOUBLE_QUANT_CONST_BYTES = 256 * 4 + 4
"""Double quant per weight: the 256-entry dynamic map (fp32, copied per tensor) and the fp32 offset."""
INT8_SCALE_BYTES = 4
"""LLM.int8 (`Int8Params`): one fp32 scale (`SCB`) per output row."""

ADAPTER_BYTES_LORA = 4
"""peft `get_peft_model(autocast_adapter_dtype=True)` upcasts LoRA A/B of a 16-bit base to fp32."""
ADAPTER_BYTES_QLORA = 2
"""TRL (`SFTTrainer`/`DPOTrainer`) casts the trainable adapters of a quantized model to bf16 (QLoRA paper)."""
QLORA_UNQUANTIZED_BYTES = 4
"""`prepare_model_for_kbit_training` casts every fp16/bf16 parameter that is not 4/8-bit to fp32."""
FULL_PARAM_BYTES = 4
"""Full fine-tune: fp32 parameters (and so fp32 gradients and Adam states) with bf16 autocast."""

BNB_8BIT_BLOCKSIZE = 256
"""bitsandbytes 8-bit optimizers quantize each state in blocks of 256 with an fp32 absmax per block."""
BNB_8BIT_MIN_SIZE = 4096
"""bitsandbytes keeps 32-bit states for parameters with fewer elements (`min_8bit_size`)."""
ADAM_STEP_BYTES = 4
"""torch AdamW keeps `step` as a float32 scalar tensor per parameter."""
ADAFACTOR_RMS_BYTES = 4
"""HF Adafactor keeps the parameter's RMS as a float32 scalar tensor per parameter."""

LOSS_BYTES_PER_LOGIT = 12
"""Per token × vocab entry around the loss: at the start of backward the fp32 log-softmax saved by
cross-entropy (4), the gradient flowing into it (4) and the gradient it produces (4). In the forward the
bf16 logits (2) + their fp32 upcast (4) + the log-softmax (4) = 10 stay below it."""
SOFTCAP_BYTES_PER_LOGIT = 2
"""Gemma 2's final `tanh` soft-cap saves one more logits-sized tensor (its output, in the compute dtype)."""

CUDA_CONTEXT_BYTES = 768 * MiB
"""CUDA context + cuBLAS/cuDNN handles and workspaces (~0.5–0.8 GiB on H100/A100 with CUDA 12 lazy
loading); outside `torch.cuda.max_memory_allocated`, inside what the card has."""
CPU_PROCESS_BYTES = 1280 * MiB
"""A CPU job's stand-in for the CUDA context: the trainer process itself, which the pod's memory limit
counts (Python with torch, transformers, peft, trl, datasets and bitsandbytes: ~1.0 GiB resident after the
imports; a whole run on a tiny model peaked at ~1.18 GiB with torch 2.13)."""
NCCL_BYTES = 512 * MiB
"""NCCL communicator buffers per process when more than one GPU takes part."""
FRAGMENTATION_FRACTION = 0.05
"""The caching allocator reserves more than it hands out (block rounding, fragmentation): ~3–10% in
training loops; `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` keeps it at the low end."""

LOGITS_NOTE = "logits and loss assume HF's cross-entropy (fp32 upcast of batch × seq × vocab)"


@dataclass(frozen=True)
class Estimate:
    """The memory model's answer for one request (suggestions are added by `suggest`)."""

    peak_bytes: int
    breakdown: Mapping[str, int]
    peak_phase: str
    params_total: int
    params_trainable: int
    notes: tuple[str, ...]
    components: Mapping[str, int] = field(default_factory=dict)
    """Every term regardless of phase (for tests, benchmarks and the docs)."""

    @property
    def allocated_peak_bytes(self) -> int:
        """What `torch.cuda.max_memory_allocated` should see: the peak without the runtime overhead."""
        return self.peak_bytes - self.breakdown.get("runtime_overhead", 0)


# ---- parameters and their storage -------------------------------------------------------------------

_SHORT_NAMES: Mapping[str, str] = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
# Standard names → what fused (Phi-3) and MoE (Mixtral) blocks call the same weights.
_FUSED_ALIASES: Mapping[str, str] = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
}
_MOE_ALIASES: Mapping[str, str] = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


@lru_cache(maxsize=1024)
def resolve_target_modules(
    arch: Architecture, targets: tuple[str, ...]
) -> tuple[tuple[LinearModule, ...], tuple[str, ...]]:
    """LoRA targets → the block's linear modules, and the names that match nothing.

    `all-linear` is peft's: every linear layer of the blocks (never `lm_head`). Names may be short
    (`q`, `down`) or HF names (`q_proj`), and standard names map onto fused/MoE layouts.
    """
    modules = linear_modules(arch)
    if any(t.lower() in ("all-linear", "all_linear") for t in targets):
        return modules, ()
    by_name = {m.name: m for m in modules}
    chosen: dict[str, LinearModule] = {}
    unknown: list[str] = []
    for target in targets:
        name = target.strip().rsplit(".", 1)[-1]
        name = _SHORT_NAMES.get(name.lower(), name)
        if name not in by_name:
            name = (_FUSED_ALIASES if arch.fused_qkv else _MOE_ALIASES if arch.is_moe else {}).get(name, name)
        if name in by_name:
            chosen[name] = by_name[name]
        else:
            unknown.append(target)
    return tuple(m for m in modules if m.name in chosen), tuple(unknown)


def quantized_linear_bytes(m: LinearModule, bits: int, double_quant: bool) -> int:
    """Storage of one bitsandbytes-quantized weight (per instance; its bias stays floating point).

    4-bit: two weights per byte, one absmax per 64 weights (fp32; or uint8 + one fp32 per 256 absmax with
    double quant, + the 256-entry map and offset), + the 16-entry code table. 8-bit: one byte per weight
    + an fp32 scale per output row.
    """
    n = m.weight_elements
    if bits == 8:
        return n + INT8_SCALE_BYTES * m.out_features
    blocks = math.ceil(n / NF4_BLOCKSIZE)
    total = math.ceil(n / 2) + NF4_CODE_BYTES
    if double_quant:
        total += blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCKSIZE) + DOUBLE_QUANT_CONST_BYTES
    else:
        total += 4 * blocks
    return total


def _linear_elements(arch: Architecture) -> int:
    return sum(m.weight_elements * m.count for m in linear_modules(arch)) * arch.num_layers


def base_weight_bytes(arch: Architecture, req: PlanRequest) -> int:
    """The whole model's weights on one GPU (before FSDP sharding)."""
    total = param_count(arch)
    if req.method == "full":
        return total * FULL_PARAM_BYTES
    if req.method == "lora":
        return total * DTYPE_BYTES[req.compute_dtype]
    quantized = (
        sum(
            quantized_linear_bytes(m, req.quantization_bits, req.double_quant) * m.count
            for m in linear_modules(arch)
        )
        * arch.num_layers
    )
    return quantized + unquantized_param_count(arch) * QLORA_UNQUANTIZED_BYTES


def trainable_tensor_shapes(
    arch: Architecture, req: PlanRequest, targets: tuple[LinearModule, ...]
) -> list[tuple[int, int, int]]:
    """(rows, cols, how many) of every trainable tensor; cols = 0 for a vector."""
    layers = arch.num_layers
    if req.method != "full":
        r = req.lora_r
        shapes: list[tuple[int, int, int]] = []
        for m in targets:
            shapes.append((r, m.in_features, m.count * layers))  # lora_A: r × in
            shapes.append((m.out_features, r, m.count * layers))  # lora_B: out × r
        return shapes
    h, v = arch.hidden_size, arch.vocab_size
    shapes = [(v, h, 1 if arch.tie_embeddings else 2), (h, 0, 1 + layers * arch.norms_per_layer)]
    for m in linear_modules(arch):
        shapes.append((m.out_features, m.in_features, m.count * layers))
        if m.bias:
            shapes.append((m.out_features, 0, m.count * layers))
    if arch.qk_norm:
        shapes.append((arch.head_dim, 0, 2 * layers))
    if arch.is_moe:
        shapes.append((arch.num_experts, h, layers))
    return shapes


def _elements(shape: tuple[int, int, int]) -> int:
    rows, cols, count = shape
    return rows * (cols or 1) * count


TRAINABLE_PARAM_BYTES: Mapping[str, int] = {
    "full": FULL_PARAM_BYTES,
    "lora": ADAPTER_BYTES_LORA,
    "qlora": ADAPTER_BYTES_QLORA,
}
"""Bytes of one trainable parameter by method, and so of its gradient (a gradient has its parameter's dtype)."""


def adapter_bytes(req: PlanRequest, trainable: int) -> int:
    """The LoRA A/B weights of `trainable` parameters (fp32 for LoRA, bf16 for QLoRA); 0 for a full
    fine-tune, whose trainable parameters are the base weights themselves."""
    return 0 if req.method == "full" else trainable * TRAINABLE_PARAM_BYTES[req.method]


def gradient_bytes(req: PlanRequest, trainable: int) -> int:
    """All gradients of `trainable` parameters, as at the optimizer step (before FSDP sharding)."""
    return trainable * TRAINABLE_PARAM_BYTES[req.method]


def gradients_at_backward_bytes(arch: Architecture, req: PlanRequest, trainable: int) -> int:
    """Gradients already present at the start of backward (before FSDP sharding).

    All of them when earlier micro-batches accumulated into them (and LoRA's, which are tiny, always); for a
    full fine-tune's first micro-batch only lm_head's, which backward computes first.
    """
    if req.method != "full" or req.gradient_accumulation_steps > 1:
        return gradient_bytes(req, trainable)
    return arch.vocab_size * arch.hidden_size * TRAINABLE_PARAM_BYTES[req.method]


def optimizer_state_bytes(optimizer: str, shapes: list[tuple[int, int, int]], param_bytes: int) -> int:
    """Optimizer state for the trainable tensors.

    AdamW (torch, fused, bnb paged 32-bit): exp_avg + exp_avg_sq in the parameter's dtype, + a float32
    `step` per tensor. bnb 8-bit (adamw_8bit, paged_adamw_8bit): two uint8 states + one fp32 absmax per
    256 elements each, but 32-bit states for tensors under 4096 elements. Adafactor (HF, beta1=None):
    factored second moment — a row and a column vector (fp32) per matrix, a full vector for 1-D tensors,
    + an fp32 RMS scalar.
    """
    total = 0
    for rows, cols, count in shapes:
        n = rows * (cols or 1)
        if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            small = n < BNB_8BIT_MIN_SIZE
            per = 2 * 4 * n if small else 2 * n + 2 * 4 * math.ceil(n / BNB_8BIT_BLOCKSIZE)
        elif optimizer == "adafactor":
            per = (4 * (rows + cols) if cols else 4 * n) + ADAFACTOR_RMS_BYTES
        else:  # adamw_torch, adamw_torch_fused, paged_adamw_32bit
            per = 2 * param_bytes * n + ADAM_STEP_BYTES
        total += per * count
    return total


def optimizer_step_transient_bytes(
    optimizer: str, shapes: list[tuple[int, int, int]], param_bytes: int
) -> int:
    """Temporaries during `optimizer.step()`.

    `adamw_torch` is torch's multi-tensor (foreach) AdamW: `_foreach_sqrt(exp_avg_sqs)` makes one full
    copy of the second moments. Fused AdamW and bitsandbytes' kernels update in place. HF Adafactor builds
    ~3 full-size fp32 temporaries of one parameter at a time.
    """
    if optimizer == "adamw_torch":
        return sum(_elements(s) for s in shapes) * param_bytes
    if optimizer == "adafactor":
        return 3 * 4 * max((s[0] * (s[1] or 1) for s in shapes), default=0)
    return 0


# ---- activations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Regime:
    """Dtypes of what the forward saves, which follow from how the model is loaded."""

    residual: int
    """Bytes of the residual stream (layer inputs/outputs)."""
    linear_out: int
    """Bytes of projection outputs (and the MLP's intermediates)."""
    compute: int
    """Bytes of autocast copies (the compute dtype)."""
    trainable_weights: bool
    """Full fine-tune: every linear saves its input and every norm its normalized output."""
    cast_copies: bool
    """Autocast casts an fp32 input separately for each projection that reads it (q, k, v; gate, up)."""
    autocast: bool


def _regime(req: PlanRequest) -> _Regime:
    return _regime_for(req.method, parallelism(req).mode is Mode.FSDP_FULL_SHARD, req.compute_dtype)


@lru_cache(maxsize=64)
def _regime_for(method: str, sharded: bool, compute_dtype: str) -> _Regime:
    compute = DTYPE_BYTES[compute_dtype]
    autocast = compute < 4
    if method == "full":
        if sharded or not autocast:  # FSDP mixed precision computes in bf16 params (or all fp32)
            return _Regime(compute, compute, compute, True, False, autocast)
        return _Regime(4, compute, compute, True, True, autocast)
    if method == "qlora":
        # fp32 embeddings ⇒ fp32 residual; bnb's Linear4bit returns its output in the input's dtype (fp32)
        return _Regime(4, 4, compute, False, False, autocast)
    return _Regime(compute, compute, compute, False, False, autocast)


def _sequences(req: PlanRequest) -> int:
    """Sequences in one micro-batch forward: DPO concatenates chosen and rejected."""
    return req.batch_size * (2 if req.kind == "dpo" else 1)


def _padding_mask(req: PlanRequest) -> bool:
    """Whether a 4-D attention mask exists: padded batches (DPO pairs always pad to the longer answer)."""
    if req.attention in ("flash_attention_2", "flash_attention_3"):
        return False  # unpadded varlen kernels, no mask tensor
    return _sequences(req) > 1 and not req.packing


_LAYER_MEMO: dict[tuple[object, ...], float] = {}


def _layer_bytes_per_token(arch: Architecture, req: PlanRequest, targets: tuple[LinearModule, ...]) -> float:
    """Bytes one decoder block's forward saves for backward, per token (no checkpointing); memoised on
    the fields it reads (the suggestion search re-plans variants that differ in batch or GPUs only)."""
    key = (
        arch,
        targets,
        req.method,
        req.world_size > 1,
        req.compute_dtype,
        req.lora_r,
        req.lora_dropout > 0,
        req.attention,
        _padding_mask(req),
        req.max_seq_length if req.attention == "eager" else 0,
    )
    found = _LAYER_MEMO.get(key)
    if found is None:
        if len(_LAYER_MEMO) > 4096:
            _LAYER_MEMO.clear()
        found = _LAYER_MEMO[key] = _layer_bytes_uncached(arch, req, targets)
    return found


def _layer_bytes_uncached(arch: Architecture, req: PlanRequest, targets: tuple[LinearModule, ...]) -> float:
    g = _regime(req)
    h, i, q, kv = arch.hidden_size, arch.intermediate_size, arch.q_dim, arch.kv_dim
    top_k = arch.experts_per_token if arch.is_moe else 1
    total = 0.0
    # RMSNorms upcast their input to fp32 and keep it for backward; a trainable weight keeps the output too
    total += arch.norms_per_layer * (4 * h + (g.residual * h if g.trainable_weights else 0))
    # inputs of trainable projections: one autocast copy per reader of an fp32 input, else shared
    if g.trainable_weights:
        readers_attn = (1 if arch.fused_qkv else 3) if g.cast_copies else 1
        readers_mlp = (1 if arch.fused_qkv else 2) * (top_k if arch.is_moe else 1) if g.cast_copies else top_k
        total += (readers_attn + readers_mlp) * g.compute * h
    if arch.qk_norm:
        total += 4 * (q + kv)
    # attention: SDPA/flash keep q, k, v, the output and an fp32 logsumexp per head (no seq × seq matrix).
    # With a padding mask transformers repeats k/v to all heads for SDPA; eager always does.
    repeat_kv = req.attention == "eager" or (req.attention == "sdpa" and _padding_mask(req))
    kv_saved = q if repeat_kv else kv
    total += g.compute * (2 * q + 2 * kv_saved) + 4 * arch.num_heads
    if req.attention == "eager":
        # softmax in fp32 (kept) and its cast to the compute dtype (kept by the matmul with v)
        total += arch.num_heads * req.max_seq_length * (4 + g.compute)
    # MLP: gate output (kept by the activation), activation output and up output (kept by the product)
    total += top_k * 3 * g.linear_out * i
    if g.trainable_weights:
        total += top_k * g.linear_out * i  # the product is down_proj's input
    if arch.is_moe:
        total += top_k * g.residual * h + 2 * 4 * arch.num_experts  # gathered tokens; router logits/probs
    # LoRA: peft casts a layer's input to the adapter dtype, dropout runs, and lora_A (under autocast)
    # keeps a compute-dtype copy; plus the dropout mask (1 byte/element on CUDA) and lora_A's output for
    # lora_B. One exception: o_proj reads the attention output, already in the compute dtype, and when the
    # adapters are too (QLoRA under TRL) without dropout nothing is copied: the saved tensor is shared.
    adapter = ADAPTER_BYTES_QLORA if req.method == "qlora" else ADAPTER_BYTES_LORA
    lora_input = g.compute if g.autocast else adapter
    dropout = req.lora_dropout > 0
    for m in targets:
        readers = m.count if not m.expert else top_k
        shared = m.name == "o_proj" and adapter == g.compute and not dropout
        per = (0 if shared else m.in_features * lora_input) + req.lora_r * lora_input
        if dropout:
            per += m.in_features
        total += readers * per
    return total


def _workspace_per_token(arch: Architecture, req: PlanRequest) -> float:
    """Gradient buffers alive while one block runs backward: the MLP's three intermediates + two hidden."""
    g = _regime(req)
    top_k = arch.experts_per_token if arch.is_moe else 1
    return 3 * g.linear_out * arch.intermediate_size * top_k + 2 * 4 * arch.hidden_size


def activation_bytes(
    arch: Architecture, req: PlanRequest, targets: tuple[LinearModule, ...]
) -> dict[str, float]:
    """Activations of one micro-batch at the start of backward, by part."""
    g = _regime(req)
    sequences = _sequences(req)
    seq = req.max_seq_length
    tokens = sequences * seq
    layer = _layer_bytes_per_token(arch, req, targets) * tokens
    boundary = g.residual * arch.hidden_size * tokens  # a block's input (what checkpointing keeps)
    # outside the blocks: rotary cos/sin, the final norm (+ lm_head's input when trainable)
    outside = (2 * arch.head_dim * g.residual + 4 * arch.hidden_size) * tokens
    if g.trainable_weights:
        outside += g.compute * arch.hidden_size * tokens
    mask = 0.0
    per_layer_mask = 0.0
    if _padding_mask(req):
        mask = sequences * seq * seq * (g.compute if req.attention == "eager" else 1)
        if req.attention == "sdpa":
            # SDPA turns the boolean mask into a float bias per call; the memory-efficient kernel keeps it
            per_layer_mask = sequences * seq * seq * g.compute
    if req.gradient_checkpointing:
        blocks = arch.num_layers * boundary + layer + per_layer_mask
    else:
        blocks = arch.num_layers * (layer + per_layer_mask)
    workspace = _workspace_per_token(arch, req) * tokens
    return {"blocks": blocks, "outside": outside, "mask": mask, "workspace": workspace}


def logits_bytes(arch: Architecture, req: PlanRequest) -> int:
    """The loss's vocabulary-sized tensors at the start of backward (`LOSS_BYTES_PER_LOGIT` per token × vocab
    entry, + `SOFTCAP_BYTES_PER_LOGIT` for a soft-capped model)."""
    tokens = _sequences(req) * req.max_seq_length
    per = LOSS_BYTES_PER_LOGIT + (SOFTCAP_BYTES_PER_LOGIT if arch.logit_softcapping else 0)
    return tokens * arch.vocab_size * per


# ---- what precision, parallelism and DPO add -------------------------------------------------------


def autocast_copy_bytes(arch: Architecture, req: PlanRequest, trainable: int) -> int:
    """Autocast's compute-dtype copies of fp32 weights (0 when computing in fp32).

    Autocast casts fp32 weights once per forward and caches the copies until the forward (which computes the
    loss) returns; the matmuls keep them for backward. Full fine-tune on one GPU: every linear and lm_head;
    QLoRA: lm_head (upcast to fp32 by `prepare_model_for_kbit_training`); LoRA: the `trainable` fp32 adapter
    parameters. FSDP gathers its blocks in bf16 already (`fsdp_unsharded_bytes`).
    """
    compute = DTYPE_BYTES[req.compute_dtype]
    if compute >= 4:
        return 0
    lm_head = arch.vocab_size * arch.hidden_size
    if req.method == "full":
        return 0 if fsdp_shards(req) > 1 else (_linear_elements(arch) + lm_head) * compute
    if req.method == "qlora":
        return lm_head * compute
    return trainable * compute


def dequantization_buffer_bytes(arch: Architecture, req: PlanRequest) -> int:
    """QLoRA: `MatMul4Bit`/8-bit matmuls dequantize one weight at a time to the compute dtype — the largest
    linear's worth."""
    if req.method != "qlora":
        return 0
    return max(m.weight_elements for m in linear_modules(arch)) * DTYPE_BYTES[req.compute_dtype]


def parallelism(req: PlanRequest) -> Parallelism:
    """How the ranks share the model — the decision the trainer configures (kubetune.planning.parallelism)."""
    return decide(req.method, req.world_size, gradient_checkpointing=req.gradient_checkpointing)


def fsdp_shards(req: PlanRequest) -> int:
    """How many ways weights, gradients and optimizer states are split: FSDP full-shard over every GPU for a
    multi-GPU full fine-tune; 1 otherwise (LoRA/QLoRA run data parallel, each GPU holding all of them)."""
    return parallelism(req).shards


def _layer_params(arch: Architecture) -> int:
    per = sum(m.weight_elements * m.count for m in linear_modules(arch))
    return per + arch.norms_per_layer * arch.hidden_size


def fsdp_unsharded_bytes(arch: Architecture, req: PlanRequest) -> int:
    """FSDP full-shard: what is gathered unsharded in the compute dtype — the root unit (embeddings, lm_head)
    with its gradient, two blocks (current + prefetched) and one block's gradient before reduce-scatter."""
    if fsdp_shards(req) == 1:
        return 0
    h = arch.hidden_size
    root = arch.vocab_size * h * (1 if arch.tie_embeddings else 2) + h
    return (2 * root + 3 * _layer_params(arch)) * DTYPE_BYTES[req.compute_dtype]


def ddp_bucket_bytes(req: PlanRequest, gradients: int) -> int:
    """LoRA/QLoRA on more than one GPU (data parallel): DDP's gradient buckets, a copy of the gradients."""
    return gradients if parallelism(req).replicated else 0


def dpo_reference_bytes(req: PlanRequest, base_weights: int) -> int:
    """DPO's reference model (before FSDP sharding): a frozen second copy of the base weights for
    `dpo_reference="base"` and for every full fine-tune (no adapter to disable); 0 for the implicit
    reference (the policy with its adapter disabled) and for SFT."""
    if req.kind == "dpo" and (req.method == "full" or req.dpo_reference == "base"):
        return base_weights
    return 0


# ---- runtime overhead: outside `torch.cuda.max_memory_allocated` ----------------------------------


def nccl_bytes(req: PlanRequest) -> int:
    """NCCL's communicator buffers, when more than one GPU takes part."""
    return NCCL_BYTES if req.world_size > 1 else 0


def fragmentation_bytes(allocated: int) -> int:
    """The caching allocator's slack on top of the `allocated` peak."""
    return int(FRAGMENTATION_FRACTION * allocated)


def runtime_overhead_bytes(req: PlanRequest, allocated: int) -> int:
    """CUDA context (a CPU job: the trainer process itself) + NCCL + allocator slack: what the device
    loses besides the tensors of the `allocated` peak."""
    context = CPU_PROCESS_BYTES if req.cpu_only else CUDA_CONTEXT_BYTES
    return context + nccl_bytes(req) + fragmentation_bytes(allocated)


# ---- the estimate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ParamTerms:
    """What depends only on the model, the method and the optimizer (before FSDP sharding)."""

    params_total: int
    trainable: int
    base_weights: int
    optimizer_states: int
    step_temporaries: int


@lru_cache(maxsize=1024)
def _param_terms(
    arch: Architecture,
    method: Method,
    targets: tuple[LinearModule, ...],
    lora_r: int,
    optimizer: Optimizer,
    bits: int,
    double_quant: bool,
    compute_dtype: ComputeDtype,
) -> _ParamTerms:
    """Cached on the fields they read: the suggestion search re-plans variants that differ in batch or GPUs."""
    req = PlanRequest(
        model=arch.name,
        method=method,
        lora_r=lora_r,
        optimizer=optimizer,
        quantization_bits=bits,
        double_quant=double_quant,
        compute_dtype=compute_dtype,
    )
    shapes = trainable_tensor_shapes(arch, req, targets)
    param_bytes = TRAINABLE_PARAM_BYTES[method]
    return _ParamTerms(
        params_total=param_count(arch),
        trainable=sum(_elements(s) for s in shapes),
        base_weights=base_weight_bytes(arch, req),
        optimizer_states=optimizer_state_bytes(optimizer, shapes, param_bytes),
        step_temporaries=optimizer_step_transient_bytes(optimizer, shapes, param_bytes),
    )


@dataclass(frozen=True)
class MemoryTerms:
    """Every term of one request, in bytes per GPU (FSDP's share of what it shards)."""

    params_total: int
    params_trainable: int
    weights: int
    trainable_params: int
    gradients: int
    gradients_at_backward: int
    optimizer_states: int
    optimizer_step_temporaries: int
    activations: int
    activation_parts: Mapping[str, float]
    logits: int
    autocast_weight_copies: int
    dequantization_buffer: int
    fsdp_unsharded_params: int
    ddp_gradient_buckets: int
    reference_model: int


def memory_terms(req: PlanRequest, arch: Architecture, targets: tuple[LinearModule, ...]) -> MemoryTerms:
    """Each term from its function; FSDP divides weights, gradients, optimizer states and the reference."""
    p = _param_terms(
        arch,
        req.method,
        targets,
        req.lora_r,
        req.optimizer,
        req.quantization_bits,
        req.double_quant,
        req.compute_dtype,
    )
    shards = fsdp_shards(req)
    gradients = gradient_bytes(req, p.trainable) // shards
    parts = activation_bytes(arch, req, targets)
    return MemoryTerms(
        params_total=p.params_total,
        params_trainable=p.trainable,
        weights=p.base_weights // shards,
        trainable_params=adapter_bytes(req, p.trainable),
        gradients=gradients,
        gradients_at_backward=gradients_at_backward_bytes(arch, req, p.trainable) // shards,
        optimizer_states=p.optimizer_states // shards,
        optimizer_step_temporaries=p.step_temporaries // shards,
        activations=int(sum(parts.values())),
        activation_parts=parts,
        logits=logits_bytes(arch, req),
        autocast_weight_copies=autocast_copy_bytes(arch, req, p.trainable),
        dequantization_buffer=dequantization_buffer_bytes(arch, req),
        fsdp_unsharded_params=fsdp_unsharded_bytes(arch, req),
        ddp_gradient_buckets=ddp_bucket_bytes(req, gradients),
        reference_model=dpo_reference_bytes(req, p.base_weights) // shards,
    )


def forward_backward_moment(t: MemoryTerms) -> dict[str, int]:
    """What is resident at the start of backward; terms that are 0 for this request are left out unless
    every request has them."""
    moment = {
        "weights": t.weights,
        "trainable_params": t.trainable_params,
        "gradients": t.gradients_at_backward,
        "optimizer_states": t.optimizer_states,
        "activations": t.activations,
        "logits": t.logits,
        "reference_model": t.reference_model,
    }
    optional = {
        "autocast_weight_copies": t.autocast_weight_copies,
        "dequantization_buffer": t.dequantization_buffer,
        "fsdp_unsharded_params": t.fsdp_unsharded_params,
        "ddp_gradient_buckets": t.ddp_gradient_buckets,
    }
    moment.update((name, value) for name, value in optional.items() if value)
    return moment


def optimizer_step_moment(t: MemoryTerms) -> dict[str, int]:
    """What is resident during `optimizer.step()`: every gradient and the optimizer's temporaries, no
    activations."""
    moment = {
        "weights": t.weights,
        "trainable_params": t.trainable_params,
        "gradients": t.gradients,
        "optimizer_states": t.optimizer_states,
        "optimizer_step_temporaries": t.optimizer_step_temporaries,
        "activations": 0,
        "logits": 0,
        "reference_model": t.reference_model,
    }
    if t.ddp_gradient_buckets:
        moment["ddp_gradient_buckets"] = t.ddp_gradient_buckets
    return moment


def _notes(
    req: PlanRequest,
    arch: Architecture,
    targets: tuple[LinearModule, ...],
    unknown: tuple[str, ...],
    phase: str,
) -> tuple[str, ...]:
    """The assumptions that shaped this estimate, for the user."""
    notes: list[str] = []
    if req.method != "full":
        if unknown:
            notes.append(
                f"target modules {', '.join(unknown)} are not linear layers of {arch.name} "
                f"(it has {', '.join(m.name for m in linear_modules(arch))}); ignored"
            )
        if not targets:
            notes.append("no LoRA target matched: nothing would train")
    if req.kind == "dpo":
        if req.method == "full" and req.dpo_reference == "implicit":
            notes.append("a full fine-tune has no adapter to disable: DPO's reference is a frozen copy")
        elif req.method == "full" or req.dpo_reference == "base":
            notes.append("DPO reference: a second copy of the base weights")
        else:
            notes.append(
                "DPO reference: the policy with its adapter disabled (no extra weights; its no-grad forward "
                "runs before the policy's and stays below this peak)"
            )
    if req.method == "qlora":
        notes.append(
            f"{req.quantization_bits}-bit base: embeddings, lm_head and norms stay unquantized, in fp32 "
            "(prepare_model_for_kbit_training)"
        )
    if req.method == "full":
        notes.append(
            "full fine-tune: fp32 weights, gradients and optimizer states with bf16 autocast"
            if DTYPE_BYTES[req.compute_dtype] < 4
            else "full fine-tune in fp32"
        )
        if fsdp_shards(req) > 1:
            world = req.world_size
            notes.append(
                f"FSDP full-shard over {world} GPUs: weights, gradients and optimizer states ÷ {world}"
            )
    if req.optimizer.startswith("paged_"):
        notes.append(
            "paged optimizer: its states are counted here but live in unified memory and can spill to host "
            "RAM under pressure (slower, not an OOM)"
        )
    notes.append(
        f"sequences counted at maxSeqLength {req.max_seq_length} (the longest a batch can pad to); "
        + LOGITS_NOTE
    )
    notes.append(f"peak at the {phase}")
    return tuple(notes)


def _components(t: MemoryTerms, overhead: int, fb_total: int, step_total: int) -> dict[str, int]:
    """Every term regardless of phase (`Estimate.components`)."""
    return {
        "weights": t.weights,
        "trainable_params": t.trainable_params,
        "gradients": t.gradients,
        "optimizer_states": t.optimizer_states,
        "optimizer_step_temporaries": t.optimizer_step_temporaries,
        "activations": t.activations,
        "activations_blocks": int(t.activation_parts["blocks"]),
        "activations_outside_blocks": int(t.activation_parts["outside"]),
        "attention_mask": int(t.activation_parts["mask"]),
        "backward_workspace": int(t.activation_parts["workspace"]),
        "logits": t.logits,
        "autocast_weight_copies": t.autocast_weight_copies,
        "dequantization_buffer": t.dequantization_buffer,
        "fsdp_unsharded_params": t.fsdp_unsharded_params,
        "ddp_gradient_buckets": t.ddp_gradient_buckets,
        "reference_model": t.reference_model,
        "runtime_overhead": overhead,
        "forward_backward_total": fb_total,
        "optimizer_step_total": step_total,
    }


def estimate(req: PlanRequest, arch: Architecture, *, detail: bool = True) -> Estimate:
    """Per-GPU peak memory of `req` on `arch` (no suggestions): the larger of the two moments, plus the
    runtime overhead.

    `detail=False` skips the notes and `components` (the suggestion search needs only the peak).
    """
    targets, unknown = resolve_target_modules(arch, req.target_modules) if req.method != "full" else ((), ())
    terms = memory_terms(req, arch, targets)
    forward_backward, step = forward_backward_moment(terms), optimizer_step_moment(terms)
    fb_total, step_total = sum(forward_backward.values()), sum(step.values())
    if step_total > fb_total:
        phase, chosen = "optimizer step", step
    else:
        phase, chosen = "forward/backward", forward_backward
    allocated = max(fb_total, step_total)
    persistent = terms.weights + terms.trainable_params + terms.optimizer_states + terms.reference_model
    assert persistent <= allocated
    overhead = runtime_overhead_bytes(req, allocated)
    breakdown = {**chosen, "runtime_overhead": overhead}
    return Estimate(
        peak_bytes=sum(breakdown.values()),
        breakdown=breakdown,
        peak_phase=phase,
        params_total=terms.params_total,
        params_trainable=terms.params_trainable,
        notes=_notes(req, arch, targets, unknown, phase) if detail else (),
        components=_components(terms, overhead, fb_total, step_total) if detail else {},
    )
