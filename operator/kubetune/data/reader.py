"""Streaming reader: JSONL, a JSON array, or gzip of either, one record at a time.

Memory stays bounded by ``max_line_bytes`` (plus a read chunk), whatever the file size:

- JSONL: each line is read with a size cap; a longer line is reported (``line_too_long``) and the
  rest of it is skipped without being held in memory.
- JSON array (the first non-blank byte is ``[``): elements are decoded one at a time from a sliding
  buffer; an element over the cap, or a syntax error, stops the file (an array cannot be resynced).
- gzip is detected by its magic bytes, not the file name.

Per-line problems come back as :class:`Item` with an ``error``; problems that end the file (missing,
empty, binary, truncated gzip, broken array) raise :class:`DataFileError` with the line reached.

:func:`read_items` splits the work for a parallel preflight: it yields JSONL lines undecoded
(``Item.raw``), and :func:`parse` decodes one in whichever process checks it. :func:`read_records`
is the two together: the same items, in the same order, as one process sees them.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.data.formats import ErrorClass, RecordError

DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB per record
_CHUNK = 1 << 16
_SNIFF = 8192

# Signatures of files people upload by mistake, for a helpful message.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (unzip it first)"),
    (b"PAR1", "a Parquet file (convert it to JSONL)"),
    (b"BZh", "a bzip2 file (only gzip is read)"),
    (b"\xfd7zXZ\x00", "an xz file (only gzip is read)"),
    (b"(\xb5/\xfd", "a zstd file (only gzip is read)"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
    (b"SQLite format 3", "an SQLite database"),
    (b"\x7fELF", "an executable"),
)


class DataFileError(Exception):
    """The file cannot be read (further). ``line`` is the 1-based line where reading stopped, if known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Item:
    """One record (``value``) or one bad line (``error``), with the line where it starts; or a JSONL
    line not decoded yet (``raw``, from :func:`read_items`: :func:`parse` makes it one of the others)."""

    line: int
    value: Any = None
    error: RecordError | None = None
    raw: bytes | None = None


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _open(path: Path) -> io.BufferedReader:
    if not path.exists():
        raise DataFileError(f"file not found: {path}")
    if path.is_dir():
        raise DataFileError(f"{path} is a directory, not a data file")
    try:
        raw = path.open("rb")
    except OSError as e:
        raise DataFileError(f"cannot open {path}: {e.strerror or e}") from None
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=_CHUNK)
    return io.BufferedReader(raw, buffer_size=_CHUNK)


def _sniff(stream: io.BufferedReader) -> bytes:
    """Look at the start of the (decompressed) stream; raise for empty and binary files."""
    head = stream.peek(_SNIFF)[:_SNIFF]
    if not head:
        raise DataFileError("file is empty")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise DataFileError(f"file looks like {what}, not JSONL or JSON")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFileError("file is UTF-16 encoded; save it as UTF-8 JSONL")
    if b"\x00" in head:
        raise DataFileError(
            "file looks binary (NUL bytes near the start); expected JSONL, a JSON array, or gzip of either"
        )
    return head


def read_records(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Item]:
    """Yield the records of ``path`` in order. Raises :class:`DataFileError` for unreadable files."""
    return map(parse, read_items(path, max_line_bytes=max_line_bytes))


def read_items(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Item]:
    """:func:`read_records` without decoding JSONL lines: each comes with ``raw`` set (its bytes,
    non-blank, a first line's BOM removed), for :func:`parse`. Array elements, and lines too long to
    keep, come as :func:`read_records` gives them. Raises :class:`DataFileError` as it does."""
    path = Path(path)
    stream = _open(path)
    line = 0
    try:
        head = _sniff(stream)
        first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if first == b"[":
            yield from _read_array(stream, max_line_bytes)
        else:
            for item in _read_jsonl(stream, max_line_bytes):
                line = item.line
                yield item
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        where = f" after line {line}" if line else ""
        raise DataFileError(
            f"gzip stream is truncated or corrupt{where} ({e}); re-create the .gz file", line + 1
        ) from None
    except OSError as e:
        raise DataFileError(
            f"read error{' after line ' + str(line) if line else ''}: {e}", line + 1
        ) from None
    finally:
        stream.close()


def _read_jsonl(stream: io.BufferedReader, limit: int) -> Iterator[Item]:
    line = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        line += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            total = len(raw)
            while True:  # skip the rest of the line without keeping it
                rest = stream.readline(_CHUNK)
                total += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield Item(
                line,
                error=RecordError(
                    ErrorClass.LINE_TOO_LONG,
                    f"line is {human_bytes(total)}, over the {human_bytes(limit)} limit per record",
                ),
            )
            continue
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        yield Item(line, raw=raw)


def parse(item: Item) -> Item:
    """A line from :func:`read_items` decoded: the record, or why it is not one (UTF-8, JSON)."""
    raw, line = item.raw, item.line
    if raw is None:
        return item
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Item(
            line,
            error=RecordError(
                ErrorClass.NON_UTF8, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"
            ),
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return Item(line, error=RecordError(ErrorClass.INVALID_JSON, f"invalid JSON: {e.msg} (column {e.colno})"))
    except RecursionError:
        return Item(line, error=RecordError(ErrorClass.INVALID_JSON, "invalid JSON: nested too deeply"))
    return Item(line, value)


def _read_array(stream: io.BufferedReader, limit: int) -> Iterator[Item]:
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf = ""
    pos = 0
    line = 1  # line number at buf[0]
    eof = False

    def more() -> bool:
        nonlocal buf, eof
        if eof:
            return False
        chunk = stream.read(_CHUNK)
        try:
            buf += utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            raise DataFileError(
                f"not valid UTF-8 near line {line + buf.count(chr(10))}", line + buf.count("\n")
            ) from None
        if not chunk:
            eof = True
        return True

    def skip_ws() -> bool:
        """Move ``pos`` to the next non-blank char; False at the end of the input."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buf):
                return True
            if not more():
                return False

    def here() -> int:
        return line + buf.count("\n", 0, pos)

    more()
    skip_ws()
    pos += 1  # the "["
    index = 0
    while True:
        if not skip_ws():
            raise DataFileError(
                f"JSON array is not closed (missing ']' at the end, after {index} elements)", here()
            )
        if buf[pos] == "]":
            pos += 1
            if skip_ws():
                raise DataFileError("unexpected data after the end of the JSON array", here())
            return
        if index:
            if buf[pos] != ",":
                raise DataFileError(f"invalid JSON array: expected ',' or ']' after element {index}", here())
            pos += 1
            if not skip_ws():
                raise DataFileError("JSON array is not closed (missing ']' at the end)", here())
        # Drop what has been consumed, keeping the line count.
        line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:], 0
        while True:
            try:
                value, end = decoder.raw_decode(buf, 0)
                break
            except json.JSONDecodeError as e:
                if len(buf) > limit:
                    raise DataFileError(
                        f"array element {index + 1} is over the {human_bytes(limit)} limit per record", line
                    ) from None
                if not more():
                    raise DataFileError(
                        f"invalid JSON in array element {index + 1}: {e.msg}",
                        line + buf.count("\n", 0, e.pos),
                    ) from None
            except RecursionError:
                raise DataFileError(f"array element {index + 1} is nested too deeply", line) from None
        if end > limit:
            raise DataFileError(
                f"array element {index + 1} is over the {human_bytes(limit)} limit per record", line
            )
        yield Item(line, value)
        index += 1
        pos = end
