"""The Flux `healthCheckExprs` documented in docs/gitops.md, evaluated with cel-python on every CR
captured for the Argo CD checks, the way Flux's StatusEvaluator (fluxcd/pkg runtime/cel) does: a
status of an older generation is InProgress; then `inProgress`, `failed`, `current` in that order,
the first that holds wins; InProgress when none does. They must agree with Argo CD's verdict (and
so with kstatus', which tests/e2e/test_gitops.py checks on the same files)."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel
from gitops_cases import KINDS, KSTATUS_OF, ROOT, Case, cases
from test_argocd_health import snippet

ENV = celpy.Environment()


def documented_exprs() -> dict[str, dict[str, str]]:
    spec = snippet(ROOT / "docs" / "gitops.md", "healthCheckExprs")["spec"]
    return {e["kind"]: e for e in spec["healthCheckExprs"]}  # type: ignore[index]


def flux_status(exprs: dict[str, str], obj: dict[str, Any]) -> str:
    observed = (obj.get("status") or {}).get("observedGeneration")
    if observed is not None and observed != obj["metadata"].get("generation"):
        return "InProgress"
    activation = {key: json_to_cel(value) for key, value in obj.items()}
    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key in exprs:
            result = ENV.program(ENV.compile(exprs[key])).evaluate(activation)
            assert isinstance(result, celpy.celtypes.BoolType), f"{key}: {result!r}"  # Flux: an error
            if result:
                return verdict
    return "InProgress"


def test_both_kinds_are_documented() -> None:
    exprs = documented_exprs()
    assert set(exprs) == set(KINDS)
    assert all(e["apiVersion"] == "kubetune.io/v1alpha1" and e["current"] and e["failed"] for e in exprs.values())


@pytest.mark.parametrize("case", cases(), ids=str)
def test_flux_agrees_with_argocd_and_kstatus(case: Case) -> None:
    assert flux_status(documented_exprs()[case.kind], case.obj) == KSTATUS_OF[case.expected["status"]]
