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
# spec.dataset.replay: the checked replay set, and its report, next to the checked splits
REPLAY_FILE, REPLAY_REPORT_FILE = "replay.jsonl", "replay-report.json"


def summary(report: Any, replay: int | None = None) -> DataSummary:
    split = getattr(report, "split", None)
    return DataSummary(
        examples=report.examples, train=split.train if split else None, validation=split.validation if split else None,
        invalid=report.invalid, duplicates=report.duplicates, pii=dict(report.pii) or None,
        truncated_fraction=(report.lengths or {}).get("truncated_share"), replay=replay,
    )


def replay_mixed(report: Any, spec: FineTuneJobSpec | PreferenceAlignmentSpec) -> int | None:
    """How many replay examples join the training split (None without spec.dataset.replay)."""
    from kubetune.data.replay import replay_count

    replay = getattr(spec.dataset, "replay", None)
    split = getattr(report, "split", None)
    if replay is None or split is None:
        return None
    return replay_count(split.train, replay.ratio)


def replay_path(config: TrainerConfig) -> Path | None:
    """The replay set (spec.dataset.replay) as a local file; one that cannot be fetched is DataInvalid."""
    from kubetune_trainer.sources import SourceError, resolve

    if not config.sources.replay:
        return None
    try:
        return resolve(config.sources.replay, kind="dataset", token_env=config.secret_env.hf_token)
    except SourceError as e:
        raise TrainerFailure(Reason.DATA_INVALID, f"spec.dataset.replay: {e}") from e


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
               log: Log, processes: int | None = 1, replay: Path | None = None) -> Any:
    """The preflight's report (a kubetune.data DataReport); when it is ok, the cleaned splits are
    ``out_dir``/train.jsonl and validation.jsonl, and the report is ``out_dir``/report.json.
    With spec.dataset.replay, the replay set (``replay``, a local file) is checked the same way —
    format, PII policy, duplicates, overlap with the golden set — into ``out_dir``/replay.jsonl; a
    replay set that fails is the report returned (its message names spec.dataset.replay)."""
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
    settings = getattr(ds, "replay", None)
    if not report.ok or settings is None:
        return report
    if replay is None:
        raise TrainerFailure(Reason.DATA_INVALID, "spec.dataset.replay is set but the config names no replay source")
    checked = preflight(
        replay,
        format=str(ds.format),
        min_examples=1,
        pii=str(ds.pii),
        error_policy=str(ds.error_policy),
        max_seq_length=spec.training.max_seq_length,
        validation_split=0.0,  # replay is for training only: eval.loss measures the task
        seed=spec.training.seed,
        golden_path=golden,
        redact_out=out_dir / REPLAY_FILE,
        near_duplicates=ds.near_duplicates,
        processes=processes,
    )
    with contextlib.suppress(OSError):
        (out_dir / REPLAY_REPORT_FILE).write_text(checked.to_json())
    for warning in checked.warnings:
        log(f"data: spec.dataset.replay: {warning}")
    if not checked.ok:
        return checked.model_copy(update={"message": f"spec.dataset.replay ({replay.name}): {checked.message}"})
    log(f"data: spec.dataset.replay: {checked.message}; {replay_mixed(report, spec)} replay examples join "
        f"the training split (ratio {settings.ratio:g})")
    return report


def data_failure(report: Any) -> TrainerFailure:
    """DataInvalid or InsufficientData for a report that is not ok, with its first bad lines."""
    reason = Reason.INSUFFICIENT_DATA if str(report.reason) == Reason.INSUFFICIENT_DATA else Reason.DATA_INVALID
    first = "; ".join(f"line {e.line}: {e.message}" if e.line else e.message for e in report.errors[:3])
    message = report.message + (f" (e.g. {first})" if first and reason == Reason.DATA_INVALID else "")
    return TrainerFailure(reason, message[:1024], details={"data": report.to_dict()})


def run_preflight(*, dataset: Path, spec: FineTuneJobSpec | PreferenceAlignmentSpec, out_dir: Path, golden: Path | None,
                  log: Log, replay: Path | None = None) -> tuple[Any, Path, Path | None]:
    """Check the data; raise TrainerFailure(DataInvalid|InsufficientData) when it fails. Returns the
    report and the cleaned train / validation files."""
    report = check_data(dataset=dataset, spec=spec, out_dir=out_dir, golden=golden, log=log, replay=replay)
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
                                              golden=golden, log=log, replay=replay_path(config))
    return summary(report, replay_mixed(report, config.spec)), train, validation


def with_replay(records: list[dict[str, Any]], train_path: Path, spec: FineTuneJobSpec | PreferenceAlignmentSpec,
                log: Log) -> list[dict[str, Any]]:
    """The training records with spec.dataset.replay's share of the checked replay set (``replay.jsonl``
    next to the checked train split) mixed in; the trainer shuffles the mix."""
    from kubetune.data.replay import draw_replay, replay_count

    settings = getattr(spec.dataset, "replay", None)
    if settings is None:
        return records
    rows = read_jsonl(train_path.parent / REPLAY_FILE)
    drawn = draw_replay(rows, replay_count(len(records), settings.ratio), spec.training.seed)
    log(f"data: {len(drawn)} replay examples (of {len(rows)}) mixed into {len(records)} training examples")
    return records + drawn


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


__all__ = ["REPLAY_FILE", "check_data", "data_failure", "dataset_paths", "dpo_rows", "prepare_data", "read_jsonl",
           "replay_mixed", "replay_path", "run_preflight", "sft_rows", "summary", "with_replay"]
