"""Architecture numbers from a Hugging Face `config.json` (local `file://` folders, mounted `pvc://` paths).

The same record as the catalog's, so a model the catalog does not know still plans exactly when its
folder is readable: by the CLI for `file://`, by the pod for its mounted volume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubetune.planning.types import Architecture, CannotPlan

__all__ = ["architecture_from_config", "config_from_architecture", "read_config_dir"]

# model_type → structural traits the config does not spell out (read from the HF implementations).
_TRAITS: Mapping[str, Mapping[str, Any]] = {
    "qwen2": {"attention_bias": True},
    "qwen3": {"qk_norm": True},
    "gemma2": {"norms_per_layer": 4, "logit_softcapping": True},
    "gemma3_text": {"norms_per_layer": 4, "qk_norm": True},
    "phi3": {"fused_qkv": True},
}
# `tie_word_embeddings` when the config omits it: each model's own config class default.
_TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gemma3_text", "qwen2_moe"})


def _int(config: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if default is not None:
        return default
    raise CannotPlan(f"config.json has no {keys[0]!r}; set spec.baseModel.architecture to a catalog name")


def architecture_from_config(config: Mapping[str, Any], *, name: str) -> Architecture:
    """Build an `Architecture` from a parsed `config.json` (multimodal configs: their `text_config`)."""
    if isinstance(config.get("text_config"), Mapping) and "hidden_size" not in config:
        config = {**config["text_config"], "tie_word_embeddings": config.get("tie_word_embeddings")}
    model_type = str(config.get("model_type", "llama"))
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    heads = _int(config, "num_attention_heads", "n_head")
    kv_heads = _int(config, "num_key_value_heads", default=heads)
    head_dim = config.get("head_dim")
    tied = config.get("tie_word_embeddings")
    traits = dict(_TRAITS.get(model_type, {}))
    if isinstance(config.get("attention_bias"), bool):
        traits["attention_bias"] = config["attention_bias"]
    if config.get("final_logit_softcapping") is not None and model_type.startswith("gemma"):
        traits["logit_softcapping"] = True
    experts = _int(config, "num_local_experts", "num_experts", default=0)
    return Architecture(
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=_int(config, "intermediate_size", "ffn_dim", default=4 * hidden),
        num_layers=_int(config, "num_hidden_layers", "n_layer", "num_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim if isinstance(head_dim, int) and head_dim > 0 else hidden // heads,
        vocab_size=_int(config, "vocab_size"),
        tie_embeddings=bool(tied) if tied is not None else model_type in _TIED_BY_DEFAULT,
        num_experts=experts,
        experts_per_token=_int(config, "num_experts_per_tok", default=2 if experts else 0),
        **traits,
    )


def config_from_architecture(arch: Architecture) -> dict[str, Any]:
    """The `config.json` keys that describe ``arch``'s shape — the inverse of
    :func:`architecture_from_config` for them (random-weight models of a catalog entry, tests)."""
    config: dict[str, Any] = {
        "model_type": arch.model_type,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tie_embeddings,
    }
    if arch.is_moe:
        config.update(num_local_experts=arch.num_experts, num_experts_per_tok=arch.experts_per_token)
    return config


def read_config_dir(path: str | Path, *, name: str | None = None) -> Architecture:
    """Read `<path>/config.json` (or `path` itself when it is the JSON file)."""
    folder = Path(path)
    file = folder if folder.suffix == ".json" else folder / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CannotPlan(
            f"no config.json at {file}; set spec.baseModel.architecture to a catalog name"
        ) from exc
    except (OSError, ValueError) as exc:
        raise CannotPlan(f"cannot read {file}: {exc}; set spec.baseModel.architecture") from exc
    if not isinstance(config, dict):
        raise CannotPlan(f"{file} is not a JSON object; set spec.baseModel.architecture")
    return architecture_from_config(
        config, name=name or (folder.parent.name if folder.suffix else folder.name)
    )
