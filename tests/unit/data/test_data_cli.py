"""``kubetune check-data``: exit codes, JSON keys, readable text, no tracebacks on bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.cli.check_data import check_data_main


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_ok_exits_0_with_json_keys(tmp_path: Path, chat: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.jsonl", [chat(i) for i in range(210)])
    assert check_data_main([str(data), "--format", "chat", "--output", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"ok", "examples", "invalid", "duplicates", "errors", "pii", "reason"} <= set(out)
    assert out["ok"] is True and out["examples"] == 210


def test_not_ok_exits_1(tmp_path: Path, chat: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.jsonl", [chat(i) for i in range(50)])
    assert check_data_main([str(data), "--format", "chat", "--output", "json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["reason"] == "InsufficientData"
    assert check_data_main([str(data), "--format", "chat", "--min-examples", "50"]) == 0
    assert capsys.readouterr().out.startswith("OK: 50 usable examples")


def test_text_output_lists_errors_by_line(
    tmp_path: Path, chat: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "d.jsonl", [chat(i) for i in range(210)] + ['{"messages": 1}'])
    assert check_data_main([str(data), "--format", "chat"]) == 1
    text = capsys.readouterr().out
    assert text.startswith("NOT OK (DataInvalid)")
    assert 'line 211: field "messages" must be an array of messages, got number' in text


def test_redact_and_reject_flags(tmp_path: Path, chat: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(
        tmp_path / "d.jsonl", [chat(i) for i in range(210)] + [chat(999, "IBAN GB82WEST12345698765432")]
    )
    out = tmp_path / "clean.jsonl"
    assert check_data_main([str(data), "--format", "chat", "--redact", str(out)]) == 0
    assert "<IBAN>" in out.read_text() and "GB82" not in out.read_text()
    capsys.readouterr()
    assert check_data_main([str(data), "--format", "chat", "--pii", "reject", "--output", "json"]) == 1
    printed = capsys.readouterr().out
    assert json.loads(printed)["errors"][0] == {"line": 211, "kind": "pii_found", "message": "contains IBAN"}
    assert "GB82" not in printed


def test_error_policy_golden_and_max_seq_length(
    tmp_path: Path, chat: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "d.jsonl", [chat(i) for i in range(210)] + ["{bad"])
    golden = _write(tmp_path / "g.jsonl", [chat(3)])
    argv = [
        str(data),
        "--format",
        "chat",
        "--error-policy",
        "skip",
        "--max-seq-length",
        "8",
        "--output",
        "json",
    ]
    assert check_data_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["invalid"] == 1 and out["lengths"]["truncated_share"] == 1.0
    assert check_data_main([*argv, "--golden", str(golden)]) == 0  # skip drops the leak
    out = json.loads(capsys.readouterr().out)
    assert out["golden"]["leaked"] == 1 and out["examples"] == 209


@pytest.mark.parametrize("kind", ["empty", "binary", "missing", "truncated-gzip", "huge-line"])
def test_bad_files_exit_1_without_traceback(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "d.jsonl"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 40)
    elif kind == "truncated-gzip":
        blob = gzip.compress(b"".join(b'{"prompt": "p%d", "completion": "c"}\n' % i for i in range(4000)))
        p.write_bytes(blob[: len(blob) // 3])
    elif kind == "huge-line":
        p.write_text('{"prompt": "' + "x" * (20 << 20) + '", "completion": "c"}\n')
    code = check_data_main([str(p), "--format", "prompt-completion"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.out + captured.err
    assert captured.out.startswith("NOT OK (DataInvalid)")


def test_processes_flag(tmp_path: Path, chat: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.jsonl", [chat(i) for i in range(300)])
    assert check_data_main([str(data), "--format", "chat", "--output", "json", "--processes", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["processes"] == 2
    assert check_data_main([str(data), "--format", "chat", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["processes"] == 1  # auto: a small file stays in one process
    assert check_data_main([str(data), "--format", "chat", "--processes", "0"]) == 2
    assert "must be auto or >= 1" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_data_main(["x.jsonl"]) == 2  # --format is required
    assert check_data_main(["x.jsonl", "--format", "alpaca"]) == 2
    assert check_data_main(["x.jsonl", "--format", "chat", "--validation-split", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "validation_split must be in [0, 1)" in err and "Traceback" not in err


def test_pure_core_imports(tmp_path: Path) -> None:
    """kubetune.data (and its CLI) import no kopf, kubernetes or torch; Presidio only when scanning."""
    code = (
        "import sys, kubetune.data, kubetune.cli.check_data\n"
        "bad = [m for m in ('kopf', 'kubernetes', 'torch', 'presidio_analyzer', 'spacy') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_pii_scan_without_presidio_says_what_to_install(tmp_path: Path) -> None:
    """The base install has no Presidio ([data] extra): one line names it, no traceback; --pii off works."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}) + "\n")
    code = (
        "import sys\n"
        "sys.modules['presidio_analyzer'] = None  # as if it were not installed\n"
        "from kubetune.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [sys.executable, "-c", code, "check-data", str(data), "--format", "chat", "--min-examples", "1"]
    scan = subprocess.run(args, capture_output=True, text=True)
    assert scan.returncode == 2 and scan.stdout == ""
    assert scan.stderr.count("\n") == 1 and "pip install 'kubetune[data]'" in scan.stderr
    assert "Traceback" not in scan.stderr
    assert subprocess.run([*args, "--pii", "off"], capture_output=True, text=True).returncode == 0
