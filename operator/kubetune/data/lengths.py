"""Sequence lengths: token counts with a tokenizer, else an estimate; the share ``maxSeqLength`` cuts.

Without a tokenizer the estimate is ``ceil(chars / 4)`` per text (the usual rule of thumb for
English with BPE tokenizers; code, numbers and non-Latin scripts take more tokens per char, so the
estimate is low for them), plus :data:`MESSAGE_OVERHEAD_TOKENS` per turn for the chat template's
role markers. With a tokenizer the template overhead is added the same way.

Memory: a histogram of lengths (one counter per distinct length), not one entry per example.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence, Sized
from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4

Tokenizer = Callable[[str], Any]
"""Maps a text to its token count: an ``int``, a sequence of ids, or a mapping with ``input_ids``
(so a Hugging Face tokenizer works as ``lambda s: tok(s, add_special_tokens=False)``)."""


def _tokens(tokenizer: Tokenizer, text: str) -> int:
    out = tokenizer(text)
    if isinstance(out, int):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if isinstance(out, Sized):
        return len(out)
    raise TypeError(
        f"tokenizer returned {type(out).__name__}; expected an int, a sequence or a mapping with input_ids"
    )


def count_tokens(texts: Sequence[str], messages: int, tokenizer: Tokenizer | None = None) -> int:
    """Tokens of one training sequence made of ``texts`` in ``messages`` turns."""
    overhead = MESSAGE_OVERHEAD_TOKENS * messages
    if tokenizer is None:
        return sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts) + overhead
    return sum(_tokens(tokenizer, t) for t in texts if t) + overhead


class LengthStats:
    """Accumulates lengths; :meth:`summary` gives min/mean/percentiles/max and truncation."""

    def __init__(self, max_seq_length: int | None = None) -> None:
        self.max_seq_length = max_seq_length
        self._hist: Counter[int] = Counter()
        self._n = 0
        self._total = 0
        self.truncated = 0

    def add(self, tokens: int) -> None:
        self._hist[tokens] += 1
        self._n += 1
        self._total += tokens
        if self.max_seq_length is not None and tokens > self.max_seq_length:
            self.truncated += 1

    def __len__(self) -> int:
        return self._n

    def percentile(self, q: float) -> int:
        """The smallest length with at least ``q`` of the examples at or below it."""
        if not self._n:
            return 0
        rank = max(1, math.ceil(q * self._n))
        seen = 0
        for length in sorted(self._hist):
            seen += self._hist[length]
            if seen >= rank:
                return length
        return max(self._hist)

    def summary(self) -> dict[str, Any]:
        if not self._n:
            return {"count": 0}
        return {
            "count": self._n,
            "min": min(self._hist),
            "mean": round(self._total / self._n, 1),
            "p50": self.percentile(0.5),
            "p95": self.percentile(0.95),
            "p99": self.percentile(0.99),
            "max": max(self._hist),
            "max_seq_length": self.max_seq_length,
            "truncated": self.truncated,
            "truncated_share": round(self.truncated / self._n, 4),
        }
