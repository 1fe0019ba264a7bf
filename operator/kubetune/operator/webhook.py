"""Validating admission: the same checks as `kubetune validate` (schema, CEL, semantic rules) plus
the memory plan; a refusal carries the estimate and the best suggestion that fits.

TLS: with KUBETUNE_WEBHOOK_CERT/KEY (cert-manager in the chart) kopf serves that certificate;
without, kopf generates a self-signed one (dev/test) and, when KUBETUNE_WEBHOOK_MANAGED is on,
writes its CA into the ValidatingWebhookConfiguration it manages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubetune.api.problems import Problem
from kubetune.api.resources import AnyJob
from kubetune.api.semantics import RefLookup
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.validate import validate_object


def _fit_check() -> Callable[[AnyJob, RefLookup | None], list[Problem]] | None:
    try:
        from kubetune.planning.admission import fit_problems
    except ImportError:  # pragma: no cover
        return None
    return fit_problems


def review(obj: Mapping[str, Any], old: Mapping[str, Any] | None,
           lookup: Callable[[str], FineTuneJobSpec | None] | None) -> tuple[list[str], list[str]]:
    """(errors, warnings) for an admission request, as one line each."""
    body = {k: v for k, v in obj.items() if k != "status"}
    old_body = {k: v for k, v in old.items() if k != "status"} if old else None
    problems = validate_object(body, local=False, lookup=lookup, fit_check=_fit_check(), old=old_body)
    errors = [str(p) for p in problems if p.severity == "error"]
    warnings = [str(p) for p in problems if p.severity != "error"]
    return errors, warnings


def refusal(errors: list[str], limit: int = 4000) -> str:
    text = "; ".join(errors)
    return text if len(text) <= limit else text[: limit - 1] + "…"
