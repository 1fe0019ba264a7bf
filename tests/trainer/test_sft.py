"""QLoRA, LoRA and full SFT through the entry point on the tiny Llama: real steps, finite logged
loss, weights changed, the saved artifact reloads and reproduces the trained model's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import instruction_records, make_config, sft_manifest, write_jsonl
from safetensors.torch import load_file

from kubetune_trainer.run import run

pytestmark = pytest.mark.trainer


def _card_snippet(artifact: Path) -> str:
    card = (artifact / "README.md").read_text()
    return card.split("## Use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def _load_as_the_card_says(artifact: Path, base: Path):
    """Run the model card's loading snippet as a user would paste it (BASE and PATH filled in)."""
    code = (_card_snippet(artifact).replace('"BASE"', json.dumps(str(base)))
            .replace('"PATH/', json.dumps(f"{artifact.parent}/")[:-1]))
    scope: dict = {}
    exec(compile(code, str(artifact / "README.md"), "exec"), scope)
    return scope["model"]


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["patient reports fever since two days. what should i do?"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**ids).logits.float()


@pytest.mark.parametrize("variant", ["qlora", "qlora-8bit", "lora", "full"])
def test_sft_trains_and_exports(variant: str, tiny_model: Path, tmp_path: Path) -> None:
    method, bits = variant.split("-")[0], 8 if variant.endswith("8bit") else 4
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    manifest = sft_manifest(method)
    if bits == 8:
        manifest["spec"]["quantization"] = {"bits": 8, "computeDtype": "float32"}
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    if method == "qlora":  # the frozen base really is stored in 4 or 8 bits
        import bitsandbytes as bnb

        layer = captured["model"].get_base_model().model.layers[0].self_attn.q_proj.base_layer
        assert isinstance(layer, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)

    steps = [h for h in result.details["trainLog"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in steps)
    assert result.metrics["train.steps"] == 3 and math.isfinite(result.metrics["train.loss"])
    assert result.data is not None and result.data.train + result.data.validation == 40

    artifact = Path(result.artifact)
    assert (artifact / "README.md").exists() and (artifact / "tokenizer_config.json").exists()
    trained = captured["model"]
    before = _logits(trained, captured["tokenizer"])
    if method == "full":
        assert artifact.name == "model"
        base = load_file(str(tiny_model / "model.safetensors"))
        tuned = load_file(str(artifact / "model.safetensors"))
        changed = [k for k in base if not torch.equal(base[k], tuned[k])]
        assert len(changed) > len(base) // 2, "most weights should have moved"
    else:
        assert artifact.name == "adapter"
        weights = load_file(str(artifact / "adapter_model.safetensors"))
        lora_b = [v for k, v in weights.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training must move it"
        if method == "qlora":
            card = (artifact / "README.md").read_text()
            assert f"{bits}-bit quantized base" in card and ("(nf4, double quant on)" in card) == (bits == 4)
            # the card's loading snippet builds the same quantization it was trained on
            assert (f"load_in_{bits}bit=True" in card) and (f"load_in_{12 - bits}bit" not in card)
            assert ('bnb_4bit_compute_dtype="float32"' in card) == (bits == 4)
    # Reloaded as the model card says, on any CPU: the same kernels as in training, the same outputs.
    reloaded = _load_as_the_card_says(artifact, tiny_model)
    after = _logits(reloaded, captured["tokenizer"])
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)

    # the channel: progress.json and the compact termination message
    progress = json.loads((tmp_path / "out" / "kubetune" / "progress.json").read_text())
    assert progress["stage"] == "done" and progress["step"] == 3 and progress["totalSteps"] == 3
    term = (tmp_path / "out" / "termination-log").read_bytes()
    assert len(term) <= 4096 and json.loads(term)["outcome"] == "succeeded"


def test_merged_weights_for_lora_match_the_adapter(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(sft_manifest("lora"), model=tiny_model, dataset=data, output=tmp_path / "out")
    config.merge_adapter = True
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    assert result.merged and (Path(result.merged) / "model.safetensors").exists()
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, result.artifact)
    merged = AutoModelForCausalLM.from_pretrained(result.merged, dtype=torch.float32)
    torch.testing.assert_close(_logits(merged, captured["tokenizer"]), _logits(with_adapter, captured["tokenizer"]),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", ["native-avx512bf16", "portable-bf16"])
def test_qlora_adapter_on_the_cpu_bf16_inference_kernel(kernel: str, tiny_model: Path, tmp_path: Path) -> None:
    """What a user gets who reloads a 4-bit QLoRA adapter WITHOUT the card's kernel pin, on a CPU with
    AVX512-BF16: bitsandbytes repacks the 4-bit weights at the first eval-mode no-grad forward and runs
    a fused kernel that rounds activations and block scales to bf16 (whatever bnb_4bit_compute_dtype
    says). That path is numerically different, not wrong: the adapter itself reloads exactly (the
    trained model on the same kernel gives the same logits), and its distance from the fp32 forward is
    bf16 rounding (unit roundoff 2^-8 of the logits' scale; bounded here at 2^-7), with the same greedy
    tokens.

    The fused kernel is native AVX512-BF16 code and runs only on such CPUs ("native-avx512bf16"); the
    same bf16 arithmetic through bitsandbytes' portable kernels ("portable-bf16": compute dtype bf16)
    runs on every CPU, so the bound is checked everywhere and the real kernel wherever it exists."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kubetune_trainer.bnb_guard import repacked_layers

    real_kernel = kernel == "native-avx512bf16"
    if real_kernel and not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes' fused bf16 kernel cannot run here")
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(sft_manifest("qlora"), model=tiny_model, dataset=data, output=tmp_path / "out")
    captured: dict = {}
    result = run(config, capture=captured, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    tokenizer, trained = captured["tokenizer"], captured["model"]
    fp32 = _logits(trained, tokenizer)  # the kernel the adapter was trained and evaluated with

    def on_bf16_kernel(model):
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = real_kernel  # True: what bitsandbytes sets on such a CPU
                if not real_kernel:
                    m.compute_dtype = torch.bfloat16
        return model

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, quantization_config=quant,
                                                device_map={"": "cpu"})
    reloaded = PeftModel.from_pretrained(on_bf16_kernel(base), result.artifact)
    bf16 = _logits(reloaded, tokenizer)
    assert repacked_layers(reloaded) == (14 if real_kernel else 0)  # 2 layers x 7 projections

    # like with like: the trained model on the same kernel gives the same logits
    torch.testing.assert_close(_logits(on_bf16_kernel(trained), tokenizer), bf16, rtol=1e-4, atol=1e-4)
    # and that kernel differs from fp32 only by bf16 rounding
    scale = fp32.abs().max().item()
    diff = (bf16 - fp32).abs().max().item()
    assert 0 < diff <= 2**-7 * scale, f"bf16 kernel off by {diff:.2e} at logit scale {scale:.2e}"
    assert torch.equal(bf16.argmax(-1), fp32.argmax(-1))
