"""Step 1 (the checked data) and the conversion of checked records into TRL datasets.

The data preflight (``kubetune.data.preflight``) runs before any model is loaded. In a cluster it
runs in a pod of its own with no GPU (``kubetune-trainer --stage preflight``,
:mod:`kubetune_trainer.preflight`), before the GPU Job exists; it writes the cleaned (PII-redacted,
deduplicated) splits where the config's ``sources.checkedData`` says, and training reads them from
there after checking they are that run's files, unchanged (:func:`prepare_data`; no second scan).
A config without ``checkedData`` (from an operator that predates the preflight pod) gets the
preflight here, as the trainer's first step, writing under ``<output>/kubetune/data/``: bad data
still fails with ``DataInvalid`` / ``InsufficientData`` before the model is loaded.

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
from kubetune.api.trainer_contract import TrainerConfig
from kubetune_trainer.failures import TrainerFailure
from kubetune_trainer.reporting import Log

TRAIN_FILE, VALIDATION_FILE, REPORT_FILE = "train.jsonl", "validation.jsonl", "report.json"


def summary(report: Any) -> DataSummary:
    split = getattr(report, "split", None)
    return DataSummary(
        examples=report.examples, train=split.train if split else None, validation=split.validation if split else None,
        invalid=report.invalid, duplicates=report.duplicates, pii=dict(report.pii) or None,
        truncated_fraction=(report.lengths or {}).get("truncated_share"),
    )


def dataset_paths(config: TrainerConfig, log: Log) -> tuple[Path, Path | None]:
    """The dataset and the golden set (for the leakage check) as local files. A dataset that cannot be
    fetched is DataInvalid; a golden set that cannot be is only a warning."""
    from kubetune_trainer.sources import SourceError, resolve

    token = config.secret_env.hf_token
    try:
        dataset = resolve(config.sources.dataset, kind="dataset", token_env=token)
    except SourceError as e:
        raise TrainerFailure(Reason.DATA_INVALID, str(e)) from e
    golden = None
    if config.sources.golden:
        try:
            golden = resolve(config.sources.golden, kind="dataset", token_env=token)
        except SourceError as e:
            log(f"warning: golden set unavailable for the leakage check: {e}")
    return dataset, golden


def check_data(*, dataset: Path, spec: FineTuneJobSpec | PreferenceAlignmentSpec, out_dir: Path, golden: Path | None,
               log: Log, processes: int | None = 1) -> Any:
    """The preflight's report (a kubetune.data DataReport); when it is ok, the cleaned splits are
    ``out_dir``/train.jsonl and validation.jsonl, and the report is ``out_dir``/report.json."""
    from kubetune.data import preflight

    ds = spec.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
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
        train_out=out_dir / TRAIN_FILE,
        validation_out=out_dir / VALIDATION_FILE,
        near_duplicates=ds.near_duplicates,
        processes=processes,
    )
    with contextlib.suppress(OSError):
        (out_dir / REPORT_FILE).write_text(report.to_json())
    for warning in report.warnings:
        log(f"data: {warning}")
    return report


def data_failure(report: Any) -> TrainerFailure:
    """DataInvalid or InsufficientData for a report that is not ok, with its first bad lines."""
    reason = Reason.INSUFFICIENT_DATA if str(report.reason) == Reason.INSUFFICIENT_DATA else Reason.DATA_INVALID
    first = "; ".join(f"line {e.line}: {e.message}" if e.line else e.message for e in report.errors[:3])
    message = report.message + (f" (e.g. {first})" if first and reason == Reason.DATA_INVALID else "")
    return TrainerFailure(reason, message[:1024], details={"data": report.to_dict()})


def run_preflight(*, dataset: Path, spec: FineTuneJobSpec | PreferenceAlignmentSpec, out_dir: Path, golden: Path | None,
                  log: Log) -> tuple[Any, Path, Path | None]:
    """Check the data; raise TrainerFailure(DataInvalid|InsufficientData) when it fails. Returns the
    report and the cleaned train / validation files."""
    report = check_data(dataset=dataset, spec=spec, out_dir=out_dir, golden=golden, log=log)
    if not report.ok:
        raise data_failure(report)
    log(f"data: {report.message}")
    validation = out_dir / VALIDATION_FILE if report.split and report.split.validation else None
    return report, out_dir / TRAIN_FILE, validation


def prepare_data(config: TrainerConfig, *, output: Path, log: Log) -> tuple[DataSummary, Path, Path | None]:
    """The data summary and the checked train / validation files training reads: those the preflight
    stage wrote (``sources.checkedData``), verified, or — for a config that names none — the
    preflight run here first, into ``<output>/kubetune/data``."""
    if config.sources.checked_data:
        from kubetune_trainer.preflight import read_checked

        return read_checked(config, log=log)
    dataset, golden = dataset_paths(config, log)
    report, train, validation = run_preflight(dataset=dataset, spec=config.spec, out_dir=output / "kubetune" / "data",
                                              golden=golden, log=log)
    return summary(report), train, validation


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


__all__ = ["check_data", "data_failure", "dataset_paths", "dpo_rows", "prepare_data", "read_jsonl", "run_preflight",
           "sft_rows", "summary"]
