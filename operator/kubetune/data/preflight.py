"""One streaming pass over a dataset: validate, redact/reject PII, dedup, measure, split, report.

Memory does not grow with the size of the examples: records are read one at a time and outputs are
written as they go; what grows with the *number* of examples is the dedup hash tables (~40 MiB per
million examples, plus 200-500 MiB with ``near_duplicates``) and a length histogram (one counter per
distinct length).

Outputs (``redact_out``, ``train_out``, ``validation_out``) are written to ``<name>.partial`` and
renamed only when the report is ok; when not ok they are removed, so a half-checked file is never
taken for a clean one. ``redact_out`` holds every usable example (redacted, deduplicated, valid
lines only); ``train_out`` / ``validation_out`` hold the same examples split.

Processes: what one record costs (decoding, validation, PII, hashing, length) is :class:`Checker`;
what depends on the records before it (dedup, errors, counts, outputs) is :class:`_Tally`, fed in
file order. With ``processes`` > 1 the checking runs in worker processes
(:mod:`kubetune.data.parallel`); the report and the output files are the same as with one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from kubetune.api.enums import ErrorPolicy, PiiPolicy
from kubetune.data.dedup import Deduplicator, Duplicate, hash64, normalize
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
from kubetune.data.near_dup import NearDuplicates, Sketch, WordHashes, fields, sketch
from kubetune.data.parallel import auto_processes, check_in_processes, picklable
from kubetune.data.pii import Finding, PersonDetector, PiiScanner, PiiType
from kubetune.data.reader import DEFAULT_MAX_LINE_BYTES, DataFileError, Item, parse, read_items
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



@dataclass(frozen=True)
class Rules:
    """What checking one record needs; sent once to each worker process (so: picklable)."""

    format: Format
    pii: PiiPolicy
    golden: GoldenIndex | None = None
    tokenizer: Tokenizer | None = None
    person_detector: PersonDetector | None = None
    near_duplicates: bool = False
    validation_split: float = 0.05
    seed: int = 42
    write: bool = False  # make each usable record's output line


class Checked(NamedTuple):
    """One record checked on its own: what :class:`_Tally` needs to count it, in a few bytes (and
    the output line)."""

    line: int
    error: RecordError | None = None  # reported with its line
    dropped: bool = False  # invalid (or leaked): not an example
    leaked: bool = False
    pii: tuple[str, ...] = ()  # the type of each finding
    exact: int = 0  # hash64 of the canonical text (after redaction)
    normalized: int = 0  # hash64 of it normalized
    near: Sketch | None = None  # with near_duplicates
    tokens: int = 0
    validation: bool = False
    text: str | None = None  # the JSON line to write (Rules.write)


class Checker:
    """Checks one record at a time: decode, validate, golden leakage, PII, hashes, length, split side.
    Keeps no state between records but caches; the same answers in any process."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.scanner = PiiScanner(person_detector=rules.person_detector) if rules.pii is not PiiPolicy.OFF else None
        self.splitter = Splitter(rules.validation_split, rules.seed)
        self.words = WordHashes()
        self._found: list[Finding] = []

    def _redact(self, text: str) -> str:
        assert self.scanner is not None
        cleaned, hits = self.scanner.redact(text)
        self._found.extend(hits)
        return cleaned

    def _scan(self, text: str) -> str:
        assert self.scanner is not None
        self._found.extend(self.scanner.find(text))
        return text

    def __call__(self, item: Item) -> Checked:
        item = parse(item)
        if item.error is not None:
            return Checked(item.line, item.error, dropped=True)
        rules, fmt, record = self.rules, self.rules.format, item.value
        bad = validate(record, fmt)
        if bad is not None:
            return Checked(item.line, bad, dropped=True)
        if rules.golden is not None:
            leak = rules.golden.leak(record, fmt)
            if leak is not None:
                same = "same example as" if leak.what == "example" else "same prompt as"
                why = RecordError(ErrorClass.GOLDEN_LEAKAGE, f"{same} golden line {leak.golden_line}")
                return Checked(item.line, why, dropped=True, leaked=True)
        error: RecordError | None = None
        pii: tuple[str, ...] = ()
        if self.scanner is not None:
            self._found.clear()
            record = map_strings(record, self._redact if rules.pii is PiiPolicy.REDACT else self._scan)
            if self._found:
                pii = tuple(f.type.value for f in self._found)
                if rules.pii is PiiPolicy.REJECT:
                    # Types and line only: the value never leaves this function.
                    error = RecordError(ErrorClass.PII_FOUND, "contains " + ", ".join(sorted(set(pii))))
        # Dedup on what will be trained on (after redaction).
        text = canonical(record, fmt)
        normalized = normalize(text)
        return Checked(
            item.line, error, pii=pii, exact=hash64(text), normalized=hash64(normalized),
            near=sketch(fields(record, fmt), self.words) if rules.near_duplicates else None,
            tokens=count_tokens(length_texts(record, fmt), message_count(record, fmt), rules.tokenizer),
            validation=self.splitter.is_validation_normalized(normalized),
            text=json.dumps(record, ensure_ascii=False) + "\n" if rules.write else None,
        )


class _Tally:
    """The records' checks merged in file order: counts, errors (capped), dedup, lengths, split,
    output lines."""

    def __init__(self, *, max_errors: int, near_duplicates: bool, max_seq_length: int | None,
                 outputs: _Outputs) -> None:
        self.max_errors = max_errors
        self.errors: list[LineError] = []
        self.error_counts: Counter[str] = Counter()
        self.omitted = 0
        self.records = self.invalid = self.examples = self.leaked = 0
        self.dup_exact = self.dup_norm = self.dup_near = 0
        self.pii_counts: Counter[str] = Counter()
        self.pii_lines = self.train = self.validation = 0
        self.lengths = LengthStats(max_seq_length)
        self.dedup = Deduplicator(NearDuplicates() if near_duplicates else None)
        self.outputs = outputs

    def error(self, line: int | None, err: RecordError) -> None:
        self.error_counts[err.kind.value] += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line=line, kind=err.kind, message=err.message))
        else:
            self.omitted += 1

    def add(self, c: Checked) -> None:
        self.records += 1
        if c.dropped:
            self.invalid += 1
            self.leaked += c.leaked
            assert c.error is not None
            self.error(c.line, c.error)
            return
        if c.pii:
            self.pii_lines += 1
            self.pii_counts.update(c.pii)
        if c.error is not None:
            self.error(c.line, c.error)
        dup = self.dedup.check_hashes(c.exact, c.normalized, c.near)
        if dup is not None:
            if dup is Duplicate.EXACT:
                self.dup_exact += 1
            elif dup is Duplicate.NORMALIZED:
                self.dup_norm += 1
            else:
                self.dup_near += 1
            return
        self.examples += 1
        self.lengths.add(c.tokens)
        if c.validation:
            self.validation += 1
        else:
            self.train += 1
        if c.text is not None:
            self.outputs.write("redacted", c.text)
            self.outputs.write("validation" if c.validation else "train", c.text)


def _checked(items: Iterator[Item], rules: Rules, processes: int) -> Iterator[Checked]:
    if processes <= 1:
        return map(Checker(rules), items)
    return check_in_processes(items, Checker, (rules,), processes)


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
    processes: int | None = 1,
) -> DataReport:
    """Check a dataset before any GPU is held; see the module docstring for outputs.

    ``near_duplicates`` also drops examples whose word shingles overlap an earlier kept example's
    by an estimated Jaccard similarity of 0.8 or more (:mod:`kubetune.data.near_dup`).

    ``processes``: how many processes check the records (1: this one; None: as many as the file is
    worth, up to the CPUs this process may use — :func:`kubetune.data.parallel.auto_processes`).
    The report and the output files do not depend on it. A ``tokenizer`` or ``person_detector``
    that cannot be pickled keeps the check in this process (the report warns).

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
    if processes is not None and processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    Splitter(validation_split, seed)  # refuses a bad split before anything is read
    path = Path(path)
    warnings: list[str] = []
    outputs = _Outputs({"redacted": redact_out, "train": train_out, "validation": validation_out})
    any_output = outputs.has("redacted") or outputs.has("train") or outputs.has("validation")
    tally = _Tally(max_errors=max_errors, near_duplicates=near_duplicates, max_seq_length=max_seq_length,
                   outputs=outputs)
    error = tally.error
    fatal: str | None = None

    golden: GoldenIndex | None = None
    if golden_path is not None:
        try:
            golden = GoldenIndex.from_file(golden_path, fmt, max_line_bytes=max_line_bytes)
        except DataFileError as e:
            fatal = f"golden set {golden_path}: {e.message}"
            error(None, RecordError(ErrorClass.FILE_ERROR, fatal))
    rules = Rules(format=fmt, pii=pii_policy, golden=golden, tokenizer=tokenizer, person_detector=person_detector,
                  near_duplicates=near_duplicates, validation_split=validation_split, seed=seed, write=any_output)
    if processes is None:
        try:
            processes = auto_processes(path.stat().st_size)
        except OSError:
            processes = 1  # the reader says what is wrong with the path
    if processes > 1 and not picklable(rules):
        warnings.append(f"checked in one process, not {processes}: the tokenizer or person detector cannot be "
                        "sent to worker processes (it must be picklable)")
        processes = 1

    try:
        if fatal is None:
            for checked in _checked(read_items(path, max_line_bytes=max_line_bytes), rules, processes):
                tally.add(checked)
    except DataFileError as e:
        fatal = e.message
        error(e.line, RecordError(ErrorClass.FILE_ERROR, e.message))
    except BaseException:
        outputs.finish(commit=False)
        raise

    records, invalid, examples, leaked = tally.records, tally.invalid, tally.examples, tally.leaked
    dup_exact, dup_norm, dup_near = tally.dup_exact, tally.dup_norm, tally.dup_near
    pii_counts, pii_lines, train_n, val_n = tally.pii_counts, tally.pii_lines, tally.train, tally.validation
    errors, error_counts, omitted, lengths = tally.errors, tally.error_counts, tally.omitted, tally.lengths
    covered, not_covered = PiiScanner.coverage(person_detector is not None)
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
    scanned = pii_policy is not PiiPolicy.OFF
    if scanned and not_covered:
        warnings.append(
            "person names are not detected (no named-entity model installed); covered: "
            + ", ".join(t.value for t in covered)
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
        pii_covered=[t.value for t in covered] if scanned else [],
        pii_not_covered=[t.value for t in not_covered] if scanned else [],
        warnings=warnings,
        lengths=length_summary,
        split=SplitReport(seed=seed, validation_split=validation_split, train=train_n, validation=val_n),
        golden=GoldenReport(path=str(golden_path), examples=golden.examples, leaked=leaked)
        if golden is not None
        else None,
        outputs=written,
        bytes=size,
        seconds=round(time.perf_counter() - started, 3),
        processes=processes,
    )


__all__ = ["DEFAULT_MIN_EXAMPLES", "ErrorPolicy", "PiiType", "preflight"]
