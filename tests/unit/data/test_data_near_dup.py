"""Near-duplicates (optional): what is caught, what must be kept, first wins, the report and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.cli.check_data import check_data_main
from kubetune.data import Format, preflight
from kubetune.data.dedup import Deduplicator, Duplicate
from kubetune.data.near_dup import NearDuplicates, Sketch, fields, shingle_hashes, similarity, words

Rows = Callable[..., Path]

# 40 words.
TEXT = (
    "The pharmacy reopens on Monday after the renovation, and repeat prescriptions that were ordered "
    "online last week will be ready for collection from nine; please bring the confirmation email and "
    "a photo ID so the staff can hand them over."
)
# A long system prompt (~250 words), as many chat datasets repeat in every example.
SYSTEM = " ".join(
    [
        "You are a careful, friendly support assistant for a regional hospital network.",
        "Answer in plain language, keep replies short, and never give a diagnosis or a dose.",
        "Never ask for or repeat identifiers such as record numbers, insurance numbers or dates of birth.",
        "Point to the emergency number for anything urgent: chest pain, trouble breathing, heavy bleeding,",
        "sudden weakness or confusion, a severe allergic reaction, or thoughts of self-harm.",
        "Say so when you do not know, and do not guess opening hours, prices or waiting times.",
        "The usual topics are opening hours, parking, visiting rules, appointment changes, the cafeteria,",
        "wheelchairs and mobility help, interpreters, lost property, and how to reach a ward by phone.",
        "Billing questions go to the billing office, whose contact details are on the website under",
        "Patients and Visitors; complaints go to the patient liaison service, which answers within five",
        "working days. Do not promise outcomes on behalf of clinicians, and do not comment on the care",
        "given by named staff. If a question is about a test result, explain that results are shared by",
        "the clinician who ordered the test, through the patient portal or at the next appointment.",
        "Keep a calm and respectful tone with upset callers, acknowledge their concern in one sentence,",
        "and then give the single most useful next step. Use metric units and the 24-hour clock.",
        "Write short paragraphs, no tables, no emoji, and no marketing language about the hospital.",
        "End every answer by asking whether anything else is needed.",
    ]
)
QUESTIONS = [
    ("Where can I park?", "Use the multi-storey car park on Elm Street; the first hour is free."),
    ("When can I visit my father?", "Visiting hours are two to eight in the afternoon and evening."),
    (
        "Can I move my appointment?",
        "Yes, call the booking line or use the patient portal to pick a new slot.",
    ),
    ("Is the cafeteria open on Sundays?", "It opens from ten to four on Sundays and public holidays."),
    (
        "Do you have wheelchairs at the entrance?",
        "There are wheelchairs by the main doors; ask at reception.",
    ),
    ("How do I pay my bill?", "Billing questions go to the billing office; its number is on the website."),
]


def _replace_word(text: str, index: int, word: str) -> str:
    w = text.split(" ")
    assert w[index] != word
    w[index] = word
    return " ".join(w)


def _pc(prompt: str, completion: str = "Noted.") -> dict[str, Any]:
    return {"prompt": prompt, "completion": completion}


def _chat(user: str, assistant: str, system: str | None = None) -> dict[str, Any]:
    msgs = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def _sig(record: dict[str, Any], fmt: Format) -> bytes:
    return Sketch(shingle_hashes(fields(record, fmt))).signature


def _filler(n: int) -> list[dict[str, Any]]:
    """n distinct chat examples with no words in common with the ones under test."""
    return [_chat(f"filler question {i} zq{i}", f"filler answer {i} zr{i}") for i in range(n)]


# --- what is caught -------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 19, 39])
def test_one_word_changed_in_40_is_a_near_duplicate(index: int) -> None:
    assert len(TEXT.split()) == len(words(TEXT)) == 40
    changed = _replace_word(TEXT, index, "tomorrow")
    near = NearDuplicates()
    assert near.check([(TEXT, False)]) is False
    assert near.check([(changed, False)]) is True
    # 3 of 38 shingles differ: the true Jaccard is 35/41 (a change at either end touches fewer).
    assert (
        similarity(_sig(_pc(TEXT), Format.PROMPT_COMPLETION), _sig(_pc(changed), Format.PROMPT_COMPLETION))
        >= 0.8
    )


def test_spacing_punctuation_and_case_are_ignored_where_normalized_dedup_is_not() -> None:
    reworked = TEXT.replace(", ", " ; ").replace(";", " - ").replace(".", "!").replace(" ", "   ").upper()
    dedup = Deduplicator(NearDuplicates())
    assert dedup.check(TEXT, [(TEXT, False)]) is None
    assert dedup.check(reworked, [(reworked, False)]) is Duplicate.NEAR
    assert (
        similarity(_sig(_pc(TEXT), Format.PROMPT_COMPLETION), _sig(_pc(reworked), Format.PROMPT_COMPLETION))
        == 1.0
    )


def test_exact_and_normalized_repeats_keep_their_kind() -> None:
    dedup = Deduplicator(NearDuplicates())
    assert dedup.check(TEXT) is None
    assert dedup.check(TEXT) is Duplicate.EXACT
    assert dedup.check("  " + TEXT.upper()) is Duplicate.NORMALIZED
    assert Duplicate.NEAR.value == "near"


def test_short_texts_are_one_shingle() -> None:
    assert words("Yes, it's fine!") == ["yes", "it", "s", "fine"]
    near = NearDuplicates()
    assert near.check([("Yes.", False)]) is False
    assert near.check([("yes!!", False)]) is True  # the same single word
    assert near.check([("No.", False)]) is False
    assert near.check([("Yes please", False)]) is False  # another whole-text shingle
    assert near.check([("?!", False)]) is False  # no words: never a near-duplicate, not indexed
    assert near.check([("...", False)]) is False
    assert len(near) == 3


# --- what must be kept ----------------------------------------------------------------------------


def test_chats_sharing_a_long_system_prompt_are_not_near_duplicates() -> None:
    assert len(SYSTEM.split()) > 200  # far longer than any user/assistant turn below
    rows = [_chat(q, a, SYSTEM) for q, a in QUESTIONS]
    near = NearDuplicates()
    assert [near.check(fields(r, Format.CHAT)) for r in rows] == [False] * len(rows)
    sigs = [_sig(r, Format.CHAT) for r in rows]
    assert max(similarity(a, b) for i, a in enumerate(sigs) for b in sigs[i + 1 :]) < 0.3
    # Why the system turn is one shingle: shingled word by word, the shared prompt would dominate.
    as_user = [
        _sig({"prompt": SYSTEM + " " + q, "completion": a}, Format.PROMPT_COMPLETION) for q, a in QUESTIONS
    ]
    assert similarity(as_user[0], as_user[1]) >= 0.8
    # ... while the same exchange under another system prompt is still a near-duplicate.
    q, a = QUESTIONS[0]
    assert near.check(fields(_chat(q, a + "!", "Be brief."), Format.CHAT)) is True


def test_instruction_template_with_distinct_inputs_is_kept() -> None:
    template = (
        "Classify the sentiment of the customer review below as positive, negative or mixed, and "
        "answer with that one word only, in lower case, without any explanation or punctuation."
    )
    reviews = ["Great battery life", "Screen cracked in a week", "Fast delivery but rude courier", "Love it"]
    near = NearDuplicates()
    verdicts = [
        near.check(fields({"instruction": template, "input": r, "output": "positive"}, Format.INSTRUCTION))
        for r in reviews
    ]
    assert verdicts == [False] * len(reviews)
    # Without an input, the instruction is the example itself and is shingled word by word.
    assert fields({"instruction": "Say hi", "output": "hi"}, Format.INSTRUCTION)[0] == ("Say hi", False)


def test_shared_preamble_inside_a_prompt_is_kept_while_the_examples_differ_enough() -> None:
    preamble = " ".join(SYSTEM.split()[:40])
    near = NearDuplicates()
    rows = [_pc(f"{preamble} Question: {q}", a) for q, a in QUESTIONS]
    assert [near.check(fields(r, Format.PROMPT_COMPLETION)) for r in rows] == [False] * len(rows)


def test_fields_per_format() -> None:
    pref = {
        "prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    assert fields(pref, Format.PREFERENCE) == [
        ("Be terse.", True),
        ("Hi", False),
        ("Hello.", False),
        ("Go away.", False),
    ]
    assert fields({"prompt": "p", "chosen": "c", "rejected": "r"}, Format.PREFERENCE) == [
        ("p", False),
        ("c", False),
        ("r", False),
    ]
    assert fields(_chat("u", "a", "s"), Format.CHAT) == [("s", True), ("u", False), ("a", False)]
    assert fields({"instruction": "i", "input": "x", "output": "o"}, Format.INSTRUCTION)[0] == ("i", True)


# --- order, determinism, memory -------------------------------------------------------------------


def test_first_wins_and_only_kept_examples_are_indexed() -> None:
    a = TEXT
    b = _replace_word(a, 10, "tomorrow")  # close to a
    c = _replace_word(b, 30, "quietly")  # close to b, not to a (2 words of 40)
    assert similarity(_sig(_pc(a), Format.PROMPT_COMPLETION), _sig(_pc(c), Format.PROMPT_COMPLETION)) < 0.8
    near = NearDuplicates()
    assert [near.check([(t, False)]) for t in (a, b, c)] == [False, True, False]
    reverse = NearDuplicates()
    assert [reverse.check([(t, False)]) for t in (c, b, a)] == [False, True, False]


def test_sketches_are_the_same_in_every_process() -> None:
    code = (
        "from kubetune.data.near_dup import Sketch, shingle_hashes\n"
        f"s = Sketch(shingle_hashes([({TEXT!r}, False), ('short', True)]))\n"
        "print(s.signature.hex(), s.bands)\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_memory_per_kept_example_is_bounded() -> None:
    near = NearDuplicates()
    for i in range(3000):
        near.check([(f"question {i} about item q{i * 7919} and its delivery window w{i}", False)])
    assert len(near) == 3000
    assert near.nbytes / len(near) < 600  # 128-byte signature + at most 16 slots of 8 bytes, with slack


def test_threshold_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicates(threshold=0)
    strict = NearDuplicates(threshold=1.0)
    strict.check([(TEXT, False)])
    assert strict.check([(_replace_word(TEXT, 19, "tomorrow"), False)]) is False


# --- preflight, report and CLI --------------------------------------------------------------------


def _dataset(chat: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    original = _chat("Tell me about the reopening.", TEXT)
    near = _chat("Tell me about the reopening!", _replace_word(TEXT, 19, "tomorrow"))
    shouty = _chat("TELL ME ABOUT THE REOPENING.", TEXT.upper())  # a normalized duplicate
    return [*(chat(i) for i in range(30)), original, near, original, shouty, *_filler(5)]


def test_off_by_default(write_jsonl: Rows, chat: Any) -> None:
    report = preflight(write_jsonl(_dataset(chat)), format="chat", min_examples=1)
    assert report.ok and report.examples == 37
    assert (report.duplicates, report.duplicates_exact, report.duplicates_normalized) == (2, 1, 1)
    assert report.duplicates_near is None and json.loads(report.to_json())["duplicates_near"] is None
    assert " near" not in report.text()


def test_preflight_drops_near_duplicates_and_reports_them(
    write_jsonl: Rows, chat: Any, tmp_path: Path
) -> None:
    out = tmp_path / "clean.jsonl"
    report = preflight(
        write_jsonl(_dataset(chat)),
        format="chat",
        min_examples=1,
        near_duplicates=True,
        redact_out=out,
        pii="off",
    )
    assert report.ok and report.examples == 36
    assert (
        report.duplicates,
        report.duplicates_exact,
        report.duplicates_normalized,
        report.duplicates_near,
    ) == (
        3,
        1,
        1,
        1,
    )
    assert report.status_summary()["duplicates"] == 3
    assert "(1 exact, 1 normalized, 1 near)" in report.text()
    assert any("1 near-duplicates" in w for w in report.warnings)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    answers = [r["messages"][-1]["content"] for r in kept]
    assert TEXT in answers and _replace_word(TEXT, 19, "tomorrow") not in answers  # the first one is kept


def test_cli_flag(write_jsonl: Rows, chat: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_jsonl(_dataset(chat)))
    base = [path, "--format", "chat", "--min-examples", "1", "--output", "json"]
    assert check_data_main([*base, "--near-duplicates"]) == 0
    on = json.loads(capsys.readouterr().out)
    assert (on["duplicates"], on["duplicates_near"], on["examples"]) == (3, 1, 36)
    assert check_data_main(base) == 0
    off = json.loads(capsys.readouterr().out)
    assert (off["duplicates"], off["duplicates_near"], off["examples"]) == (2, None, 37)
    assert check_data_main([path, "--format", "chat", "--min-examples", "1", "--near-duplicates"]) == 0
    assert "1 near)" in capsys.readouterr().out
