"""Every format and every per-record error class."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.data.formats import (
    ErrorClass,
    Format,
    canonical,
    length_texts,
    map_strings,
    prompt_text,
    validate,
)

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be brief"}

VALID: list[tuple[Format, dict[str, Any]]] = [
    (Format.INSTRUCTION, {"instruction": "Add", "input": "1+1", "output": "2"}),
    (Format.INSTRUCTION, {"instruction": "Say hi", "output": "hi"}),
    (Format.INSTRUCTION, {"instruction": "Say hi", "input": "", "output": "hi", "meta": 1}),
    (Format.CHAT, {"messages": [S, U, A]}),
    (Format.CHAT, {"messages": [U, A, U, A]}),
    (Format.PROMPT_COMPLETION, {"prompt": "2+2=", "completion": "4"}),
    (Format.PREFERENCE, {"prompt": "2+2=", "chosen": "4", "rejected": "5"}),
    (
        Format.PREFERENCE,
        {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "go away"}]},
    ),
    (
        Format.PREFERENCE,
        {"prompt": "hi", "chosen": [A], "rejected": [{"role": "assistant", "content": "no"}]},
    ),
    (Format.PREFERENCE, {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "no"}]}),
]


@pytest.mark.parametrize(("fmt", "record"), VALID)
def test_valid_records(fmt: Format, record: dict[str, Any]) -> None:
    assert validate(record, fmt) is None
    assert canonical(record, fmt)
    assert length_texts(record, fmt)
    assert isinstance(prompt_text(record, fmt), str)


INVALID: list[tuple[Format, Any, ErrorClass, str]] = [
    (Format.INSTRUCTION, [1, 2], ErrorClass.NOT_AN_OBJECT, "got array"),
    (Format.INSTRUCTION, "text", ErrorClass.NOT_AN_OBJECT, "got string"),
    (Format.INSTRUCTION, {"output": "x"}, ErrorClass.MISSING_FIELD, '"instruction"'),
    (Format.INSTRUCTION, {"instruction": "x"}, ErrorClass.MISSING_FIELD, '"output"'),
    (Format.INSTRUCTION, {"instruction": 3, "output": "x"}, ErrorClass.WRONG_TYPE, "got number"),
    (
        Format.INSTRUCTION,
        {"instruction": "x", "input": None, "output": "y"},
        ErrorClass.WRONG_TYPE,
        "got null",
    ),
    (
        Format.INSTRUCTION,
        {"instruction": "  ", "output": "x"},
        ErrorClass.EMPTY_TEXT,
        '"instruction" is empty',
    ),
    (Format.CHAT, {"conversation": []}, ErrorClass.MISSING_FIELD, '"messages"'),
    (Format.CHAT, {"messages": "hi"}, ErrorClass.WRONG_TYPE, "array of messages"),
    (Format.CHAT, {"messages": []}, ErrorClass.EMPTY_TEXT, "no messages"),
    (Format.CHAT, {"messages": ["hi", A]}, ErrorClass.WRONG_TYPE, "messages[0] must be an object"),
    (Format.CHAT, {"messages": [{"content": "x"}, A]}, ErrorClass.MISSING_FIELD, 'no "role"'),
    (Format.CHAT, {"messages": [{"role": "user"}, A]}, ErrorClass.MISSING_FIELD, 'no "content"'),
    (
        Format.CHAT,
        {"messages": [{"role": 1, "content": "x"}, A]},
        ErrorClass.WRONG_TYPE,
        "role must be a string",
    ),
    (Format.CHAT, {"messages": [{"role": "tool", "content": "x"}, A]}, ErrorClass.UNKNOWN_ROLE, '"tool"'),
    (
        Format.CHAT,
        {"messages": [U, {"role": "assistant", "content": ""}]},
        ErrorClass.EMPTY_TEXT,
        "content is empty",
    ),
    (
        Format.CHAT,
        {"messages": [U, {"role": "assistant", "content": ["x"]}]},
        ErrorClass.WRONG_TYPE,
        "got array",
    ),
    (Format.CHAT, {"messages": [S, U]}, ErrorClass.NO_ASSISTANT_TURN, "no assistant turn"),
    (Format.CHAT, {"messages": [U, A, U]}, ErrorClass.NO_ASSISTANT_TURN, "must end with an assistant turn"),
    (Format.PROMPT_COMPLETION, {"prompt": "x"}, ErrorClass.MISSING_FIELD, '"completion"'),
    (Format.PROMPT_COMPLETION, {"prompt": "x", "completion": {"t": 1}}, ErrorClass.WRONG_TYPE, "got object"),
    (Format.PROMPT_COMPLETION, {"prompt": "", "completion": "y"}, ErrorClass.EMPTY_TEXT, "empty"),
    (Format.PREFERENCE, {"prompt": "x", "chosen": "a"}, ErrorClass.MISSING_FIELD, '"rejected"'),
    (
        Format.PREFERENCE,
        {"prompt": "x", "chosen": "a", "rejected": "a"},
        ErrorClass.CHOSEN_EQUALS_REJECTED,
        "identical",
    ),
    (
        Format.PREFERENCE,
        {"prompt": "x", "chosen": "A  b", "rejected": "a b"},
        ErrorClass.CHOSEN_EQUALS_REJECTED,
        "identical",
    ),
    (
        Format.PREFERENCE,
        {"prompt": [U], "chosen": [A], "rejected": [A]},
        ErrorClass.CHOSEN_EQUALS_REJECTED,
        "identical",
    ),
    (
        Format.PREFERENCE,
        {"prompt": "x", "chosen": [A], "rejected": "no"},
        ErrorClass.WRONG_TYPE,
        '"rejected"',
    ),
    (
        Format.PREFERENCE,
        {"prompt": "x", "chosen": [U], "rejected": [A]},
        ErrorClass.NO_ASSISTANT_TURN,
        '"chosen"',
    ),
    (
        Format.PREFERENCE,
        {"prompt": [{"role": "bot", "content": "x"}], "chosen": [A], "rejected": [U, A]},
        ErrorClass.UNKNOWN_ROLE,
        "bot",
    ),
    (Format.PREFERENCE, {"chosen": "a", "rejected": "b"}, ErrorClass.MISSING_FIELD, '"prompt"'),
    (
        Format.PREFERENCE,
        {"prompt": "x", "chosen": "", "rejected": "b"},
        ErrorClass.EMPTY_TEXT,
        '"chosen" is empty',
    ),
]


@pytest.mark.parametrize(("fmt", "record", "kind", "needle"), INVALID)
def test_invalid_records(fmt: Format, record: Any, kind: ErrorClass, needle: str) -> None:
    err = validate(record, fmt)
    assert err is not None
    assert err.kind is kind
    assert needle in err.message


def test_canonical_keeps_fields_apart() -> None:
    a = canonical({"prompt": "ab", "completion": "c"}, Format.PROMPT_COMPLETION)
    b = canonical({"prompt": "a", "completion": "bc"}, Format.PROMPT_COMPLETION)
    assert a != b


def test_map_strings_covers_extra_keys_but_not_roles() -> None:
    record = {"messages": [U, A], "meta": {"note": "hi"}}
    out = map_strings(record, str.upper)
    assert out["messages"][0] == {"role": "user", "content": "HI"}
    assert out["meta"]["note"] == "HI"
    assert record["messages"][0]["content"] == "hi"  # a copy


def test_preference_implicit_prompt_is_shared_prefix() -> None:
    record = {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "no"}]}
    assert "hi" in prompt_text(record, Format.PREFERENCE)
    assert "hello" not in prompt_text(record, Format.PREFERENCE)
