"""One streaming pass over a dataset: validate, redact/reject PII, dedup, measure, split, report.

Memory does not grow with the size of the examples: records are read one at a time and outputs are
written as they go; what grows with the *number* of examples is the dedup hash tables (~40 MiB per
million examples, plus 200-500 MiB with ``near_duplicates``) and a length histogram (one counter per
distinct length).

Outputs (``redact_out``, ``train_out``, ``validation_out``) are written to ``<name>.partial`` and
renamed only when the report is ok; when not ok they are removed, so a half-checked file is never
taken for a clean one. ``redact_out`` holds every usable example (redacted, deduplicated, valid
lines only); ``train_out`` / ``validation_out`` hold the same examples split.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from kubetune.api.enums import ErrorPolicy, PiiPolicy
from kubetune.data.dedup import Deduplicator, Duplicate
from kubetune.data.formats import (
    ErrorClass,
    Format,
    RecordError,
    canonical,
    length_texts,
    map_strings,
    message_count,
    validate,
)
from kubetune.data.lengths import LengthStats, Tokenizer, count_tokens
from kubetune.data.near_dup import NearDuplicates, fields
from kubetune.data.pii import Finding, PersonDetector, PiiScanner, PiiType
from kubetune.data.reader import DEFAULT_MAX_LINE_BYTES, DataFileError, read_records
from kubetune.data.report import DataReport, GoldenReport, LineError, Reason, SplitReport
from kubetune.data.split import GoldenIndex, Splitter

DEFAULT_MIN_EXAMPLES = 200
WARN_BELOW_EXAMPLES = 1000
DEFAULT_MAX_ERRORS = 50
TRUNCATION_WARN_SHARE = 0.05



def _enum(cls: Any, value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        options = ", ".join(m.value for m in cls)
        raise ValueError(f"{what} must be one of {options}; got {value!r}") from None


class _Outputs:
    """JSONL writers that become visible (renamed) only on commit."""

    def __init__(self, paths: dict[str, str | os.PathLike[str] | None]) -> None:
        self._files: dict[str, tuple[Path, IO[str]]] = {}
        for name, path in paths.items():
            if path is None:
                continue
            final = Path(path)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            self._files[name] = (final, partial.open("w", encoding="utf-8"))

    def write(self, name: str, line: str) -> None:
        entry = self._files.get(name)
        if entry is not None:
            entry[1].write(line)

    def has(self, name: str) -> bool:
        return name in self._files

    def finish(self, commit: bool) -> dict[str, str]:
        written: dict[str, str] = {}
        for name, (final, fh) in self._files.items():
            fh.close()
            partial = Path(fh.name)
            if commit:
                partial.replace(final)
                written[name] = str(final)
            else:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
        self._files.clear()
        return written


def preflight(
    path: str | os.PathLike[str],
    *,
    format: Format | str,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    pii: PiiPolicy | str = PiiPolicy.REDACT,
    error_policy: ErrorPolicy | str = ErrorPolicy.FAIL,
    max_seq_length: int | None = None,
    validation_split: float = 0.05,
    seed: int = 42,
    tokenizer: Tokenizer | None = None,
    golden_path: str | os.PathLike[str] | None = None,
    redact_out: str | os.PathLike[str] | None = None,
    train_out: str | os.PathLike[str] | None = None,
    validation_out: str | os.PathLike[str] | None = None,
    max_bad_fraction: float = 0.1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = DEFAULT_MAX_ERRORS,
    person_detector: PersonDetector | None = None,
    near_duplicates: bool = False,
) -> DataReport:
    """Check a dataset before any GPU is held; see the module docstring for outputs.

    ``near_duplicates`` also drops examples whose word shingles overlap an earlier kept example's
    by an estimated Jaccard similarity of 0.8 or more (:mod:`kubetune.data.near_dup`).

    Raises ``ValueError`` only for bad arguments (an unknown format or policy); every problem with
    the data itself comes back in the report (``ok=False`` with ``reason`` and line-numbered errors).
    """
    started = time.perf_counter()
    fmt: Format = _enum(Format, format, "format")
    pii_policy: PiiPolicy = _enum(PiiPolicy, pii, "pii")
    policy: ErrorPolicy = _enum(ErrorPolicy, error_policy, "errorPolicy")
    if min_examples < 0:
        raise ValueError(f"min_examples must be >= 0, got {min_examples}")
    if max_seq_length is not None and max_seq_length <= 0:
        raise ValueError(f"max_seq_length must be > 0, got {max_seq_length}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    splitter = Splitter(validation_split, seed)
    path = Path(path)

    errors: list[LineError] = []
    error_counts: Counter[str] = Counter()
    omitted = 0
    records = invalid = examples = dup_exact = dup_norm = dup_near = 0
    pii_counts: Counter[str] = Counter()
    pii_lines = leaked = train_n = val_n = 0
    warnings: list[str] = []
    fatal: str | None = None

    def error(line: int | None, err: RecordError) -> None:
        nonlocal omitted
        error_counts[err.kind.value] += 1
        if len(errors) < max_errors:
            errors.append(LineError(line=line, kind=err.kind, message=err.message))
        else:
            omitted += 1

    golden: GoldenIndex | None = None
    if golden_path is not None:
        try:
            golden = GoldenIndex.from_file(golden_path, fmt, max_line_bytes=max_line_bytes)
        except DataFileError as e:
            fatal = f"golden set {golden_path}: {e.message}"
            error(None, RecordError(ErrorClass.FILE_ERROR, fatal))

    scanner = PiiScanner(person_detector=person_detector) if pii_policy is not PiiPolicy.OFF else None
    lengths = LengthStats(max_seq_length)
    dedup = Deduplicator(NearDuplicates() if near_duplicates else None)
    outputs = _Outputs({"redacted": redact_out, "train": train_out, "validation": validation_out})
    any_output = outputs.has("redacted") or outputs.has("train") or outputs.has("validation")

    found: list[Finding] = []

    def redact(text: str) -> str:
        assert scanner is not None
        cleaned, hits = scanner.redact(text)
        found.extend(hits)
        return cleaned

    def scan(text: str) -> str:
        assert scanner is not None
        found.extend(scanner.find(text))
        return text

    try:
        if fatal is None:
            for item in read_records(path, max_line_bytes=max_line_bytes):
                records += 1
                if item.error is not None:
                    invalid += 1
                    error(item.line, item.error)
                    continue
                record = item.value
                bad = validate(record, fmt)
                if bad is not None:
                    invalid += 1
                    error(item.line, bad)
                    continue
                if golden is not None:
                    leak = golden.leak(record, fmt)
                    if leak is not None:
                        leaked += 1
                        invalid += 1
                        same = "same example as" if leak.what == "example" else "same prompt as"
                        error(
                            item.line,
                            RecordError(ErrorClass.GOLDEN_LEAKAGE, f"{same} golden line {leak.golden_line}"),
                        )
                        continue
                if scanner is not None:
                    found.clear()
                    record = map_strings(record, redact if pii_policy is PiiPolicy.REDACT else scan)
                    if found:
                        pii_lines += 1
                        kinds = Counter(f.type.value for f in found)
                        pii_counts.update(kinds)
                        if pii_policy is PiiPolicy.REJECT:
                            # Types and line only: the value never leaves this function.
                            error(
                                item.line,
                                RecordError(ErrorClass.PII_FOUND, "contains " + ", ".join(sorted(kinds))),
                            )
                # Dedup on what will be trained on (after redaction).
                text = canonical(record, fmt)
                dup = dedup.check(text, fields(record, fmt) if near_duplicates else None)
                if dup is not None:
                    if dup is Duplicate.EXACT:
                        dup_exact += 1
                    elif dup is Duplicate.NORMALIZED:
                        dup_norm += 1
                    else:
                        dup_near += 1
                    continue
                examples += 1
                lengths.add(count_tokens(length_texts(record, fmt), message_count(record, fmt), tokenizer))
                to_validation = splitter.is_validation(text)
                if to_validation:
                    val_n += 1
                else:
                    train_n += 1
                if any_output:
                    line = json.dumps(record, ensure_ascii=False) + "\n"
                    outputs.write("redacted", line)
                    outputs.write("validation" if to_validation else "train", line)
    except DataFileError as e:
        fatal = e.message
        error(e.line, RecordError(ErrorClass.FILE_ERROR, e.message))
    except BaseException:
        outputs.finish(commit=False)
        raise

    duplicates = dup_exact + dup_norm + dup_near
    reason: Reason | None = None
    message = ""
    if fatal is not None:
        reason, message = Reason.DATA_INVALID, fatal
    elif records == 0:
        reason, message = Reason.DATA_INVALID, "file has no records (only blank lines)"
        error(None, RecordError(ErrorClass.FILE_ERROR, message))
    elif invalid and (policy is ErrorPolicy.FAIL or invalid / records > max_bad_fraction):
        reason = Reason.DATA_INVALID
        by_kind = ", ".join(f"{k} ({v:,})" for k, v in error_counts.most_common())
        if policy is ErrorPolicy.FAIL:
            message = (
                f"{invalid:,} of {records:,} records are bad: {by_kind}. Fix them, or set errorPolicy: skip "
                f"to drop them (up to {max_bad_fraction:.0%})"
            )
        else:
            message = (
                f"{invalid:,} of {records:,} records are bad ({invalid / records:.1%}), over the "
                f"{max_bad_fraction:.0%} that errorPolicy: skip may drop: {by_kind}"
            )
    elif pii_policy is PiiPolicy.REJECT and pii_lines:
        reason = Reason.DATA_INVALID
        message = (
            f"PII found in {pii_lines:,} records ({', '.join(f'{k} {v:,}' for k, v in sorted(pii_counts.items()))}); "
            "pii: reject. Remove it, or use pii: redact"
        )
    elif examples < min_examples:
        reason = Reason.INSUFFICIENT_DATA
        message = (
            f"found {examples:,} valid examples, need at least {min_examples:,} — don't fine-tune yet: "
            f"collect more examples (hundreds to a few thousand good ones are typical for LoRA), "
            f"or lower minExamples"
        )
        if invalid or duplicates:
            message += f" ({invalid:,} invalid and {duplicates:,} duplicate records were not counted)"
    ok = reason is None
    if ok:
        message = f"{examples:,} usable examples ({train_n:,} train, {val_n:,} validation)"

    if invalid and policy is ErrorPolicy.SKIP and ok:
        warnings.append(
            f"dropped {invalid:,} bad records ({invalid / max(records, 1):.1%}) under errorPolicy: skip"
        )
    if leaked:
        warnings.append(f"{leaked:,} examples repeat the golden set; they were not used for training")
    if duplicates:
        near = f", {dup_near:,} near-duplicates" if near_duplicates else ""
        warnings.append(
            f"dropped {duplicates:,} duplicates ({dup_exact:,} exact, {dup_norm:,} after normalizing case and "
            f"whitespace{near})"
        )
    if examples and min_examples <= examples < WARN_BELOW_EXAMPLES:
        warnings.append(
            f"only {examples:,} examples: fine for a first LoRA run, but expect a narrow model; 1,000+ is safer"
        )
    if lengths.truncated and max_seq_length is not None:
        share = lengths.truncated / max(len(lengths), 1)
        if share >= TRUNCATION_WARN_SHARE:
            warnings.append(
                f"{share:.1%} of examples are longer than maxSeqLength {max_seq_length} and will be truncated"
            )
    if scanner is not None and scanner.not_covered:
        warnings.append(
            "person names are not detected (no named-entity model installed); covered: "
            + ", ".join(t.value for t in scanner.covered)
        )
    if pii_policy is PiiPolicy.REDACT and pii_lines:
        warnings.append(f"redacted PII in {pii_lines:,} records with typed placeholders such as <EMAIL>")
    if any_output and not ok:
        warnings.append("no output files were written because the data is not ok")

    written = outputs.finish(commit=ok)
    length_summary = lengths.summary()
    if length_summary.get("count"):
        length_summary["method"] = "tokenizer" if tokenizer is not None else "chars/4 estimate"
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return DataReport(
        ok=ok,
        reason=reason,
        message=message,
        path=str(path),
        format=fmt,
        records=records,
        examples=examples,
        invalid=invalid,
        duplicates=duplicates,
        duplicates_exact=dup_exact,
        duplicates_normalized=dup_norm,
        duplicates_near=dup_near if near_duplicates else None,
        error_policy=policy.value,
        errors=errors,
        errors_omitted=omitted,
        error_counts=dict(error_counts),
        pii_policy=pii_policy,
        pii=dict(sorted(pii_counts.items())),
        pii_lines=pii_lines,
        pii_covered=[t.value for t in scanner.covered] if scanner is not None else [],
        pii_not_covered=[t.value for t in scanner.not_covered] if scanner is not None else [],
        warnings=warnings,
        lengths=length_summary,
        split=SplitReport(seed=seed, validation_split=validation_split, train=train_n, validation=val_n),
        golden=GoldenReport(path=str(golden_path), examples=golden.examples, leaked=leaked)
        if golden is not None
        else None,
        outputs=written,
        bytes=size,
        seconds=round(time.perf_counter() - started, 3),
    )


__all__ = ["DEFAULT_MIN_EXAMPLES", "ErrorPolicy", "PiiType", "preflight"]
