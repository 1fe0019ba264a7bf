"""Exact and normalized duplicate detection, by 64-bit hashes only.

- ``exact``: the canonical content (format fields in a fixed order, extra keys ignored) is equal.
- ``normalized``: equal after Unicode NFKC, case folding and collapsing whitespace.

Memory: two flat open-addressing tables (:class:`HashSet`) of 8-byte slots, one for exact and one
for normalized hashes: ~32-48 bytes per example with table slack and the copy made while a table
doubles (~40 MiB per million examples, measured), whatever the example size. A 64-bit hash collision (two different examples taken as duplicates) has odds of about
n²/2⁶⁵: ~3·10⁻⁸ for a million examples. Near-duplicates are not detected (yet).
"""

from __future__ import annotations

import hashlib
import unicodedata
from array import array
from enum import StrEnum

_EMPTY = 0


class HashSet:
    """A set of non-zero 64-bit integers in one ``array('Q')`` (linear probing)."""

    __slots__ = ("_mask", "_size", "_table")

    def __init__(self, capacity: int = 1 << 12) -> None:
        size = 1
        while size < capacity:
            size <<= 1
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, h: int) -> bool:
        """Insert ``h``; True when it was not there yet."""
        h = h or 1
        table, mask = self._table, self._mask
        i = h & mask
        while True:
            v = table[i]
            if v == _EMPTY:
                table[i] = h
                self._size += 1
                if self._size * 10 > len(table) * 7:
                    self._grow()
                return True
            if v == h:
                return False
            i = (i + 1) & mask

    def __contains__(self, h: object) -> bool:
        if not isinstance(h, int):
            return False
        h = h or 1
        table, mask = self._table, self._mask
        i = h & mask
        while True:
            v = table[i]
            if v == _EMPTY:
                return False
            if v == h:
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        self._mask = len(self._table) - 1
        self._size = 0
        for v in old:
            if v != _EMPTY:
                self.add(v)

    @property
    def nbytes(self) -> int:
        return len(self._table) * 8


def hash64(text: str, *, key: bytes = b"") -> int:
    """A keyed 64-bit BLAKE2b hash of ``text``."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(), "little"
    )


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: 'Hello  World' and 'hello world' compare equal."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.casefold().split())


class Duplicate(StrEnum):
    EXACT = "exact"
    NORMALIZED = "normalized"


class Deduplicator:
    """Remembers the examples seen; :meth:`check` says whether one is a repeat, and of which kind."""

    def __init__(self) -> None:
        self._exact = HashSet()
        self._normalized = HashSet()

    def check(self, canonical: str) -> Duplicate | None:
        exact = hash64(canonical)
        norm = hash64(normalize(canonical))
        new_exact = self._exact.add(exact)
        new_norm = self._normalized.add(norm)
        if not new_exact:
            return Duplicate.EXACT
        if not new_norm:
            return Duplicate.NORMALIZED
        return None

    @property
    def nbytes(self) -> int:
        return self._exact.nbytes + self._normalized.nbytes
