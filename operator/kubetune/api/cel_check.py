"""Evaluate the CRD's CEL rules (`x-kubernetes-validations`) with cel-python.

The rules are declared once, on the pydantic models; this walks the generated schema next to the
object and evaluates each rule where the API server would, so `kubetune validate` gives the same
verdicts offline. Transition rules (those reading `oldSelf`) run only when an old object is given.
"""

import functools
from collections.abc import Iterator
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from kubetune.api.problems import Problem, format_path

_env = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    return _env.program(_env.compile(rule))


def _walk(schema: dict[str, Any], value: Any, old: Any, path: list[str | int]) -> Iterator[
        tuple[dict[str, str], Any, Any, list[str | int]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule, value, old, path
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                yield from _walk(sub, value[name], sub_old, [*path, name])
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, None, [*path, i])


def _field_path(path: list[str | int], field_path: str | None) -> str:
    parts = list(path)
    if field_path:
        parts += [p for p in field_path.strip(".").split(".") if p]
    return format_path(parts)


def cel_problems(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Problem]:
    problems = []
    for rule, value, old_value, path in _walk(schema, obj, old, []):
        transition = "oldSelf" in rule["rule"]
        if transition and old_value is None:
            continue  # the API server runs transition rules on updates only
        activation = {"self": json_to_cel(value)}
        if transition:
            activation["oldSelf"] = json_to_cel(old_value)
        try:
            result = _program(rule["rule"]).evaluate(activation)
        except Exception as exc:  # a rule that cannot evaluate is a failed rule, as in the API server
            problems.append(Problem(_field_path(path, rule.get("fieldPath")), f"{rule['message']} ({exc})"))
            continue
        if isinstance(result, CELEvalError) or not bool(result):
            problems.append(Problem(_field_path(path, rule.get("fieldPath")), rule["message"]))
    return problems
