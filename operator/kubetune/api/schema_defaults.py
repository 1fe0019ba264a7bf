"""Structural defaulting, as the API server does it before validation: a property that is absent
gets the schema's `default`, then its children are defaulted in turn."""

import copy
from typing import Any


def apply_schema_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_schema_defaults(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_schema_defaults(schema["items"], item) for item in value]
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_schema_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    return value
