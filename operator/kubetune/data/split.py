"""Deterministic train/validation split and the golden-set leakage check.

Split: each example goes to validation when a seeded 64-bit hash of its *normalized* content falls
below ``validation_split`` of the hash range. The same data and seed give the same split on any
machine, in one streaming pass, and an example keeps its side when other lines are added or removed
(a normalized duplicate would land on the same side, so dedup and split agree).

Golden set: a separate file, never split. An example leaks when its normalized content, or its
normalized prompt side, equals that of a golden example. Golden sets are small (hundreds of
examples), so they are held in memory as hash → golden line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kubetune.data.dedup import hash64, normalize
from kubetune.data.formats import Format, canonical, prompt_text, validate
from kubetune.data.reader import DEFAULT_MAX_LINE_BYTES, read_records


class Splitter:
    def __init__(self, validation_split: float, seed: int) -> None:
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        self.validation_split = validation_split
        self.seed = seed
        self._key = f"kubetune-split-{seed}".encode()[:64]
        self._threshold = int(validation_split * 2**64)

    def is_validation(self, canonical_text: str) -> bool:
        return self.is_validation_normalized(normalize(canonical_text))

    def is_validation_normalized(self, normalized: str) -> bool:
        """:meth:`is_validation` for a text already normalized (``dedup.normalize``)."""
        return hash64(normalized, key=self._key) < self._threshold


_PROMPT_KEYS = ("prompt", "input", "instruction", "question", "query")


def _loose_prompt(record: Any) -> str | None:
    """The prompt of a golden record in another shape (``{"prompt": ..., "expected": ...}``, ...)."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("messages"), list):
        msgs = [m for m in record["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        if msgs and all(isinstance(m.get("content"), str) for m in msgs):
            return "\x1e".join(m["content"] for m in msgs)
    for key in _PROMPT_KEYS:
        if isinstance(record.get(key), str) and record[key].strip():
            return str(record[key])
    return None


@dataclass(frozen=True)
class Leak:
    golden_line: int
    what: str  # "example" or "prompt"


class GoldenIndex:
    """Normalized hashes of a golden set's examples and prompts."""

    def __init__(self) -> None:
        self._full: dict[int, int] = {}
        self._prompts: dict[int, int] = {}
        self.examples = 0

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], fmt: Format, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> GoldenIndex:
        """Read a golden file (same format as the training data, or any JSON objects with a prompt field).

        Raises :class:`~kubetune.data.reader.DataFileError` when the file cannot be read.
        """
        index = cls()
        for item in read_records(path, max_line_bytes=max_line_bytes):
            if item.error is not None:
                continue
            record = item.value
            if validate(record, fmt) is None:
                index._full.setdefault(hash64(normalize(canonical(record, fmt))), item.line)
                prompt: str | None = prompt_text(record, fmt)
            else:
                prompt = _loose_prompt(record)
            if prompt is None:
                continue
            index.examples += 1
            if normalize(prompt):
                index._prompts.setdefault(hash64(normalize(prompt)), item.line)
        return index

    def leak(self, record: dict[str, Any], fmt: Format) -> Leak | None:
        line = self._full.get(hash64(normalize(canonical(record, fmt))))
        if line is not None:
            return Leak(line, "example")
        prompt = normalize(prompt_text(record, fmt))
        line = self._prompts.get(hash64(prompt)) if prompt else None
        return Leak(line, "prompt") if line is not None else None
