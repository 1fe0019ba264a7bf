"""The four dataset formats: per-record validation and the text views the other steps use.

Formats (the ``spec.dataset.format`` enum):

- ``instruction``: ``{"instruction": str, "input": str (optional), "output": str}``
- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``,
  ending with an assistant turn
- ``prompt-completion``: ``{"prompt": str, "completion": str}``
- ``preference``: ``{"prompt": str, "chosen": str, "rejected": str}``, or the chat form
  (TRL's conversational preference format): ``prompt`` a list of messages, ``chosen`` and
  ``rejected`` lists of messages (assistant turns); ``prompt`` may be left out when ``chosen`` and
  ``rejected`` are whole conversations (implicit prompt).

Extra keys are allowed and ignored. Every check returns a :class:`RecordError` with an
:class:`ErrorClass`, never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubetune.api.enums import DatasetFormat

ROLES = ("system", "user", "assistant")


# The dataset format as the API names it (spec.dataset.format): one enum for both.
Format = DatasetFormat


class ErrorClass(StrEnum):
    """Why a line (or the file) was rejected. Stable strings: they appear in the JSON report."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    UNKNOWN_ROLE = "unknown_role"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
    NON_UTF8 = "non_utf8"
    LINE_TOO_LONG = "line_too_long"
    PII_FOUND = "pii_found"
    GOLDEN_LEAKAGE = "golden_leakage"
    FILE_ERROR = "file_error"


@dataclass(frozen=True)
class RecordError:
    """One problem with one record; ``message`` never contains a PII value."""

    kind: ErrorClass
    message: str


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _text(
    record: dict[str, Any], key: str, *, required: bool = True, allow_empty: bool = False
) -> RecordError | None:
    if key not in record:
        return RecordError(ErrorClass.MISSING_FIELD, f'missing field "{key}"') if required else None
    value = record[key]
    if not isinstance(value, str):
        return RecordError(ErrorClass.WRONG_TYPE, f'field "{key}" must be a string, got {json_type(value)}')
    if not allow_empty and not value.strip():
        return RecordError(ErrorClass.EMPTY_TEXT, f'field "{key}" is empty')
    return None


def _messages(value: Any, where: str, *, must_end_with_assistant: bool) -> RecordError | None:
    if not isinstance(value, list):
        return RecordError(
            ErrorClass.WRONG_TYPE, f'field "{where}" must be an array of messages, got {json_type(value)}'
        )
    if not value:
        return RecordError(ErrorClass.EMPTY_TEXT, f'field "{where}" has no messages')
    for i, msg in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(msg, dict):
            return RecordError(ErrorClass.WRONG_TYPE, f"{at} must be an object, got {json_type(msg)}")
        if "role" not in msg:
            return RecordError(ErrorClass.MISSING_FIELD, f'{at} has no "role"')
        role = msg["role"]
        if not isinstance(role, str):
            return RecordError(ErrorClass.WRONG_TYPE, f"{at}.role must be a string, got {json_type(role)}")
        if role not in ROLES:
            shown = role if len(role) <= 40 else role[:40] + "…"
            return RecordError(
                ErrorClass.UNKNOWN_ROLE, f'{at}.role "{shown}" is not one of {", ".join(ROLES)}'
            )
        if "content" not in msg:
            return RecordError(ErrorClass.MISSING_FIELD, f'{at} has no "content"')
        content = msg["content"]
        if not isinstance(content, str):
            return RecordError(
                ErrorClass.WRONG_TYPE, f"{at}.content must be a string, got {json_type(content)}"
            )
        if not content.strip():
            return RecordError(ErrorClass.EMPTY_TEXT, f"{at}.content is empty")
    if must_end_with_assistant:
        if not any(m["role"] == "assistant" for m in value):
            return RecordError(ErrorClass.NO_ASSISTANT_TURN, f'"{where}" has no assistant turn')
        if value[-1]["role"] != "assistant":
            return RecordError(
                ErrorClass.NO_ASSISTANT_TURN,
                f'"{where}" must end with an assistant turn (last role: {value[-1]["role"]})',
            )
    return None


def _validate_instruction(r: dict[str, Any]) -> RecordError | None:
    return (
        _text(r, "instruction") or _text(r, "input", required=False, allow_empty=True) or _text(r, "output")
    )


def _validate_chat(r: dict[str, Any]) -> RecordError | None:
    if "messages" not in r:
        return RecordError(ErrorClass.MISSING_FIELD, 'missing field "messages"')
    return _messages(r["messages"], "messages", must_end_with_assistant=True)


def _validate_prompt_completion(r: dict[str, Any]) -> RecordError | None:
    return _text(r, "prompt") or _text(r, "completion")


def _validate_preference(r: dict[str, Any]) -> RecordError | None:
    for key in ("chosen", "rejected"):
        if key not in r:
            return RecordError(ErrorClass.MISSING_FIELD, f'missing field "{key}"')
    chosen, rejected = r["chosen"], r["rejected"]
    conversational = isinstance(chosen, list)
    if conversational:
        if not isinstance(rejected, list):
            return RecordError(
                ErrorClass.WRONG_TYPE,
                f'field "rejected" must be an array of messages like "chosen", got {json_type(rejected)}',
            )
        if "prompt" in r:
            prompt = r["prompt"]
            if isinstance(prompt, list):
                err = _messages(prompt, "prompt", must_end_with_assistant=False)
                if err:
                    return err
            else:
                err = _text(r, "prompt")
                if err:
                    return err
        # With an explicit prompt the answers are assistant turns; without one they are whole
        # conversations. Either way each must end with an assistant turn.
        err = _messages(chosen, "chosen", must_end_with_assistant=True) or _messages(
            rejected, "rejected", must_end_with_assistant=True
        )
        if err:
            return err
    else:
        err = _text(r, "prompt") or _text(r, "chosen") or _text(r, "rejected")
        if err:
            return err
    if _norm(chosen) == _norm(rejected):
        return RecordError(ErrorClass.CHOSEN_EQUALS_REJECTED, '"chosen" is identical to "rejected"')
    return None


def _norm(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, list):
        return "\x1e".join(f"{m['role']}\x1f{_norm(m['content'])}" for m in value)
    return repr(value)


_VALIDATORS: dict[Format, Callable[[dict[str, Any]], RecordError | None]] = {
    Format.INSTRUCTION: _validate_instruction,
    Format.CHAT: _validate_chat,
    Format.PROMPT_COMPLETION: _validate_prompt_completion,
    Format.PREFERENCE: _validate_preference,
}


def validate(record: Any, fmt: Format) -> RecordError | None:
    """Check one decoded record against ``fmt``; ``None`` when it is valid."""
    if not isinstance(record, dict):
        return RecordError(ErrorClass.NOT_AN_OBJECT, f"record must be a JSON object, got {json_type(record)}")
    return _VALIDATORS[fmt](record)


# --- text views of a *valid* record -------------------------------------------------------------

# Separators that cannot occur in normal text keep fields apart in the canonical form, so that
# {"prompt": "ab", "completion": "c"} and {"prompt": "a", "completion": "bc"} differ.
_FIELD = "\x1e"
_ROLE = "\x1f"


def _conv(messages: list[dict[str, Any]]) -> str:
    return _FIELD.join(f"{m['role']}{_ROLE}{m['content']}" for m in messages)


def _part(value: Any) -> str:
    return _conv(value) if isinstance(value, list) else str(value)


def canonical(record: dict[str, Any], fmt: Format) -> str:
    """The example's content as one string (fields in a fixed order, extra keys ignored)."""
    if fmt is Format.INSTRUCTION:
        return _FIELD.join((record["instruction"], record.get("input", ""), record["output"]))
    if fmt is Format.CHAT:
        return _conv(record["messages"])
    if fmt is Format.PROMPT_COMPLETION:
        return _FIELD.join((record["prompt"], record["completion"]))
    return _FIELD.join((_part(record.get("prompt", "")), _part(record["chosen"]), _part(record["rejected"])))


def _contents(messages: list[dict[str, Any]]) -> str:
    return _FIELD.join(m["content"] for m in messages if m["role"] != "system")


def prompt_text(record: dict[str, Any], fmt: Format) -> str:
    """The input side of an example (what a golden-set question would repeat), without roles.

    Chat: the non-system turns up to the last user turn; a one-turn chat gives its user message,
    the same string as a ``{"prompt": ...}`` record, so golden sets of either shape compare.
    """
    if fmt is Format.INSTRUCTION:
        extra = record.get("input", "")
        return str(record["instruction"]) + (_FIELD + extra if extra else "")
    if fmt is Format.CHAT:
        msgs = record["messages"]
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
        return _contents(msgs[: last_user + 1])
    if fmt is Format.PROMPT_COMPLETION:
        return str(record["prompt"])
    if "prompt" in record:
        prompt = record["prompt"]
        return _contents(prompt) if isinstance(prompt, list) else str(prompt)
    # Implicit prompt: the shared prefix of chosen and rejected.
    shared = []
    for a, b in zip(record["chosen"], record["rejected"], strict=False):
        if a != b:
            break
        shared.append(a)
    return _contents(shared)


def length_texts(record: dict[str, Any], fmt: Format) -> list[str]:
    """The texts one training sequence is made of (for preference: the longer of the two answers).

    Chat templates add a few tokens per message; :mod:`kubetune.data.lengths` adds those.
    """
    if fmt is Format.INSTRUCTION:
        return [record["instruction"], record.get("input", ""), record["output"]]
    if fmt is Format.CHAT:
        return [m["content"] for m in record["messages"]]
    if fmt is Format.PROMPT_COMPLETION:
        return [record["prompt"], record["completion"]]
    prompt = record.get("prompt", "")
    prompt_parts = [m["content"] for m in prompt] if isinstance(prompt, list) else [prompt]

    def parts(v: Any) -> list[str]:
        return [m["content"] for m in v] if isinstance(v, list) else [v]

    chosen, rejected = parts(record["chosen"]), parts(record["rejected"])
    longer = chosen if sum(map(len, chosen)) >= sum(map(len, rejected)) else rejected
    return [*prompt_parts, *longer]


def message_count(record: dict[str, Any], fmt: Format) -> int:
    """How many turns a chat template would wrap (for the per-message token overhead)."""
    if fmt is Format.CHAT:
        return len(record["messages"])
    if fmt is Format.PREFERENCE and isinstance(record["chosen"], list):
        prompt = record.get("prompt", [])
        return (len(prompt) if isinstance(prompt, list) else 1) + len(record["chosen"])
    return 2


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a decoded record with ``fn`` applied to every string value, keys and roles excepted.

    Every value is covered, extra keys too: the cleaned file must not carry PII in a field that the
    format ignores.
    """
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {
            k: (v if k == "role" and isinstance(v, str) else map_strings(v, fn)) for k, v in value.items()
        }
    return value
