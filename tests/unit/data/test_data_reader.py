"""Input shapes (JSONL, JSON array, gzip) and bad files: each a clear error with a line number."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kubetune.data.formats import ErrorClass
from kubetune.data.reader import DataFileError, read_records


def _items(path: Path, **kw: int) -> list:
    return list(read_records(path, **kw))


def test_jsonl_line_numbers_skip_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n   \n{"a": 2}\n{"a": 3}')  # no final newline
    items = _items(p)
    assert [(i.line, i.value) for i in items] == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]


def test_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert [i.value for i in _items(p)] == [{"a": 1}, {"a": 2}]


def test_invalid_json_and_non_utf8_are_per_line(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": \n{"a": "caf\xe9"}\n{"a": 4}\n')
    items = _items(p)
    assert items[0].value == {"a": 1}
    assert (
        items[1].error is not None and items[1].error.kind is ErrorClass.INVALID_JSON and items[1].line == 2
    )
    assert items[2].error is not None and items[2].error.kind is ErrorClass.NON_UTF8
    assert "0xe9" in items[2].error.message and "column 11" in items[2].error.message
    assert items[3].value == {"a": 4} and items[3].line == 4


def test_oversize_line_is_skipped_not_held(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    with p.open("w") as f:
        f.write('{"a": 1}\n')
        f.write('{"a": "' + "x" * (20 << 20) + '"}\n')  # one 20 MB line
        f.write('{"a": 3}\n')
    items = _items(p)
    assert items[0].value == {"a": 1}
    err = items[1].error
    assert err is not None and err.kind is ErrorClass.LINE_TOO_LONG and items[1].line == 2
    assert "20.0 MiB" in err.message and "1.0 MiB" in err.message
    assert items[2].value == {"a": 3} and items[2].line == 3


def test_configurable_line_limit(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": "' + "x" * 200 + '"}\n{"a": 1}\n')
    items = _items(p, max_line_bytes=100)
    assert items[0].error is not None and items[0].error.kind is ErrorClass.LINE_TOO_LONG
    assert items[1].value == {"a": 1}


def test_json_array(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    rows = [{"i": i, "t": "line\nbreak"} for i in range(2000)]
    p.write_text(json.dumps(rows, indent=2))
    items = _items(p)
    assert [i.value for i in items] == rows
    assert items[0].line == 2 and items[1].line > items[0].line


def test_json_array_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text('[\n{"a": 1},\n{"a": 2,\n')
    with pytest.raises(DataFileError, match="invalid JSON in array element 2") as e:
        _items(p)
    assert e.value.line in (3, 4)  # where the element starts, or where the parser stopped
    p.write_text('[{"a": 1}, {"a": 2}')
    with pytest.raises(DataFileError, match="not closed"):
        _items(p)
    p.write_text('[{"a": 1}] {"b": 2}')
    with pytest.raises(DataFileError, match="after the end"):
        _items(p)
    p.write_text("[]")
    assert _items(p) == []


@pytest.mark.parametrize("array", [False, True])
def test_gzip_of_either(tmp_path: Path, array: bool) -> None:
    rows = [{"i": i} for i in range(100)]
    body = json.dumps(rows) if array else "\n".join(json.dumps(r) for r in rows)
    p = tmp_path / "data.bin"  # detected by magic bytes, not the name
    p.write_bytes(gzip.compress(body.encode()))
    assert [i.value for i in _items(p)] == rows


def test_truncated_gzip(tmp_path: Path) -> None:
    body = "\n".join(json.dumps({"i": i, "pad": "x" * 50}) for i in range(5000)).encode()
    data = gzip.compress(body)
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(DataFileError, match="gzip stream is truncated or corrupt") as e:
        for item in read_records(p):
            got.append(item)
    assert got and e.value.line == got[-1].line + 1


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"")
    with pytest.raises(DataFileError, match="file is empty"):
        _items(p)
    p.write_bytes(gzip.compress(b""))
    with pytest.raises(DataFileError, match="file is empty"):
        _items(p)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (bytes(range(256)) * 10, "binary"),
        (b"PK\x03\x04rest", "ZIP"),
        (b"PAR1....", "Parquet"),
        ('{"a": 1}\n'.encode("utf-16"), "UTF-16"),
    ],
)
def test_binary_files(tmp_path: Path, data: bytes, needle: str) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(data)
    with pytest.raises(DataFileError, match=needle):
        _items(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found"):
        _items(tmp_path / "nope.jsonl")
    with pytest.raises(DataFileError, match="directory"):
        _items(tmp_path)
