"""Sanity verdicts from issue #3, the breakdown's invariants, and the JSON contract."""

import io
import json

import pytest

from kubetune.cli.plan import plan_main_from_request, render_plan_text
from kubetune.planning import CannotPlan, PlanRequest, lookup, parse_quantity, plan
from kubetune.planning.memory import estimate

GiB = 2**30
GPU80 = parse_quantity("80Gi")


def test_70b_full_on_one_80gib_gpu_does_not_fit_and_suggests_qlora() -> None:
    p = plan(
        PlanRequest(model="hf://meta-llama/Meta-Llama-3-70B-Instruct", method="full", gpu_memory_bytes=GPU80)
    )
    assert not p.fits
    assert p.peak_bytes > 1.0 * 2**40  # ≥ 16 bytes/param for 70.6B params
    best = p.best_suggestion
    assert best is not None and best.change == {"method": "qlora"}
    assert 40 * GiB <= best.peak_bytes <= 60 * GiB
    assert p.suggestions[0] is best
    assert "needs ~1.3 TiB per GPU; 80 GiB available; method qlora would need ~" in p.summary()


def test_70b_qlora_r16_seq2048_batch1_checkpointing_fits() -> None:
    p = plan(
        PlanRequest(
            model="meta-llama/Llama-3.3-70B-Instruct",
            method="qlora",
            lora_r=16,
            max_seq_length=2048,
            batch_size=1,
            gradient_checkpointing=True,
            gpu_memory_bytes=GPU80,
        )
    )
    assert p.fits and p.suggestions == ()
    assert 35 * GiB < p.breakdown["weights"] < 45 * GiB  # 68.5B × ~0.52 B + 2.1B fp32 unquantized


def test_8b_lora_bf16_fits() -> None:
    p = plan(PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", method="lora", gpu_memory_bytes=GPU80))
    assert p.fits
    assert p.breakdown["weights"] == 8_030_261_248 * 2  # bf16 base


def test_405b_qlora_on_one_gpu_does_not_fit() -> None:
    p = plan(PlanRequest(model="meta-llama/Llama-3.1-405B-Instruct", method="qlora", gpu_memory_bytes=GPU80))
    assert not p.fits
    assert p.best_suggestion is None
    assert "no single change fits" in p.summary()


def test_unknown_model_cannot_plan_and_names_the_field() -> None:
    with pytest.raises(CannotPlan) as info:
        plan(PlanRequest(model="hf://acme/medbot-13b"))
    assert info.value.field == "spec.baseModel.architecture"
    assert "spec.baseModel.architecture" in str(info.value)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("kind", ["sft", "dpo"])
@pytest.mark.parametrize("world", [(1, 1), (8, 2)])
def test_breakdown_sums_to_peak(method: str, kind: str, world: tuple[int, int]) -> None:
    p = plan(PlanRequest(model="qwen2.5-7b", method=method, kind=kind, gpus=world[0], nodes=world[1]))  # type: ignore[arg-type]
    assert sum(p.breakdown.values()) == p.peak_bytes
    assert list(p.breakdown)[:2] == ["weights", "trainable_params"]
    assert p.breakdown["runtime_overhead"] > 0


def test_memory_grows_with_batch_and_sequence_and_shrinks_with_checkpointing() -> None:
    arch = lookup("llama-3-8b")
    assert arch is not None

    def peak(**kw: object) -> int:
        return estimate(PlanRequest(model="x", method="lora", **kw), arch).peak_bytes  # type: ignore[arg-type]

    assert peak(batch_size=1) < peak(batch_size=2) < peak(batch_size=4)
    assert peak(max_seq_length=1024) < peak(max_seq_length=2048) < peak(max_seq_length=4096)
    assert peak(gradient_checkpointing=True) < peak(gradient_checkpointing=False)
    assert peak(attention="sdpa", max_seq_length=4096) < peak(attention="eager", max_seq_length=4096)


def test_methods_order_and_quantization() -> None:
    arch = lookup("llama-3-8b")
    assert arch is not None
    w = {m: estimate(PlanRequest(model="x", method=m), arch).breakdown["weights"] for m in ("qlora", "lora")}
    assert w["qlora"] < w["lora"] / 2
    nf4 = estimate(PlanRequest(model="x", method="qlora"), arch).components["weights"]
    int8 = estimate(PlanRequest(model="x", method="qlora", quantization_bits=8), arch).components["weights"]
    no_dq = estimate(PlanRequest(model="x", method="qlora", double_quant=False), arch).components["weights"]
    assert nf4 < no_dq < int8


def test_dpo_doubles_sequences_and_base_reference_adds_weights() -> None:
    arch = lookup("llama-3-8b")
    assert arch is not None
    sft = estimate(PlanRequest(model="x", kind="sft"), arch)
    dpo = estimate(PlanRequest(model="x", kind="dpo"), arch)
    base = estimate(PlanRequest(model="x", kind="dpo", dpo_reference="base"), arch)
    assert dpo.components["logits"] == 2 * sft.components["logits"]
    assert dpo.components["reference_model"] == 0
    assert base.components["reference_model"] == base.components["weights"]


def test_fsdp_shards_full_fine_tune_states() -> None:
    arch = lookup("llama-3-70b")
    assert arch is not None
    one = estimate(PlanRequest(model="x", method="full"), arch)
    sixteen = estimate(PlanRequest(model="x", method="full", gpus=8, nodes=2), arch)
    assert sixteen.components["optimizer_states"] == one.components["optimizer_states"] // 16
    assert sixteen.components["fsdp_unsharded_params"] > 0


def test_suggestions_change_paths_and_batch_halving() -> None:
    p = plan(
        PlanRequest(
            model="llama-3-8b", method="lora", batch_size=16, max_seq_length=4096, gpu_memory_bytes=GPU80
        )
    )
    assert not p.fits
    halving = [s for s in p.suggestions if "training.batchSize" in s.change]
    assert halving and halving[0].fits
    change = halving[0].change
    assert change["training.batchSize"] * change["training.gradientAccumulationSteps"] == 16
    for s in p.suggestions:
        assert s.peak_bytes > 0 and s.change


def test_to_dict_contract_and_cli_exit_codes() -> None:
    req = PlanRequest(model="llama-3-70b", method="full")
    d = plan(req).to_dict()
    assert {"fits", "peakBytes", "gpuMemoryBytes", "breakdown", "headroomBytes", "suggestions"} <= set(d)
    assert d["headroomBytes"] == d["gpuMemoryBytes"] - d["peakBytes"]
    assert set(d["suggestions"][0]) == {"description", "change", "peakBytes", "fits"}
    json.dumps(d)

    out = io.StringIO()
    assert plan_main_from_request(req, output="json", stream=out) == 2
    assert json.loads(out.getvalue())["fits"] is False
    out = io.StringIO()
    assert plan_main_from_request(PlanRequest(model="llama-3-70b"), output="text", stream=out) == 0
    assert "FITS" in out.getvalue() and "base weights" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert plan_main_from_request(PlanRequest(model="acme/x"), stream=out, err=err) == 1
    assert "spec.baseModel.architecture" in err.getvalue()


def test_text_rendering_has_breakdown_and_verdict() -> None:
    text = render_plan_text(plan(PlanRequest(model="llama-3-70b", method="full")))
    assert "DOES NOT FIT" in text and "optimizer states" in text and "suggestions" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "prefix"),
        ("batch_size", 0),
        ("quantization_bits", 3),
        ("optimizer", "sgd"),
        ("lora_dropout", 1.0),
    ],
)
def test_request_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        PlanRequest(model="llama-3-8b", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arch_name", ["phi-3-mini", "mixtral-8x7b", "gemma-2-9b", "qwen3-8b", "smollm2-135m"]
)
def test_every_family_plans(arch_name: str) -> None:
    for method in ("qlora", "lora", "full"):
        p = plan(PlanRequest(model=arch_name, method=method))  # type: ignore[arg-type]
        assert p.peak_bytes > p.breakdown["weights"] > 0


def test_explicit_target_modules() -> None:
    arch = lookup("llama-3-8b")
    assert arch is not None
    qv = estimate(PlanRequest(model="x", target_modules=("q_proj", "v_proj")), arch)
    # r × (in + out) per module × 32 layers: q 16×(4096+4096), v 16×(4096+1024)
    assert qv.params_trainable == 32 * 16 * (8192 + 5120)
    short = estimate(PlanRequest(model="x", target_modules=("q", "v")), arch)
    assert short.params_trainable == qv.params_trainable
    phi = estimate(PlanRequest(model="x", target_modules=("q_proj",)), lookup("phi-3-mini"))  # type: ignore[arg-type]
    assert phi.params_trainable > 0  # q_proj maps onto the fused qkv_proj
    odd = estimate(PlanRequest(model="x", target_modules=("foo",)), arch)
    assert any("foo" in n for n in odd.notes)
