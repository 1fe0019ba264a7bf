"""The orchestrated preflight: policies, too little data, dedup, split, golden leakage, outputs."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.data import ErrorClass, Reason, preflight

Rows = Callable[..., Path]


def _rows(chat: Callable[..., dict[str, Any]], n: int, start: int = 0) -> list[dict[str, Any]]:
    return [chat(i) for i in range(start, start + n)]


def test_ok_report_has_the_contract_keys(write_jsonl: Rows, chat: Any) -> None:
    report = preflight(write_jsonl(_rows(chat, 250)), format="chat")
    data = json.loads(report.to_json())
    for key in (
        "ok",
        "examples",
        "invalid",
        "duplicates",
        "errors",
        "pii",
        "reason",
        "warnings",
        "lengths",
        "split",
        "format",
    ):
        assert key in data
    assert data["ok"] is True and data["reason"] is None
    assert data["examples"] == 250 and data["invalid"] == 0 and data["errors"] == []
    assert data["split"]["train"] + data["split"]["validation"] == 250
    assert any("1,000+" in w for w in data["warnings"])  # under 1,000 examples
    summary = report.status_summary()
    assert summary["ok"] is True and summary["examples"] == 250 and "errors" not in summary


def test_insufficient_data_gives_the_numbers(write_jsonl: Rows, chat: Any) -> None:
    rows = [*_rows(chat, 120), chat(1), chat(2), "{oops"]
    report = preflight(write_jsonl(rows), format="chat", error_policy="skip")
    assert not report.ok and report.reason is Reason.INSUFFICIENT_DATA
    assert "found 120 valid examples, need at least 200" in report.message
    assert "don't fine-tune yet" in report.message
    assert report.duplicates == 2 and report.invalid == 1


def test_min_examples_is_configurable(write_jsonl: Rows, chat: Any) -> None:
    assert preflight(write_jsonl(_rows(chat, 10)), format="chat", min_examples=10).ok


def test_fail_policy_lists_all_errors_with_lines_up_to_a_cap(write_jsonl: Rows, chat: Any) -> None:
    rows: list[Any] = _rows(chat, 300)
    rows[4] = "not json"
    rows[9] = {"messages": [{"role": "user", "content": "q"}]}
    rows[19] = {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}
    report = preflight(write_jsonl(rows), format="chat")
    assert not report.ok and report.reason is Reason.DATA_INVALID
    assert [(e.line, e.kind) for e in report.errors] == [
        (5, ErrorClass.INVALID_JSON),
        (10, ErrorClass.NO_ASSISTANT_TURN),
        (20, ErrorClass.UNKNOWN_ROLE),
    ]
    assert report.invalid == 3 and report.error_counts == {
        "invalid_json": 1,
        "no_assistant_turn": 1,
        "unknown_role": 1,
    }
    assert "errorPolicy: skip" in report.message

    many = preflight(write_jsonl(["{bad"] * 80 + _rows(chat, 300)), format="chat", max_errors=50)
    assert len(many.errors) == 50 and many.errors_omitted == 30 and many.invalid == 80


def test_skip_policy_drops_bad_lines_until_the_fraction(write_jsonl: Rows, chat: Any) -> None:
    rows: list[Any] = [*_rows(chat, 300), "{bad", {"messages": []}]
    report = preflight(write_jsonl(rows), format="chat", error_policy="skip")
    assert report.ok and report.examples == 300 and report.invalid == 2
    assert any("dropped 2 bad records" in w for w in report.warnings)

    rows = [*_rows(chat, 250), *(["{bad"] * 40)]
    report = preflight(write_jsonl(rows), format="chat", error_policy="skip", max_bad_fraction=0.1)
    assert not report.ok and report.reason is Reason.DATA_INVALID and "over the 10%" in report.message


def test_dedup_exact_and_normalized(write_jsonl: Rows, chat: Any) -> None:
    base = chat(1)
    shouty = {
        "messages": [
            {"role": m["role"], "content": "  " + m["content"].upper() + " "} for m in base["messages"]
        ]
    }
    extra_key = {**base, "id": 7}  # extra keys do not make an example different
    rows = [*_rows(chat, 250), base, shouty, extra_key]
    report = preflight(write_jsonl(rows), format="chat")
    assert report.ok and report.examples == 250
    assert (report.duplicates, report.duplicates_exact, report.duplicates_normalized) == (3, 2, 1)


def test_split_is_deterministic_and_seeded(write_jsonl: Rows, chat: Any, tmp_path: Path) -> None:
    data = write_jsonl(_rows(chat, 2000))

    def run(seed: int, tag: str) -> tuple[str, str]:
        train, val = tmp_path / f"train-{tag}.jsonl", tmp_path / f"val-{tag}.jsonl"
        r = preflight(
            data,
            format="chat",
            seed=seed,
            validation_split=0.1,
            train_out=train,
            validation_out=val,
            pii="off",
        )
        assert r.ok and r.split is not None
        assert r.split.train == len(train.read_text().splitlines())
        assert r.split.validation == len(val.read_text().splitlines())
        assert 120 <= r.split.validation <= 280  # ~10% of 2000
        return train.read_text(), val.read_text()

    a, b, c = run(42, "a"), run(42, "b"), run(7, "c")
    assert a == b
    assert a != c
    # An example keeps its side when other lines change.
    data2 = write_jsonl(_rows(chat, 1000), name="half.jsonl")
    r = preflight(
        data2, format="chat", seed=42, validation_split=0.1, validation_out=tmp_path / "v2.jsonl", pii="off"
    )
    assert r.ok
    assert set((tmp_path / "v2.jsonl").read_text().splitlines()) <= set(a[1].splitlines())


def test_golden_leakage_is_an_error(write_jsonl: Rows, chat: Any) -> None:
    golden = write_jsonl(
        [chat(5), {"prompt": "Question number 9?", "expected": "whatever"}], name="golden.jsonl"
    )
    data = write_jsonl(_rows(chat, 300))
    report = preflight(data, format="chat", golden_path=golden)
    assert not report.ok and report.reason is Reason.DATA_INVALID
    assert report.golden is not None and report.golden.examples == 2 and report.golden.leaked == 2
    assert [(e.line, e.kind) for e in report.errors] == [
        (6, ErrorClass.GOLDEN_LEAKAGE),
        (10, ErrorClass.GOLDEN_LEAKAGE),
    ]
    assert "golden line 1" in report.errors[0].message and "same prompt" in report.errors[1].message

    skipped = preflight(data, format="chat", golden_path=golden, error_policy="skip")
    assert skipped.ok and skipped.examples == 298 and any("golden" in w for w in skipped.warnings)


def test_pii_redact_writes_placeholders(write_jsonl: Rows, chat: Any, tmp_path: Path) -> None:
    rows = [*_rows(chat, 250), chat(900, "mail me at ann.lee@example.com or 212-555-0147")]
    out = tmp_path / "clean.jsonl"
    report = preflight(write_jsonl(rows), format="chat", redact_out=out)
    assert report.ok and report.pii == {"EMAIL": 1, "PHONE": 1} and report.pii_lines == 1
    text = out.read_text()
    assert "ann.lee@example.com" not in text and "<EMAIL>" in text and "<PHONE>" in text
    assert len(text.splitlines()) == 251
    assert report.outputs == {"redacted": str(out)}
    assert not (tmp_path / "clean.jsonl.partial").exists()


def test_pii_reject_reports_lines_and_types_never_values(write_jsonl: Rows, chat: Any) -> None:
    rows = [*_rows(chat, 250), chat(900, "SSN 219-09-9999, card 4111 1111 1111 1111")]
    report = preflight(write_jsonl(rows), format="chat", pii="reject")
    assert not report.ok and report.reason is Reason.DATA_INVALID
    assert [(e.line, e.kind, e.message) for e in report.errors] == [
        (251, ErrorClass.PII_FOUND, "contains CREDIT_CARD, SSN")
    ]
    dumped = report.to_json() + report.text()
    assert "219-09-9999" not in dumped and "4111" not in dumped


def test_pii_off_does_not_scan(write_jsonl: Rows, chat: Any) -> None:
    rows = [*_rows(chat, 250), chat(900, "mail me at ann.lee@example.com")]
    report = preflight(write_jsonl(rows), format="chat", pii="off")
    assert report.ok and report.pii == {} and report.pii_covered == []


def test_outputs_are_not_written_when_not_ok(write_jsonl: Rows, chat: Any, tmp_path: Path) -> None:
    out = tmp_path / "clean.jsonl"
    report = preflight(write_jsonl(_rows(chat, 20)), format="chat", redact_out=out)
    assert not report.ok and not out.exists() and not (tmp_path / "clean.jsonl.partial").exists()
    assert report.outputs == {}


def test_lengths_estimate_tokenizer_and_truncation(write_jsonl: Rows) -> None:
    rows = [{"prompt": f"p{i} " + "x" * (40 if i % 4 else 400), "completion": "done"} for i in range(200)]
    path = write_jsonl(rows)
    est = preflight(path, format="prompt-completion", max_seq_length=50, pii="off")
    assert est.lengths["method"] == "chars/4 estimate"
    assert est.lengths["truncated"] == 50 and est.lengths["truncated_share"] == 0.25
    assert any("maxSeqLength 50" in w for w in est.warnings)
    tok = preflight(
        path, format="prompt-completion", max_seq_length=50, pii="off", tokenizer=lambda s: s.split()
    )
    assert tok.lengths["method"] == "tokenizer" and tok.lengths["truncated"] == 0


@pytest.mark.parametrize("fmt", ["instruction", "prompt-completion", "preference"])
def test_other_formats_end_to_end(write_jsonl: Rows, fmt: str) -> None:
    def row(i: int) -> dict[str, Any]:
        if fmt == "instruction":
            return {"instruction": f"Task {i}", "output": f"Done {i}"}
        if fmt == "prompt-completion":
            return {"prompt": f"Task {i}", "completion": f"Done {i}"}
        return {"prompt": f"Task {i}", "chosen": f"Good {i}", "rejected": f"Bad {i}"}

    assert preflight(write_jsonl([row(i) for i in range(200)]), format=fmt).ok


def test_gzip_and_json_array_inputs(tmp_path: Path, chat: Any) -> None:
    rows = _rows(chat, 220)
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(rows, indent=1))
    for path in (gz, arr):
        report = preflight(path, format="chat")
        assert report.ok and report.examples == 220, report.text()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "file is empty"),
        (b"\n\n  \n", "no records"),
        (b"\x00\x01\x02binary\xff" * 100, "binary"),
    ],
)
def test_bad_files_are_reports_not_exceptions(tmp_path: Path, content: bytes, needle: str) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(content)
    report = preflight(p, format="chat")
    assert not report.ok and report.reason is Reason.DATA_INVALID and needle in report.message
    assert report.errors[0].kind is ErrorClass.FILE_ERROR


def test_truncated_gzip_is_a_report(tmp_path: Path, chat: Any) -> None:
    data = gzip.compress("\n".join(json.dumps(chat(i)) for i in range(3000)).encode())
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    report = preflight(p, format="chat", pii="off")
    assert not report.ok and "truncated" in report.message
    assert report.errors[-1].line is not None and report.errors[-1].line > 1


def test_bad_arguments_name_the_options(write_jsonl: Rows, chat: Any) -> None:
    path = write_jsonl(_rows(chat, 3))
    with pytest.raises(ValueError, match="instruction, chat, prompt-completion, preference"):
        preflight(path, format="alpaca")
    with pytest.raises(ValueError, match="redact, reject, off"):
        preflight(path, format="chat", pii="mask")
    with pytest.raises(ValueError, match="fail, skip"):
        preflight(path, format="chat", error_policy="ignore")
