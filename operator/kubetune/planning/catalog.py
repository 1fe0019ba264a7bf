"""Architecture numbers of the models users fine-tune, and how to recognise them.

Every number is the model's own `config.json` (hidden_size, intermediate_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, head_dim, vocab_size, tie_word_embeddings; Mixtral's
num_local_experts / num_experts_per_tok). `published_params` is the parameter count of the released
safetensors; `tests/unit/planning` checks that the structure below reproduces it, so a typo in a number
fails a test.

A model is recognised by its Hugging Face id (case-insensitive, with or without `hf://`, any
organisation: re-uploads like `unsloth/Meta-Llama-3.1-8B-Instruct` resolve too) or by a short catalog
name (`llama-3-70b`). Suffixes that do not change the architecture (`-Instruct`, `-it`, `-chat`, `-hf`,
`-base`, `-4k`, `-128k`) are ignored.
"""

from __future__ import annotations

import re
from functools import lru_cache

from kubetune.planning.types import Architecture, LinearModule

__all__ = [
    "CATALOG",
    "canonical_name",
    "catalog_names",
    "linear_modules",
    "lookup",
    "param_count",
    "unquantized_param_count",
]


def _arch(
    name: str,
    model_type: str,
    *,
    h: int,
    i: int,
    layers: int,
    heads: int,
    kv: int,
    vocab: int,
    tied: bool,
    head_dim: int | None = None,
    params: int | None = None,
    aliases: tuple[str, ...] = (),
    **extra: int | bool,
) -> Architecture:
    traits: dict[str, dict[str, int | bool]] = {
        "qwen2": {"attention_bias": True},
        "qwen3": {"qk_norm": True},
        "gemma2": {"norms_per_layer": 4, "logit_softcapping": True},
        "phi3": {"fused_qkv": True},
    }
    base = traits.get(model_type, {})
    return Architecture(
        name=name,
        model_type=model_type,
        hidden_size=h,
        intermediate_size=i,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim if head_dim is not None else h // heads,
        vocab_size=vocab,
        tie_embeddings=tied,
        published_params=params,
        hf_ids=aliases,
        **{**base, **extra},  # type: ignore[arg-type]
    )


_LLAMA3_VOCAB = 128256
_QWEN_VOCAB = 151936

CATALOG: tuple[Architecture, ...] = (
    # --- Meta Llama 3 / 3.1 / 3.2 / 3.3 -------------------------------------------------------------
    _arch(
        "llama-3.2-1b",
        "llama",
        h=2048,
        i=8192,
        layers=16,
        heads=32,
        kv=8,
        head_dim=64,
        tied=True,
        params=1_235_814_400,
        vocab=_LLAMA3_VOCAB,
    ),
    _arch(
        "llama-3.2-3b",
        "llama",
        h=3072,
        i=8192,
        layers=28,
        heads=24,
        kv=8,
        head_dim=128,
        tied=True,
        params=3_212_749_824,
        vocab=_LLAMA3_VOCAB,
    ),
    _arch(
        "llama-3-8b",
        "llama",
        h=4096,
        i=14336,
        layers=32,
        heads=32,
        kv=8,
        tied=False,
        params=8_030_261_248,
        aliases=("llama-3.1-8b",),
        vocab=_LLAMA3_VOCAB,
    ),
    _arch(
        "llama-3-70b",
        "llama",
        h=8192,
        i=28672,
        layers=80,
        heads=64,
        kv=8,
        tied=False,
        params=70_553_706_496,
        aliases=("llama-3.1-70b", "llama-3.3-70b"),
        vocab=_LLAMA3_VOCAB,
    ),
    _arch(
        "llama-3.1-405b",
        "llama",
        h=16384,
        i=53248,
        layers=126,
        heads=128,
        kv=8,
        tied=False,
        params=405_853_388_800,
        aliases=("llama-3-405b",),
        vocab=_LLAMA3_VOCAB,
    ),
    # --- Mistral ---------------------------------------------------------------------------------------
    _arch(
        "mistral-7b-v0.1",
        "mistral",
        h=4096,
        i=14336,
        layers=32,
        heads=32,
        kv=8,
        vocab=32000,
        tied=False,
        params=7_241_732_096,
        aliases=("mistral-7b-v0.2",),
    ),
    _arch(
        "mistral-7b",
        "mistral",
        h=4096,
        i=14336,
        layers=32,
        heads=32,
        kv=8,
        vocab=32768,
        tied=False,
        params=7_248_023_552,
        aliases=("mistral-7b-v0.3",),
    ),
    _arch(
        "mixtral-8x7b",
        "mixtral",
        h=4096,
        i=14336,
        layers=32,
        heads=32,
        kv=8,
        vocab=32000,
        tied=False,
        params=46_702_792_704,
        aliases=("mixtral-8x7b-v0.1",),
        num_experts=8,
        experts_per_token=2,
    ),
    # --- Qwen2.5 -------------------------------------------------------------------------------------
    _arch(
        "qwen2.5-0.5b",
        "qwen2",
        h=896,
        i=4864,
        layers=24,
        heads=14,
        kv=2,
        tied=True,
        params=494_032_768,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen2.5-1.5b",
        "qwen2",
        h=1536,
        i=8960,
        layers=28,
        heads=12,
        kv=2,
        tied=True,
        params=1_543_714_304,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen2.5-3b",
        "qwen2",
        h=2048,
        i=11008,
        layers=36,
        heads=16,
        kv=2,
        tied=True,
        params=3_085_938_688,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen2.5-7b",
        "qwen2",
        h=3584,
        i=18944,
        layers=28,
        heads=28,
        kv=4,
        vocab=152064,
        tied=False,
        params=7_615_616_512,
    ),
    _arch(
        "qwen2.5-14b",
        "qwen2",
        h=5120,
        i=13824,
        layers=48,
        heads=40,
        kv=8,
        vocab=152064,
        tied=False,
        params=14_770_033_664,
    ),
    _arch(
        "qwen2.5-32b",
        "qwen2",
        h=5120,
        i=27648,
        layers=64,
        heads=40,
        kv=8,
        vocab=152064,
        tied=False,
        params=32_763_876_352,
    ),
    _arch(
        "qwen2.5-72b",
        "qwen2",
        h=8192,
        i=29568,
        layers=80,
        heads=64,
        kv=8,
        vocab=152064,
        tied=False,
        params=72_706_203_648,
    ),
    # --- Qwen3 (dense) --------------------------------------------------------------------------------
    _arch(
        "qwen3-0.6b",
        "qwen3",
        h=1024,
        i=3072,
        layers=28,
        heads=16,
        kv=8,
        head_dim=128,
        tied=True,
        params=596_049_920,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen3-1.7b",
        "qwen3",
        h=2048,
        i=6144,
        layers=28,
        heads=16,
        kv=8,
        head_dim=128,
        tied=True,
        vocab=_QWEN_VOCAB,
    ),  # card: 1.7B (1.4B non-embedding); the safetensors also store the tied lm_head
    _arch(
        "qwen3-4b",
        "qwen3",
        h=2560,
        i=9728,
        layers=36,
        heads=32,
        kv=8,
        head_dim=128,
        tied=True,
        params=4_022_468_096,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen3-8b",
        "qwen3",
        h=4096,
        i=12288,
        layers=36,
        heads=32,
        kv=8,
        head_dim=128,
        tied=False,
        params=8_190_735_360,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen3-14b",
        "qwen3",
        h=5120,
        i=17408,
        layers=40,
        heads=40,
        kv=8,
        head_dim=128,
        tied=False,
        params=14_768_307_200,
        vocab=_QWEN_VOCAB,
    ),
    _arch(
        "qwen3-32b",
        "qwen3",
        h=5120,
        i=25600,
        layers=64,
        heads=64,
        kv=8,
        head_dim=128,
        tied=False,
        params=32_762_123_264,
        vocab=_QWEN_VOCAB,
    ),
    # --- Gemma 2 ----------------------------------------------------------------------------------------
    _arch(
        "gemma-2-2b",
        "gemma2",
        h=2304,
        i=9216,
        layers=26,
        heads=8,
        kv=4,
        head_dim=256,
        vocab=256000,
        tied=True,
        params=2_614_341_888,
    ),
    _arch(
        "gemma-2-9b",
        "gemma2",
        h=3584,
        i=14336,
        layers=42,
        heads=16,
        kv=8,
        head_dim=256,
        vocab=256000,
        tied=True,
        params=9_241_705_984,
    ),
    _arch(
        "gemma-2-27b",
        "gemma2",
        h=4608,
        i=36864,
        layers=46,
        heads=32,
        kv=16,
        head_dim=128,
        vocab=256000,
        tied=True,
        params=27_227_128_320,
    ),
    # --- Phi-3 ------------------------------------------------------------------------------------------
    _arch(
        "phi-3-mini",
        "phi3",
        h=3072,
        i=8192,
        layers=32,
        heads=32,
        kv=32,
        vocab=32064,
        tied=False,
        params=3_821_079_552,
    ),
    _arch(
        "phi-3-medium",
        "phi3",
        h=5120,
        i=17920,
        layers=40,
        heads=40,
        kv=10,
        vocab=32064,
        tied=False,
        params=13_960_238_080,
    ),
    # --- SmolLM2 ----------------------------------------------------------------------------------------
    _arch(
        "smollm2-135m",
        "llama",
        h=576,
        i=1536,
        layers=30,
        heads=9,
        kv=3,
        vocab=49152,
        tied=True,
        params=134_515_008,
    ),
    _arch(
        "smollm2-360m",
        "llama",
        h=960,
        i=2560,
        layers=32,
        heads=15,
        kv=5,
        vocab=49152,
        tied=True,
        params=361_821_120,
    ),
    _arch(
        "smollm2-1.7b",
        "llama",
        h=2048,
        i=8192,
        layers=24,
        heads=32,
        kv=32,
        vocab=49152,
        tied=True,
        params=1_711_376_384,
    ),
)

# Name tokens that never change the architecture: chat/instruct variants, context-length variants of
# Phi-3 (4k/128k share the weights' shapes), re-uploads' quantization suffixes (`-bnb-4bit`).
_NOISE_TOKENS = frozenset(
    {
        "instruct",
        "chat",
        "it",
        "hf",
        "base",
        "4k",
        "128k",
        "8k",
        "meta",
        "bnb",
        "4bit",
        "8bit",
        "awq",
        "gptq",
        "fp8",
    }
)
_VERSION_SUFFIX = re.compile(r"@[^/]*$")


def canonical_name(model: str) -> str:
    """`hf://meta-llama/Meta-Llama-3-70B-Instruct` → `llama-3-70b`; `Qwen/Qwen2.5-7B` → `qwen2.5-7b`."""
    text = model.strip().lower()
    for prefix in ("hf://", "https://huggingface.co/", "huggingface.co/"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = _VERSION_SUFFIX.sub("", text).rstrip("/")
    text = text.rsplit("/", 1)[-1].replace("_", "-")
    tokens = [t for t in text.split("-") if t and t not in _NOISE_TOKENS]
    return "-".join(tokens)


def _build_index() -> dict[str, Architecture]:
    index: dict[str, Architecture] = {}
    for arch in CATALOG:
        for key in (arch.name, *arch.hf_ids):
            canon = canonical_name(key)
            if canon in index:  # pragma: no cover - guarded by a unit test
                raise RuntimeError(f"catalog name {canon!r} is ambiguous")
            index[canon] = arch
    return index


_INDEX = _build_index()


def catalog_names() -> tuple[str, ...]:
    """The short names `spec.baseModel.architecture` accepts (aliases included)."""
    return tuple(sorted(_INDEX))


def lookup(name: str) -> Architecture | None:
    """The catalog entry for an HF id or catalog name, or None."""
    return _INDEX.get(canonical_name(name))


@lru_cache(maxsize=256)
def linear_modules(arch: Architecture) -> tuple[LinearModule, ...]:
    """The linear layers of one decoder block, named as in the HF implementation (what peft targets)."""
    h, i = arch.hidden_size, arch.intermediate_size
    if arch.fused_qkv:  # Phi-3
        attention: tuple[LinearModule, ...] = (
            LinearModule("qkv_proj", h, arch.q_dim + 2 * arch.kv_dim, bias=arch.attention_bias),
            LinearModule("o_proj", arch.q_dim, h),
        )
        mlp: tuple[LinearModule, ...] = (
            LinearModule("gate_up_proj", h, 2 * i),
            LinearModule("down_proj", i, h),
        )
    else:
        attention = (
            LinearModule("q_proj", h, arch.q_dim, bias=arch.attention_bias),
            LinearModule("k_proj", h, arch.kv_dim, bias=arch.attention_bias),
            LinearModule("v_proj", h, arch.kv_dim, bias=arch.attention_bias),
            LinearModule("o_proj", arch.q_dim, h),
        )
        if arch.is_moe:  # Mixtral names: w1 = gate, w3 = up, w2 = down, one set per expert
            e = arch.num_experts
            mlp = (
                LinearModule("w1", h, i, count=e, expert=True),
                LinearModule("w3", h, i, count=e, expert=True),
                LinearModule("w2", i, h, count=e, expert=True),
            )
        else:
            mlp = (
                LinearModule("gate_proj", h, i),
                LinearModule("up_proj", h, i),
                LinearModule("down_proj", i, h),
            )
    return attention + mlp


@lru_cache(maxsize=256)
def unquantized_param_count(arch: Architecture) -> int:
    """Parameters outside the decoder blocks' linear weights: embeddings, lm_head, norms, biases, router.

    bitsandbytes leaves exactly these in floating point (it replaces `nn.Linear` weights only, and never
    the output projection `lm_head`).
    """
    h = arch.hidden_size
    embed = arch.vocab_size * h
    lm_head = 0 if arch.tie_embeddings else arch.vocab_size * h
    per_layer = arch.norms_per_layer * h
    per_layer += sum(m.out_features * m.count for m in linear_modules(arch) if m.bias)
    if arch.qk_norm:
        per_layer += 2 * arch.head_dim
    if arch.is_moe:
        per_layer += h * arch.num_experts  # the router (`gate`): hidden → experts
    final_norm = h
    return embed + lm_head + arch.num_layers * per_layer + final_norm


@lru_cache(maxsize=256)
def param_count(arch: Architecture) -> int:
    """Total parameters (tied embeddings counted once), as `sum(p.numel() for p in model.parameters())`."""
    linear = sum(m.weight_elements * m.count for m in linear_modules(arch)) * arch.num_layers
    return linear + unquantized_param_count(arch)
