"""Near-duplicate detection (optional): MinHash over word shingles, LSH banding, then a check.

An example is a near-duplicate when the estimated Jaccard similarity of its shingle set with an
*earlier kept* example is at least ``threshold``. At the default, 0.8, a copy with up to one
word in 27 changed, or with up to a quarter more text added, is a near-duplicate (with k of n words
changed, J = (n − 2 − 3k) / (n − 2 + 3k)); punctuation, spacing and case never count. The first
one wins and is kept, as with exact duplicates. Only kept examples are indexed, so in a chain
a ≈ b ≈ c, b is dropped and c is kept unless it is close to a.

Shingles. Each field of the example (a chat turn; instruction / input / output; prompt /
completion; prompt / chosen / rejected) is NFKC-normalized, case-folded and cut into words: the
runs of ``\\w`` (letters, digits, "_"), so punctuation and spacing do not count. Every 3
consecutive words of one field are a shingle; shingles never cross fields; a field of 3 words or
fewer is one shingle. A field that sets the scene rather than carries the example — a chat
``system`` turn, an ``instruction`` followed by a non-empty ``input`` — is *one* shingle whatever
its length: two chats that share a 300-word system prompt but differ in their user and assistant
turns share one shingle out of dozens, not most of them. A preamble repeated *inside* a string
(a prompt-completion prompt, a string preference prompt, an instruction without input) counts word
by word: examples whose own words are fewer than an eighth of that preamble's are near-duplicates
of each other — put such a preamble in a system turn. Three words rather than five: changing one
word of a 40-word text changes 3 of 38 shingles (Jaccard 35/41 = 0.85, dropped) where 5-word
shingles would change 5 of 36 (31/41 = 0.76, kept). Text written without spaces (Chinese,
Japanese, Thai) is one "word" per run, so such examples compare almost as whole sentences.

Sketch. One-permutation MinHash: a word is hashed once (:func:`~kubetune.data.dedup.hash64`,
cached), a shingle's hash is CPython's ``hash()`` of the tuple of its words' hashes (integers are
not salted, so it is the same in every run; it keeps the per-shingle work in C). The top 7 bits pick
one of 128 bins; each bin keeps its smallest hash. The stored signature is 1 byte per bin (0: empty,
else 1 + the minimum mod 255). Similarity is estimated as (bins equal and not empty) / (bins not
empty in either): unbiased, sd 0.023-0.034 around the true Jaccard for texts of 12 to 300 words
(measured); the 1-byte values add a 1/255 chance of a false match per bin. Each shingle is hashed
once, not 128 times as with 128 permutations: that is what makes pure Python fast enough.

Candidates. Bins 64..127 and 0..31 (96 bins) form 16 bands of 6; a band's key is the hash of its
six minima (an empty bin counts as the value -1; a band with all six empty is skipped). One
open-addressing table maps a key to the first kept example that had it. With every bin filled a
pair shares a band with probability 1 − (1 − J⁶)¹⁶: 0.992 at J = 0.8, 0.53 at 0.6, 0.06 at 0.4;
empty bins agree too, so short texts get more candidates. Each candidate (16 at most) is checked
on the signatures. Measured on texts of 8 to 600 words with a few words changed: of the 1,911
pairs whose estimate reached 0.8, the banding missed 1 (8 words, estimate exactly 0.8). A
threshold below ~0.7 loses recall to the banding.

Memory per kept example: the 128-byte signature and up to 16 table slots of 8 bytes (a 32-bit key
fingerprint and a 32-bit example number) at 35-70 % load, plus a copy of the table while it
doubles. Measured: 350-465 bytes per example on 100,000 examples of random words (16 slots each),
210-300 bytes on the benchmark's templated chats, where many band keys repeat. Dropped examples
cost nothing; word hashes are cached for up to 65,536 words (~8 MiB).

Speed (``benchmarks/data_preflight.py``, 51,044 chat lines of ~535 bytes, 2 shared cores): the
whole preflight with ``pii: off`` ran at 2.9 MB/s with near-duplicates and 13 MB/s without, i.e.
~140 µs per example for this module — less than PII redaction costs (2.0 MB/s in the same run).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

from kubetune.data.dedup import SlotTable, fold, hash64
from kubetune.data.formats import Format

DEFAULT_THRESHOLD = 0.8
SHINGLE_WORDS = 3
BINS = 128
BANDS = 16
ROWS = 6

# Shingle hashes are signed 64-bit (CPython's hash()); the top 7 bits (h >> 57, in -64..63) pick
# the bin, which is also the bin's index in the signature as Python reads a negative index.
_BIN_SHIFT = 64 - 7  # BINS == 1 << 7
_BAND_BINS = range(-64, -64 + BANDS * ROWS)
_EMPTY_BIN = -1  # hash() never returns -1
_EMPTY_BAND = hash((_EMPTY_BIN,) * ROWS)
_WORD = re.compile(r"\w+")
# ASCII letters, digits and "_" (what \w matches in ASCII) are kept, every other byte becomes a space.
_ASCII_WORD_BYTES = bytes(c if (c < 128 and chr(c).isalnum()) or c == 0x5F else 0x20 for c in range(256))


# (text, whole): ``whole`` makes the field one shingle, whatever its length.
Field = tuple[str, bool]


def _messages(messages: list[dict[str, Any]]) -> list[Field]:
    return [(m["content"], m["role"] == "system") for m in messages]


def _side(value: Any) -> list[Field]:
    return _messages(value) if isinstance(value, list) else [(str(value), False)]


def fields(record: dict[str, Any], fmt: Format) -> list[Field]:
    """The fields of a *valid* record that shingles are taken from (see the module docstring)."""
    if fmt is Format.INSTRUCTION:
        extra = record.get("input", "")
        return [(record["instruction"], bool(extra.strip())), (extra, False), (record["output"], False)]
    if fmt is Format.CHAT:
        return _messages(record["messages"])
    if fmt is Format.PROMPT_COMPLETION:
        return [(record["prompt"], False), (record["completion"], False)]
    return [*_side(record.get("prompt", "")), *_side(record["chosen"]), *_side(record["rejected"])]


def words(text: str) -> list[str]:
    """The words of ``text`` after NFKC and case folding: the runs of ``\\w`` (letters, digits, "_")."""
    if text.isascii():  # the same words, five times faster than the regular expression
        return text.lower().encode().translate(_ASCII_WORD_BYTES).decode().split()
    return _WORD.findall(fold(text))


class WordHashes(dict[str, int]):
    """word → hash64(word), computed on first use; cleared when it reaches ``limit`` words."""

    def __init__(self, limit: int = 1 << 16) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, word: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        h = self[word] = hash64(word)
        return h


def shingle_hashes(parts: Iterable[Field], cache: dict[str, int] | None = None) -> list[int]:
    """A signed 64-bit hash of every shingle of ``parts`` (repeats included): ``hash()`` of the
    tuple of its words' hash64 values. ``cache`` keeps word hashes across calls."""
    lookup = (cache if cache is not None else WordHashes()).__getitem__
    out: list[int] = []
    for text, whole in parts:
        h = list(map(lookup, words(text)))
        if not h:
            continue
        if whole or len(h) <= SHINGLE_WORDS:
            out.append(hash(tuple(h)))
        else:
            out.extend(map(hash, zip(*(h[i:] for i in range(SHINGLE_WORDS)), strict=False)))
    return out


class Sketch:
    """One example's MinHash: its 1-byte-per-bin signature and its LSH band keys."""

    __slots__ = ("bands", "signature")

    def __init__(self, hashes: list[int]) -> None:
        # Largest first, so that each bin's dict entry ends with its smallest hash.
        hashes = sorted(hashes, reverse=True)
        mins = dict(zip(map(_BIN_SHIFT.__rrshift__, hashes), hashes, strict=True))
        signature = bytearray(BINS)
        for b, m in mins.items():
            signature[b] = 1 + m % 255
        self.signature = bytes(signature)
        rows = map(mins.get, _BAND_BINS, repeat(_EMPTY_BIN))
        # A value falls in one bin only, so equal keys of different bands are unlikely enough
        # without mixing in the band number; all-empty bands would match any short text: skipped.
        self.bands = [key for key in map(hash, zip(*[rows] * ROWS, strict=True)) if key != _EMPTY_BAND]


def sketch(parts: Iterable[Field], cache: dict[str, int] | None = None) -> Sketch | None:
    """The sketch of an example's fields; None for one without a single word. Pure: the same in
    every process and run, so a parallel preflight sketches examples where it checks them for PII."""
    hashes = shingle_hashes(parts, cache)
    return Sketch(hashes) if hashes else None


def similarity(a: bytes | bytearray, b: bytes | bytearray) -> float:
    """Estimated Jaccard similarity of two signatures: equal non-empty bins / bins non-empty in either."""
    x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
    n = len(a)
    both_empty = (x | y).to_bytes(n, "little").count(0)
    equal = (x ^ y).to_bytes(n, "little").count(0) - both_empty
    return equal / (n - both_empty) if n > both_empty else 0.0


class _BandTable(SlotTable):
    """Band key → number of the first example that had it.

    A slot holds the key's top 32 bits (the fingerprint, which also picks the slot) and the example
    number + 1. Two keys with the same fingerprint read as one: the example found is only a
    candidate, checked afterwards.
    """

    __slots__ = ()

    def _find(self, fp: int) -> tuple[int, int]:
        """(slot, entry) for fingerprint ``fp``: the matching entry, or the empty slot that ends the run."""
        table, mask = self._table, self._mask
        i = fp & mask
        while True:
            v = table[i]
            if v == 0 or v >> 32 == fp:
                return i, v
            i = (i + 1) & mask

    def lookup(self, key: int) -> tuple[int, int]:
        """(slot, example number) for ``key``; the number is -1 when the key is not there."""
        i, v = self._find((key >> 32) & 0xFFFF_FFFF)
        return i, (v & 0xFFFF_FFFF) - 1

    def add(self, slot: int, key: int, ident: int) -> None:
        """Put ``ident`` under ``key`` at ``slot`` (from :meth:`lookup`, or found again if since taken).

        The table does not grow here, so slots from earlier lookups stay valid: call
        :meth:`grow_if_full` after a batch.
        """
        fp = (key >> 32) & 0xFFFF_FFFF
        if self._table[slot]:
            slot, v = self._find(fp)
            if v:
                return
        self._table[slot] = (fp << 32) | (ident + 1)
        self._size += 1

    def grow_if_full(self) -> None:
        if self._full():
            for entry in self._double():
                if entry:
                    self._table[self._find(entry >> 32)[0]] = entry


class NearDuplicates:
    """Streaming near-duplicate index: :meth:`check` says whether an example is close to one kept earlier."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._bands = _BandTable()
        self._signatures = bytearray()
        self._kept = 0
        self._words = WordHashes()

    def __len__(self) -> int:
        return self._kept

    def check(self, parts: Sequence[Field]) -> bool:
        """True when ``parts`` is a near-duplicate of a kept example; else it is kept (indexed).

        An example without a single word (only punctuation, say) is never a near-duplicate and is
        not indexed.
        """
        return self.check_sketch(self.sketch(parts))

    def sketch(self, parts: Iterable[Field]) -> Sketch | None:
        """:func:`sketch` with this index's word-hash cache."""
        return sketch(parts, self._words)

    def check_sketch(self, sketch: Sketch | None) -> bool:
        """:meth:`check` for a sketch made beforehand (:func:`sketch`, in another process perhaps):
        the same verdict, the same index."""
        if sketch is None:
            return False
        sig, table = sketch.signature, self._bands
        misses: list[tuple[int, int]] = []
        seen: set[int] = set()
        for key in sketch.bands:
            slot, ident = table.lookup(key)
            if ident < 0:
                misses.append((slot, key))
            elif ident not in seen:
                seen.add(ident)
                if similarity(sig, self._signatures[ident * BINS : (ident + 1) * BINS]) >= self.threshold:
                    return True
        ident = self._kept
        self._kept += 1
        self._signatures += sig
        for slot, key in misses:
            table.add(slot, key, ident)
        table.grow_if_full()
        return False

    @property
    def nbytes(self) -> int:
        return self._bands.nbytes + len(self._signatures)
