"""OpenAPI schema validation of a manifest against the generated CRD schema.

The API server validates with the same schema; unknown fields are refused here as
`kubectl apply` (strict field validation) refuses them.
"""

import copy
import functools
from typing import Any

import jsonschema

from kubetune.api.crd import crd_schema
from kubetune.api.problems import Problem, format_path

_FRIENDLY_PATTERNS = {
    r"^(hf|pvc|s3|file)://.+$": "must be a URI with scheme hf://, pvc://, s3:// or file://",
    r"^https?://.+$": "must be an http:// or https:// URL",
}


def _strict(schema: Any) -> Any:
    """Copy of the schema in which objects with declared properties refuse unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    schema = _strict(copy.deepcopy(crd_schema(kind)))
    # metadata is validated by the API server itself; only spec and status come from our models
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def _message(error: jsonschema.ValidationError) -> tuple[list[str | int], str]:
    path: list[str | int] = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if v == "required":
        missing = error.message.split("'")[1]
        return [*path, missing], "Required value"
    if v == "additionalProperties":
        extras = sorted(set(error.instance) - set(schema.get("properties", {})))
        return [*path, extras[0]] if extras else path, "unknown field" + (
            f" (and {', '.join(extras[1:])})" if len(extras) > 1 else "")
    if v == "minimum":
        return path, f"must be {'>' if schema.get('exclusiveMinimum') else '≥'} {schema['minimum']:g}"
    if v == "maximum":
        return path, f"must be {'<' if schema.get('exclusiveMaximum') else '≤'} {schema['maximum']:g}"
    if v == "enum":
        return path, f"Unsupported value {error.instance!r}: must be one of {', '.join(map(str, schema['enum']))}"
    if v == "type":
        return path, f"must be of type {schema['type']} (got {type(error.instance).__name__})"
    if v == "pattern":
        friendly = _FRIENDLY_PATTERNS.get(schema["pattern"])
        if friendly is None and "Ki|Mi|Gi" in schema["pattern"]:
            friendly = "must be a Kubernetes quantity such as 80Gi or 81559Mi"
        return path, f"{error.instance!r}: {friendly or 'must match ' + schema['pattern']}"
    if v in ("minLength", "maxLength"):
        bound = schema[v]
        return path, f"must be {'at least' if v == 'minLength' else 'at most'} {bound} characters"
    if v in ("minItems", "maxItems"):
        bound = schema[v]
        return path, f"must have {'at least' if v == 'minItems' else 'at most'} {bound} items"
    return path, error.message


def schema_problems(obj: dict[str, Any]) -> list[Problem]:
    kind = obj.get("kind", "")
    validator = _validator(kind)
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        path, message = _message(error)
        problems.append(Problem(format_path(path), message))
    return problems
