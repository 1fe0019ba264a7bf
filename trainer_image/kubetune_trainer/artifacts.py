"""The trained artifact: a PEFT adapter (safetensors) or full weights, the tokenizer and a model card,
written to a temporary folder and renamed into place — a reader never sees half an artifact.

Layout under the output folder: ``adapter/`` (lora, qlora) or ``model/`` (full); ``merged/`` when
merged weights are asked for (LoRA on a 16/32-bit base only: a QLoRA adapter belongs to the 4-bit
base it was trained on, and merged onto full-precision weights it loses much of its effect).

An s3:// output is written locally first (checkpoints stay local) and uploaded (:func:`upload`) at the end:
each folder to the same name below the output URI, its kubetune-manifest.json last.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.status import CheckpointSelection, DataSummary
from kubetune.api.trainer_contract import TrainerConfig
from kubetune.gates import Decision


def publish(tmp: Path, final: Path) -> Path:
    """Rename a finished folder into place, replacing an older one."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{int(time.time() * 1000)}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def staging(output: Path, name: str) -> Path:
    tmp = output / f".{name}.partial-{int(time.time() * 1000)}"
    for stale in output.glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# On CPUs with AVX512-BF16, bitsandbytes runs an eval-mode, no-grad forward of a 4-bit layer through
# a fused kernel that rounds activations and block scales to bf16 whatever bnb_4bit_compute_dtype
# says: outputs differ from the training-time forward by bf16 rounding (tests/trainer/test_sft.py
# measures it), and training on afterwards gets wrong gradients (bnb_guard.py). The card tells users
# how to keep the kernel the adapter was trained and evaluated with; the test runs this snippet.
CPU_KERNEL_PIN = [
    "# CPUs with AVX512-BF16: keep the fp32 kernel the adapter was trained and evaluated with",
    "# (bitsandbytes would otherwise compute eval-mode 4-bit layers in bf16). No effect on GPUs.",
    "for module in base.modules():",
    '    if hasattr(module, "support_avx512bf16_for_cpu"):',
    "        module.support_avx512bf16_for_cpu = False",
]


def upload(config: TrainerConfig, folders: list[Path | None], *, log: Any) -> None:
    """An s3:// output: each exported folder uploaded below it (kubetune_trainer.storage.publish_folder:
    objects first, the manifest last). Nothing to do for a local or PVC output."""
    from kubetune.api.manifest import manifest_of
    from kubetune_trainer.storage import is_s3, publish_folder

    if not is_s3(config.output_uri):
        return
    for folder in folders:
        if folder is not None:
            uri = config.uri_of(folder)
            assert uri is not None, f"{folder} is not below the output folder {config.sources.output}"
            publish_folder(folder, uri, manifest_of(folder), log=log)


def _kubetune_version() -> str:
    from kubetune import __version__

    return __version__


def model_card(*, config: TrainerConfig, spec: FineTuneJobSpec | PreferenceAlignmentSpec, method: str,
               data: DataSummary | None, metrics: dict[str, float], adapter_from: str | None,
               decision: Decision | None = None, checkpoints: CheckpointSelection | None = None) -> str:
    """README.md: base model and which base the adapter belongs to, method, data with each input's
    sha256 and the base model's revision, hyperparameters, evaluation and gates, the checkpoint
    evaluations and which step these weights are (spec.evaluation.checkpoints), kubetune version."""
    base = config.sources.model
    kind = config.job.kind
    lines = [
        "---",
        f"base_model: {spec.base_model.uri if spec.base_model else base}",
        "library_name: peft" if method != "full" else "library_name: transformers",
        "tags: [kubetune, " + ("dpo" if config.task == "dpo" else "sft") + f", {method}]",
        "---",
        "",
        f"# {config.job.name}",
        "",
        f"Trained by kubetune {_kubetune_version()} ({kind} `{config.job.namespace}/{config.job.name}`), task "
        f"{'DPO preference alignment' if config.task == 'dpo' else 'supervised fine-tuning'}, method **{method}**.",
        "",
        "## Base model",
        "",
        f"- Base: `{spec.base_model.uri if spec.base_model else base}`"
        + (f" (revision `{config.sources.model_revision}`)" if config.sources.model_revision else ""),
    ]
    if data is not None and data.base_model is not None:
        lines.append(f"- Base model revision: `{data.base_model.revision}`")
    q = spec.quantization if method == "qlora" else None  # resolve() sets it for qlora
    if q is not None:
        scheme = (f"{q.type}, double quant {'on' if q.double_quant else 'off'}" if int(q.bits) == 4
                  else "LLM.int8")  # type and double quant are 4-bit settings
        lines += [
            f"- **This adapter belongs to the {q.bits}-bit quantized base** ({scheme}) it was trained on. Load the base with the same "
            "`BitsAndBytesConfig` and apply the adapter to it; merged onto the full-precision weights "
            "it loses much of its effect (it learned to compensate the quantization error).",
        ]
    elif method == "lora":
        lines.append("- The adapter belongs to the 16/32-bit base; it can be merged into it.")
    if adapter_from:
        revision = f" (revision `{data.adapter.revision}`)" if data is not None and data.adapter is not None else ""
        lines.append(f"- Continued from the adapter `{adapter_from}`{revision}.")
    lines += ["", "## Data", ""]
    if data is not None:
        d = data.model_dump(exclude_none=True, exclude={"inputs", "base_model", "adapter"})
        lines += [f"- {k}: {_fmt(v)}" for k, v in d.items()]
        lines.append(f"- format: {spec.dataset.format}, PII policy: {spec.dataset.pii}")
        if data.inputs:
            lines += ["", "| input | uri | bytes | sha256 |", "|---|---|---|---|"]
            lines += [f"| {f.name} | `{f.uri}` | {f.size} | `{f.sha256}` |" for f in data.inputs]
    lines += ["", "## Hyperparameters", "", "| parameter | value |", "|---|---|"]
    t = spec.training.model_dump(exclude_none=True, mode="json")
    for k, v in t.items():
        lines.append(f"| training.{k} | {_fmt(v)} |")
    if spec.lora is not None and method != "full":
        for k, v in spec.lora.model_dump(mode="json").items():
            lines.append(f"| lora.{k} | {_fmt(v)} |")
    if method == "qlora" and spec.quantization is not None:
        for k, v in spec.quantization.model_dump(mode="json").items():
            lines.append(f"| quantization.{k} | {_fmt(v)} |")
    if isinstance(spec, PreferenceAlignmentSpec):  # the dpo task
        for k, v in spec.dpo.model_dump(mode="json").items():
            lines.append(f"| dpo.{k} | {_fmt(v)} |")
    lines += ["", "## Results", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No evaluation results.")
    if checkpoints is not None:
        lines += ["", "## Checkpoint chosen", "", checkpoint_sentence(checkpoints), ""]
        names = sorted({k for r in checkpoints.evaluations for k in r.metrics if not k.endswith("_base")})
        lines += ["| step | " + " | ".join(names) + " | gates measured |", "|---" * (len(names) + 2) + "|"]
        lines += [f"| {r.step}{' (chosen)' if r.step == checkpoints.chosen_step else ''} | "
                  + " | ".join(_fmt(r.metrics[n]) if n in r.metrics else "–" for n in names)
                  + f" | {'pass' if r.passed else 'fail: ' + ', '.join(r.failed or [])} |" for r in checkpoints.evaluations]
    lines += ["", "## Gates", ""]
    if decision is not None and decision.gates:
        lines += ["| metric | needs | value | verdict |", "|---|---|---|---|"]
        lines += [f"| {g.metric} | {g.op} {_fmt(g.threshold)} | {'not measured' if g.value is None else _fmt(g.value)} "
                  f"| {'pass' if g.passed else 'FAIL'} |" for g in decision.gates]
        lines.append("")
        lines.append(("Every gate passed: promoted to " + f"`{config.promoted_uri}`." if config.promoted_uri
                      else "Every gate passed.") if decision.passed else "Not promoted: " + decision.message)
    else:
        lines.append("No gates configured.")
    lines += ["", "## Use", "", "```python"]
    if method == "full":
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  'model = AutoModelForCausalLM.from_pretrained("PATH/model")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH/model")']
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
        if q is not None:
            bnb = ("BitsAndBytesConfig(load_in_8bit=True)" if int(q.bits) == 8 else
                   f'BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="{q.type}", '
                   f'bnb_4bit_use_double_quant={bool(q.double_quant)}, bnb_4bit_compute_dtype="{q.compute_dtype}")')
            lines += ["from transformers import BitsAndBytesConfig", f"bnb = {bnb}",
                      'base = AutoModelForCausalLM.from_pretrained("BASE", quantization_config=bnb)']
            if int(q.bits) == 4:
                lines += CPU_KERNEL_PIN
        else:
            lines.append('base = AutoModelForCausalLM.from_pretrained("BASE")')
        lines += ['model = PeftModel.from_pretrained(base, "PATH/adapter")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH/adapter")']
    lines += ["```", ""]
    return "\n".join(lines)


def checkpoint_sentence(c: CheckpointSelection) -> str:
    """Which step these weights are and why, in one sentence (model card, `kubetune run`)."""
    early = " (training stopped early: no improvement)" if c.stopped_early else ""
    return (f"These are the weights of step {c.chosen_step} of {c.last_step}{early}, chosen by {c.select_by} among "
            f"{len(c.evaluations)} checkpoint evaluations on a subset of the evaluation sets — {c.reason}. The "
            "results above are the full evaluation of this step.")


def stable_adapter_config(path: Path) -> None:
    """PEFT writes the modules `all-linear` expanded to in set order, which changes with each process'
    string hash seed: sorted, the same adapter always exports to the same bytes (and the same
    manifest, so re-promoting it is recognised as done)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def export(*, model: Any, tokenizer: Any, output: Path, method: str, card: str, extra: dict[str, Any] | None = None,
           state_dict: dict[str, Any] | None = None) -> Path:
    """Write adapter/ (or model/) atomically; returns its final path. `state_dict`: the full weights of
    a sharded (FSDP) model, gathered on rank 0."""
    name = "model" if method == "full" else "adapter"
    tmp = staging(output, name)
    if method == "full":
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(str(tmp), selected_adapters=["default"], safe_serialization=True)
        stable_adapter_config(tmp / "adapter_config.json")
    tokenizer.save_pretrained(str(tmp))
    (tmp / "README.md").write_text(card, encoding="utf-8")
    if extra:
        (tmp / "kubetune.json").write_text(json.dumps(extra, indent=2, sort_keys=True, default=str))
    return publish(tmp, output / name)


def export_merged(*, model: Any, tokenizer: Any, output: Path, method: str, card: str, log: Any) -> Path | None:
    """Merged weights for LoRA on a 16/32-bit base; refused for QLoRA (see the module docstring)."""
    if method != "lora":
        log(f"not writing merged weights for method {method}: "
            + ("a QLoRA adapter belongs to its 4-bit base" if method == "qlora" else "full weights are the artifact"))
        return None
    tmp = staging(output, "merged")
    merged = model.merge_and_unload()
    merged.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / "README.md").write_text(card.replace("library_name: peft", "library_name: transformers"), encoding="utf-8")
    return publish(tmp, output / "merged")


__all__ = ["export", "export_merged", "model_card", "publish", "upload"]
