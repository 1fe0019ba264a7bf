"""The data report: one stable JSON document (``DataReport.to_json``) and a readable summary.

Stable keys (the CLI contract): ``ok``, ``examples`` (valid after dedup), ``invalid``,
``duplicates``, ``errors`` ([{``line``, ``message``, ``kind``}]), ``pii`` (type → count),
``reason`` (``DataInvalid`` | ``InsufficientData`` when not ok, else null). The rest is additive.
``status_summary()`` is the small form the operator puts in ``status.data``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from kubetune.api.enums import PiiPolicy
from kubetune.data.formats import ErrorClass, Format

REPORT_VERSION = 1


class Reason(StrEnum):
    """Why the data is not ok; the same constants as the run's condition reasons."""

    DATA_INVALID = "DataInvalid"
    INSUFFICIENT_DATA = "InsufficientData"


class LineError(BaseModel):
    """One bad line. ``line`` is 1-based (null for a file-level problem with no line)."""

    line: int | None
    kind: ErrorClass
    message: str


class SplitReport(BaseModel):
    seed: int
    validation_split: float
    train: int
    validation: int


class GoldenReport(BaseModel):
    path: str
    examples: int
    leaked: int


class DataReport(BaseModel):
    """The outcome of :func:`kubetune.data.preflight`."""

    version: int = REPORT_VERSION
    ok: bool
    reason: Reason | None = None
    message: str = Field(description="One line for humans: what is wrong and what to do, or a summary.")
    path: str
    format: Format
    records: int = Field(0, description="Non-blank lines (or array elements) read, good and bad.")
    examples: int = Field(0, description="Valid examples after dedup (and after dropping leaks under skip).")
    invalid: int = 0
    duplicates: int = Field(
        0, description="Duplicates dropped, all kinds: the sum of the duplicates_* counts."
    )
    duplicates_exact: int = 0
    duplicates_normalized: int = Field(
        0, description="Equal after NFKC, case folding and collapsing whitespace."
    )
    duplicates_near: int | None = Field(
        None, description="Near-duplicates of an earlier kept example; null when they were not looked for."
    )
    error_policy: str
    errors: list[LineError] = Field(default_factory=list)
    errors_omitted: int = Field(0, description="Bad lines beyond the cap on `errors`.")
    error_counts: dict[str, int] = Field(default_factory=dict)
    pii_policy: PiiPolicy
    pii: dict[str, int] = Field(default_factory=dict, description="PII type → findings.")
    pii_lines: int = Field(0, description="Records with at least one finding.")
    pii_covered: list[str] = Field(default_factory=list)
    pii_not_covered: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    lengths: dict[str, Any] = Field(default_factory=dict)
    split: SplitReport | None = None
    golden: GoldenReport | None = None
    outputs: dict[str, str] = Field(default_factory=dict, description="Files written (only when ok).")
    bytes: int = 0
    seconds: float = 0.0
    processes: int = Field(1, description="Processes that checked the records (1: the calling process).")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def status_summary(self, max_message: int = 1024) -> dict[str, Any]:
        """The compact form for ``status.data`` (bounded size: no error list)."""
        message = self.message if len(self.message) <= max_message else self.message[: max_message - 1] + "…"
        out: dict[str, Any] = {
            "ok": self.ok,
            "examples": self.examples,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "pii": dict(self.pii),
            "message": message,
        }
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.split is not None:
            out["train"] = self.split.train
            out["validation"] = self.split.validation
        if self.lengths.get("truncated_share") is not None:
            out["truncatedShare"] = self.lengths["truncated_share"]
        return out

    def text(self) -> str:
        """A readable summary for the terminal."""
        head = "OK" if self.ok else f"NOT OK ({self.reason.value if self.reason else 'error'})"
        lines = [f"{head}: {self.message}", ""]
        lines.append(
            f"  file        {self.path} ({self.format.value}, {self.bytes:,} bytes, {self.seconds:.1f} s)"
        )
        lines.append(
            f"  records     {self.records:,} read, {self.examples:,} usable, "
            f"{self.invalid:,} invalid, {self.duplicates:,} duplicates "
            f"({self.duplicates_exact:,} exact, {self.duplicates_normalized:,} normalized"
            + (f", {self.duplicates_near:,} near" if self.duplicates_near is not None else "")
            + ")"
        )
        if self.pii_policy is PiiPolicy.OFF:
            lines.append("  pii         not scanned (pii: off)")
        else:
            found = ", ".join(f"{k} {v:,}" for k, v in sorted(self.pii.items())) or "none found"
            lines.append(f"  pii         {self.pii_policy.value}: {found} in {self.pii_lines:,} records")
            if self.pii_not_covered:
                lines.append(f"              not covered: {', '.join(self.pii_not_covered)}")
        if self.lengths.get("count"):
            ln = self.lengths
            lines.append(
                f"  lengths     tokens ({ln.get('method', 'estimate')}) min {ln['min']}, p50 {ln['p50']}, "
                f"p95 {ln['p95']}, max {ln['max']}"
            )
            if ln.get("max_seq_length"):
                lines.append(
                    f"              {ln['truncated']:,} ({ln['truncated_share']:.1%}) over maxSeqLength {ln['max_seq_length']}"
                )
        if self.split is not None:
            lines.append(
                f"  split       train {self.split.train:,}, validation {self.split.validation:,} "
                f"(validationSplit {self.split.validation_split}, seed {self.split.seed})"
            )
        if self.golden is not None:
            lines.append(
                f"  golden      {self.golden.examples:,} examples, {self.golden.leaked:,} leaked into train"
            )
        for path in self.outputs.values():
            lines.append(f"  wrote       {path}")
        if self.errors:
            lines.append("")
            lines.append("Errors:")
            for e in self.errors:
                where = f"line {e.line}" if e.line is not None else "file"
                lines.append(f"  {where}: {e.message}")
            if self.errors_omitted:
                lines.append(f"  ... and {self.errors_omitted:,} more")
            if self.error_counts:
                lines.append(
                    "  by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.error_counts.items()))
                )
        if self.warnings:
            lines.append("")
            lines.append("Warnings:")
            lines.extend(f"  - {w}" for w in self.warnings)
        return "\n".join(lines)
