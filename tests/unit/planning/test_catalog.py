import json
from pathlib import Path

import pytest

from kubetune.planning import CATALOG, CannotPlan, catalog_names, lookup, param_count, read_config_dir
from kubetune.planning.catalog import canonical_name, linear_modules
from kubetune.planning.hfconfig import config_from_architecture
from kubetune.planning.planner import resolve_architecture


# Entries without a published parameter count are checked against their config.json elsewhere.
@pytest.mark.parametrize("arch", [a for a in CATALOG if a.published_params is not None], ids=lambda a: a.name)
def test_structure_reproduces_published_parameter_count(arch) -> None:  # type: ignore[no-untyped-def]
    assert abs(param_count(arch) - arch.published_params) <= 0.01 * arch.published_params


def test_catalog_covers_the_issue_list() -> None:
    wanted = [
        "llama-3.2-1b",
        "llama-3.2-3b",
        "llama-3-8b",
        "llama-3.1-8b",
        "llama-3-70b",
        "llama-3.1-70b",
        "llama-3.3-70b",
        "llama-3.1-405b",
        "mistral-7b",
        "mixtral-8x7b",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-3b",
        "qwen2.5-7b",
        "qwen2.5-14b",
        "qwen2.5-32b",
        "qwen2.5-72b",
        "qwen3-0.6b",
        "qwen3-1.7b",
        "qwen3-4b",
        "qwen3-8b",
        "qwen3-14b",
        "qwen3-32b",
        "gemma-2-2b",
        "gemma-2-9b",
        "gemma-2-27b",
        "phi-3-mini",
        "phi-3-medium",
        "smollm2-135m",
        "smollm2-360m",
        "smollm2-1.7b",
    ]
    missing = [n for n in wanted if lookup(n) is None]
    assert missing == []
    assert set(wanted) <= set(catalog_names())


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("hf://meta-llama/Meta-Llama-3-70B-Instruct", "llama-3-70b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3-8b"),
        ("META-LLAMA/LLAMA-3.3-70B-INSTRUCT", "llama-3-70b"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m"),
        ("hf://HuggingFaceTB/SmolLM2-1.7B", "smollm2-1.7b"),
        ("llama-3-70b", "llama-3-70b"),
        ("qwen2.5-7b", "qwen2.5-7b"),
        ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
        ("Qwen/Qwen3-8B-Base", "qwen3-8b"),
        ("google/gemma-2-9b-it", "gemma-2-9b"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi-3-mini"),
        ("microsoft/Phi-3-medium-128k-instruct", "phi-3-medium"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b"),
        ("mistralai/Mistral-7B-v0.1", "mistral-7b-v0.1"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "llama-3-8b"),
        ("hf://meta-llama/Llama-3.2-1B-Instruct@main", "llama-3.2-1b"),
    ],
)
def test_lookup_by_hf_id_and_short_name(model: str, name: str) -> None:
    arch = lookup(model)
    assert arch is not None, canonical_name(model)
    assert arch.name == name


def test_unknown_model_is_none() -> None:
    assert lookup("acme/medbot-13b") is None


def test_all_linear_per_architecture() -> None:
    names = lambda n: [m.name for m in linear_modules(lookup(n))]  # noqa: E731
    assert names("llama-3-8b") == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert names("phi-3-mini") == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert names("mixtral-8x7b") == ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w3", "w2"]


def _write_config(folder: Path, **values: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    }
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_local_config_json_gives_the_same_numbers(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "my-model")
    arch = read_config_dir(folder)
    assert arch.name == "my-model"
    assert param_count(arch) == param_count(lookup("llama-3-8b"))  # type: ignore[arg-type]
    assert resolve_architecture(f"file://{folder}").hidden_size == 4096


def test_pvc_uri_reads_the_mounted_config(tmp_path: Path) -> None:
    _write_config(tmp_path / "mnt" / "models" / "base", model_type="qwen2", tie_word_embeddings=True)
    arch = resolve_architecture(
        "pvc://models-pvc/models/base", pvc_mounts={"models-pvc": str(tmp_path / "mnt")}
    )
    assert arch.attention_bias and arch.tie_embeddings


def test_hint_wins_and_unknown_hint_lists_names() -> None:
    assert resolve_architecture("acme/medbot-v2", "llama-3.1-8b").name == "llama-3-8b"
    with pytest.raises(CannotPlan, match="llama-3-70b"):
        resolve_architecture("acme/medbot-v2", "llama-9-1t")


def test_unreadable_local_model_cannot_plan(tmp_path: Path) -> None:
    with pytest.raises(CannotPlan, match=r"spec\.baseModel\.architecture"):
        resolve_architecture(f"file://{tmp_path}/missing")
    with pytest.raises(CannotPlan, match=r"spec\.baseModel\.architecture"):
        resolve_architecture("pvc://claim/models/base")


def _as_config_json(arch) -> dict:  # type: ignore[no-untyped-def]
    config = config_from_architecture(arch)
    if arch.model_type == "gemma2":
        config["final_logit_softcapping"] = 30.0
    return config


@pytest.mark.parametrize("arch", CATALOG, ids=lambda a: a.name)
def test_config_json_reader_agrees_with_the_catalog(arch) -> None:  # type: ignore[no-untyped-def]
    from kubetune.planning import architecture_from_config

    read = architecture_from_config(_as_config_json(arch), name=arch.name)
    assert read == arch.__class__(**{**arch.__dict__, "published_params": None, "hf_ids": ()})
    assert param_count(read) == param_count(arch)
