"""Step 1 (the data preflight) and the conversion of checked records into TRL datasets.

The preflight (``kubetune.data.preflight``) runs before any model is loaded: bad data fails the
job with ``DataInvalid`` / ``InsufficientData`` in seconds, without holding a GPU for the load. It
writes the cleaned (PII-redacted, deduplicated) train and validation splits under
``<output>/kubetune/data/``; training reads only those.

Formats → TRL (with a chat template on the tokenizer; without one, plain text prompts):

- instruction ``{instruction, input?, output}`` → conversational prompt/completion
  (user: instruction + input, assistant: output), loss on the completion only;
- chat ``{messages}`` → ``messages`` with ``assistant_only_loss`` when the template marks
  assistant turns with ``{% generation %}``; else prompt (all turns before the last) / completion
  (the last assistant turn);
- prompt-completion ``{prompt, completion}`` → as is (plain strings, no template);
- preference ``{prompt, chosen, rejected}`` → conversational when the strings meet a chat template;
  chat-form records pass through; an implicit prompt is extracted.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from kubetune.api.enums import Reason
from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.status import DataSummary
from kubetune_trainer.failures import TrainerFailure
from kubetune_trainer.reporting import Log


def summary(report: Any) -> DataSummary:
    split = getattr(report, "split", None)
    return DataSummary(
        examples=report.examples, train=split.train if split else None, validation=split.validation if split else None,
        invalid=report.invalid, duplicates=report.duplicates, pii=dict(report.pii) or None,
        truncated_fraction=(report.lengths or {}).get("truncated_share"),
    )


def run_preflight(*, dataset: Path, spec: FineTuneJobSpec | PreferenceAlignmentSpec, out_dir: Path, golden: Path | None,
                  log: Log) -> tuple[Any, Path, Path | None]:
    """Check the data; raise TrainerFailure(DataInvalid|InsufficientData) when it fails. Returns the
    report and the cleaned train / validation files."""
    from kubetune.data import preflight

    ds = spec.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    train_out, val_out = out_dir / "train.jsonl", out_dir / "validation.jsonl"
    report = preflight(
        dataset,
        format=str(ds.format),
        min_examples=ds.min_examples,
        pii=str(ds.pii),
        error_policy=str(ds.error_policy),
        max_seq_length=spec.training.max_seq_length,
        validation_split=ds.validation_split,
        seed=spec.training.seed,
        golden_path=golden,
        train_out=train_out,
        validation_out=val_out,
        near_duplicates=ds.near_duplicates,
    )
    with contextlib.suppress(OSError):
        (out_dir / "report.json").write_text(report.to_json())
    for warning in report.warnings:
        log(f"data: {warning}")
    if not report.ok:
        reason = Reason.INSUFFICIENT_DATA if str(report.reason) == Reason.INSUFFICIENT_DATA else Reason.DATA_INVALID
        first = "; ".join(f"line {e.line}: {e.message}" if e.line else e.message for e in report.errors[:3])
        message = report.message + (f" (e.g. {first})" if first and reason == Reason.DATA_INVALID else "")
        raise TrainerFailure(reason, message[:1024], details={"data": report.to_dict()})
    log(f"data: {report.message}")
    validation = val_out if report.split and report.split.validation else None
    return report, train_out, validation


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_marks_generation(tokenizer: Any) -> bool:
    t = getattr(tokenizer, "chat_template", None)
    return isinstance(t, str) and "{% generation %}" in t.replace("{%- generation %}", "{% generation %}")


def _instruction_prompt(r: dict[str, Any]) -> str:
    return r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")


def sft_rows(records: list[dict[str, Any]], fmt: str, tokenizer: Any) -> tuple[list[dict[str, Any]], bool]:
    """TRL SFT rows and whether ``assistant_only_loss`` is needed (chat with generation marks)."""
    chat = has_chat_template(tokenizer)
    if fmt == "instruction":
        if chat:
            return [{"prompt": [{"role": "user", "content": _instruction_prompt(r)}],
                     "completion": [{"role": "assistant", "content": r["output"]}]} for r in records], False
        return [{"prompt": f"### Instruction:\n{_instruction_prompt(r)}\n\n### Response:\n", "completion": r["output"]}
                for r in records], False
    if fmt == "chat":
        if chat and template_marks_generation(tokenizer):
            return [{"messages": r["messages"]} for r in records], True
        if chat:
            return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records], False
        rows = []
        for r in records:
            turns = "".join(f"{m['role']}: {m['content']}\n" for m in r["messages"][:-1])
            rows.append({"prompt": turns + "assistant: ", "completion": r["messages"][-1]["content"]})
        return rows, False
    if fmt == "prompt-completion":
        return [{"prompt": r["prompt"], "completion": r["completion"]} for r in records], False
    raise TrainerFailure(Reason.DATA_INVALID, f"format {fmt!r} is not an SFT format (instruction, chat, prompt-completion)")


def dpo_rows(records: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    chat = has_chat_template(tokenizer)
    rows = []
    for r in records:
        chosen, rejected = r["chosen"], r["rejected"]
        if isinstance(chosen, list):
            row = {"chosen": chosen, "rejected": rejected}
            if "prompt" in r:
                prompt = r["prompt"]
                row["prompt"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            else:
                from trl.data_utils import extract_prompt
                row = extract_prompt(row)
            rows.append(row)
        elif chat:
            rows.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return rows


__all__ = ["dpo_rows", "read_jsonl", "run_preflight", "sft_rows", "summary"]
