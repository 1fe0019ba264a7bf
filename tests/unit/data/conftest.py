"""Fixtures for the data preflight tests: tiny datasets written to tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


def _chat(i: int, extra: str = "") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Question number {i}? {extra}".strip()},
            {"role": "assistant", "content": f"Answer number {i}."},
        ]
    }


@pytest.fixture
def chat() -> Callable[..., dict[str, Any]]:
    """chat(i) -> a valid chat example, distinct for each i."""
    return _chat


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """write_jsonl(rows, name) -> path; dict rows are JSON-encoded, str rows written as they are."""

    def write(rows: Iterable[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(row if isinstance(row, str) else json.dumps(row))
                f.write("\n")
        return path

    return write
