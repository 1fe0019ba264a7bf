"""The Argo CD health checks (gitops/argocd/kubetune.io/<Kind>/health.lua) run as Argo CD runs them:
every case of health_test.yaml, on the CR captured from a real run, status and message compared
exactly; in a Lua 5.1 sandbox that holds only what a script from argocd-cm gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from gitops_cases import ARGOCD, KINDS, ROOT, Case, cases, run_health_lua, script
from lupa.lua51 import LuaError


@pytest.mark.parametrize("case", cases(), ids=str)
def test_health_lua(case: Case) -> None:
    assert run_health_lua(script(case.kind), case.obj) == case.expected


def test_every_capture_is_a_case_and_every_verdict_is_covered() -> None:
    for kind in KINDS:
        inputs = {c.input_path for c in cases() if c.kind == kind}
        assert inputs == {f"testdata/{p.name}" for p in (ARGOCD / kind / "testdata").glob("*.yaml")}
    verdicts = {(c.kind, c.expected["status"]) for c in cases()}
    assert {(k, s) for k in KINDS for s in ("Healthy", "Degraded", "Progressing")} <= verdicts
    assert ("FineTuneJob", "Suspended") in verdicts


def test_a_stale_generation_is_progressing_whatever_the_phase() -> None:
    obj = next(c for c in cases() if c.input_path == "testdata/succeeded.yaml").obj
    obj["metadata"]["generation"] += 1
    assert run_health_lua(script("FineTuneJob"), obj) == {
        "status": "Progressing", "message": "waiting for the kubetune operator to observe generation 2"}
    del obj["status"]
    assert run_health_lua(script("FineTuneJob"), obj)["status"] == "Progressing"


def test_one_script_for_both_kinds() -> None:
    # Argo CD's layout wants a file per kind; the two kinds share their status, so the files differ
    # only in the kind they name
    fine_tune, alignment = (script(k) for k in KINDS)
    assert alignment == fine_tune.replace("kubetune.io/FineTuneJob", "kubetune.io/PreferenceAlignment", 1)


def test_the_sandbox_refuses_what_argocd_cm_refuses() -> None:
    # without useOpenLibs, a script from argocd-cm has no string library (nor string methods)
    obj = cases()[0].obj
    for body in ('return {status = string.format("%s", "Healthy")}', 'return {status = ("Healthy"):lower()}'):
        with pytest.raises(LuaError):
            run_health_lua(body, obj)
    assert run_health_lua('return {status = "Fine"}', obj) == {
        "status": "Unknown", "message": "Lua returned an invalid health status"}


def snippet(doc: Path, key: str) -> dict[str, object]:
    """The YAML block of `doc` that holds `key`."""
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
    return next(yaml.safe_load(b) for b in blocks if key in b)  # type: ignore[no-any-return]


def test_the_documented_argocd_cm_patch_installs_these_scripts() -> None:
    data = snippet(ROOT / "docs" / "gitops.md", "resource.customizations.health.")["data"]
    assert data == {f"resource.customizations.health.kubetune.io_{k}": script(k) for k in KINDS}, (
        "docs/gitops.md's argocd-cm snippet differs from gitops/argocd/kubetune.io/*/health.lua")
