"""Validate one kubetune object the way the cluster would at apply time.

Order as in the API server: apiVersion/kind, structural defaulting, OpenAPI schema (unknown
fields refused), CEL rules; then what the admission webhook adds: semantic rules and the
memory plan. Returns problems with dotted field paths; never raises on bad input.
"""

import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from kubetune.api.cel_check import cel_problems
from kubetune.api.constants import API_VERSION, KINDS
from kubetune.api.crd import crd_schema
from kubetune.api.problems import Problem, errors, format_path
from kubetune.api.resources import AnyJob, parse_resource
from kubetune.api.schema_check import schema_problems
from kubetune.api.schema_defaults import apply_schema_defaults
from kubetune.api.semantics import RefLookup, semantic_problems

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# The webhook and `validate` add the memory plan through this hook: job ⇒ problems.
FitCheck = Callable[[AnyJob, RefLookup | None], list[Problem]]


def is_kubetune(obj: Any) -> bool:
    return isinstance(obj, dict) and str(obj.get("apiVersion", "")).startswith("kubetune.io/")


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    return apply_schema_defaults(crd_schema(obj["kind"]), obj)  # type: ignore[no-any-return]


def validate_object(obj: Any, *, local: bool = False, lookup: RefLookup | None = None,
                    fit_check: FitCheck | None = None, old: dict[str, Any] | None = None) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem("", f"a manifest must be a mapping, got {type(obj).__name__}")]
    if obj.get("apiVersion") != API_VERSION:
        return [Problem("apiVersion", f"must be {API_VERSION} (got {obj.get('apiVersion')!r})")]
    if obj.get("kind") not in KINDS:
        return [Problem("kind", f"must be one of {', '.join(KINDS)} (got {obj.get('kind')!r})")]
    problems = []
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        problems.append(Problem("metadata.name", "Required value"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(Problem("metadata.name", "must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.')"))
    if not isinstance(obj.get("spec"), dict):
        return [*problems, Problem("spec", "Required value" if "spec" not in obj else "must be an object")]
    obj = defaulted(obj)
    if old is not None and old.get("kind") == obj["kind"]:
        old = defaulted(old)  # the stored object was defaulted when it was written
    problems += schema_problems(obj)
    if problems:
        return problems  # CEL and semantic rules assume a structurally valid object
    schema = crd_schema(obj["kind"])
    problems += cel_problems(schema, obj, old)
    if errors(problems):
        return problems
    try:
        job = parse_resource(obj)
    except ValidationError as exc:  # the schema should have caught it; say it plainly anyway
        return [Problem(format_path(list(e["loc"])), e["msg"]) for e in exc.errors()]
    problems += semantic_problems(job, local=local, lookup=lookup)
    if fit_check is not None and not errors(problems):
        problems += fit_check(job, lookup)
    return problems
