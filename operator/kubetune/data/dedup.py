"""Exact and normalized duplicate detection, by 64-bit hashes only; near-duplicates on request.

- ``exact``: the canonical content (format fields in a fixed order, extra keys ignored) is equal.
- ``normalized``: equal after Unicode NFKC, case folding and collapsing whitespace.
- ``near`` (optional, :mod:`kubetune.data.near_dup`): an estimated Jaccard similarity of word
  shingles ≥ 0.8 with an earlier kept example; 200-500 more bytes per kept example.

Memory: two flat open-addressing tables (:class:`HashSet`) of 8-byte slots, one for exact and one
for normalized hashes: ~32-48 bytes per example with table slack and the copy made while a table
doubles (~40 MiB per million examples, measured), whatever the example size. A 64-bit hash collision (two different examples taken as duplicates) has odds of about
n²/2⁶⁵: ~3·10⁻⁸ for a million examples.
"""

from __future__ import annotations

import hashlib
import unicodedata
from array import array
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kubetune.data.near_dup import Field, NearDuplicates, Sketch

_EMPTY = 0


class SlotTable:
    """A power-of-two ``array('Q')`` of 8-byte slots for open addressing; 0 is an empty slot."""

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

    def _full(self) -> bool:
        return self._size * 10 > len(self._table) * 7

    def _double(self) -> array[int]:
        """Replace the slots by twice as many empty ones; return the old ones to put back."""
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        self._mask = len(self._table) - 1
        return old

    @property
    def nbytes(self) -> int:
        return len(self._table) * 8


class HashSet(SlotTable):
    """A set of non-zero 64-bit integers in one ``array('Q')`` (linear probing)."""

    __slots__ = ()

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
                if self._full():
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
        old = self._double()
        self._size = 0
        for v in old:
            if v != _EMPTY:
                self.add(v)


def hash64(text: str, *, key: bytes = b"") -> int:
    """A keyed 64-bit BLAKE2b hash of ``text``."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(), "little"
    )


def fold(text: str) -> str:
    """NFKC and case folding (``normalize`` without collapsing whitespace)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.casefold()


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: 'Hello  World' and 'hello world' compare equal."""
    return " ".join(fold(text).split())


class Duplicate(StrEnum):
    EXACT = "exact"
    NORMALIZED = "normalized"
    NEAR = "near"


class Deduplicator:
    """Remembers the examples seen; :meth:`check` says whether one is a repeat, and of which kind.

    With ``near`` (a :class:`~kubetune.data.near_dup.NearDuplicates`), an example that is neither
    an exact nor a normalized repeat is also checked against the earlier kept examples.
    """

    def __init__(self, near: NearDuplicates | None = None) -> None:
        self._exact = HashSet()
        self._normalized = HashSet()
        self._near = near

    def check(self, canonical: str, fields: Sequence[Field] | None = None) -> Duplicate | None:
        """``fields``: the example's near-duplicate view (``near_dup.fields``); by default the
        canonical text as one field."""
        near = self._near.sketch([(canonical, False)] if fields is None else fields) if self._near is not None else None
        return self.check_hashes(hash64(canonical), hash64(normalize(canonical)), near)

    def check_hashes(self, exact: int, norm: int, near: Sketch | None = None) -> Duplicate | None:
        """:meth:`check` for an example hashed (and sketched) beforehand, in another process
        perhaps: ``hash64`` of its canonical text and of that text normalized."""
        new_exact = self._exact.add(exact)
        new_norm = self._normalized.add(norm)
        if not new_exact:
            return Duplicate.EXACT
        if not new_norm:
            return Duplicate.NORMALIZED
        if self._near is not None and self._near.check_sketch(near):
            return Duplicate.NEAR
        return None

    @property
    def nbytes(self) -> int:
        return self._exact.nbytes + self._normalized.nbytes + (self._near.nbytes if self._near else 0)
