"""The operator's wiring: build_operator(settings) makes one operator that shares nothing with
another in the same process, its handlers on its own kopf registry, as the settings say."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import kopf
import pytest
from fake_api import FakeApi
from operator_builders import ftj

from kubetune.cli.operator import settings_from
from kubetune.controller.app import build_operator
from kubetune.controller.config import OperatorSettings
from kubetune.controller.k8s import KubeApi

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


def handler_ids(registry: kopf.OperatorRegistry) -> dict[str, list[str]]:
    return {"activities": [str(h.id) for h in registry._activities.get_all_handlers()],
            "watching": [str(h.id) for h in registry._watching.get_all_handlers()],
            "webhooks": [str(h.id) for h in registry._webhooks.get_all_handlers()]}


@pytest.mark.parametrize("webhook", [False, True])
def test_handlers_on_a_fresh_registry_as_the_settings_say(webhook: bool) -> None:
    default_before = handler_ids(kopf.get_default_registry())
    op = build_operator(OperatorSettings(webhook=webhook), api=FakeApi())
    assert handler_ids(op.registry) == {
        "activities": ["login_via_client", "configure", "stop"],
        "watching": ["finetunejobs-event", "preferencealignments-event", "on_job_event", "on_pod_event"],
        "webhooks": ["validate-finetunejobs", "validate-preferencealignments"] if webhook else [],
    }
    assert handler_ids(kopf.get_default_registry()) == default_before  # nothing registered globally


def test_a_given_registry_is_used() -> None:
    registry = kopf.OperatorRegistry()
    assert build_operator(OperatorSettings(), api=FakeApi(), registry=registry).registry is registry


def test_two_operators_in_one_process_share_nothing() -> None:
    api_a, api_b = FakeApi(), FakeApi()
    a = build_operator(OperatorSettings(), api=api_a, clock=lambda: NOW)
    b = build_operator(OperatorSettings(), api=api_b, clock=lambda: NOW)
    assert a.registry is not b.registry and a.world is not b.world and a.reconciler is not b.reconciler
    assert a.metrics.registry is not b.metrics.registry
    cr = ftj()
    a.handlers.on_cr_event({"type": "ADDED", "object": cr})
    assert len(a.world.crs) == 1 and not b.world.crs
    assert [k for k in api_a.objects if k[0] == "Job"] and not api_b.objects
    validating = {"kind": "FineTuneJob", "phase": "Validating"}
    assert a.metrics.registry.get_sample_value("kubetune_jobs", validating) == 1
    assert b.metrics.registry.get_sample_value("kubetune_jobs", validating) == 0
    checking = {"type": "Normal", "reason": "CheckingData"}
    assert a.metrics.registry.get_sample_value("kubetune_events_total", checking) == 1
    assert b.metrics.registry.get_sample_value("kubetune_events_total", checking) is None


def test_the_default_api_is_a_client_of_its_own() -> None:
    a = build_operator(OperatorSettings())
    b = build_operator(OperatorSettings())
    api_a, api_b = a.reconciler.api, b.reconciler.api
    assert isinstance(api_a, KubeApi) and isinstance(api_b, KubeApi) and api_a is not api_b
    assert api_a.metrics is a.metrics  # its requests count in its own operator's metrics


def test_cli_flags_override_the_environment() -> None:
    env = {"KUBETUNE_NAMESPACES": "a,b", "KUBETUNE_METRICS_PORT": "9000", "KUBETUNE_RESYNC_SECONDS": "2"}
    args = argparse.Namespace(namespace=[], metrics_port=None, webhook=False)
    assert settings_from(args, env) == OperatorSettings.from_env(env)
    args = argparse.Namespace(namespace=["c"], metrics_port=0, webhook=True)
    s = settings_from(args, env)
    assert (s.namespaces, s.metrics_port, s.webhook, s.resync_seconds) == (("c",), 0, True, 2.0)


def test_kopf_run_module_builds_from_the_environment() -> None:
    """`kopf run -m kubetune.controller.main` imports the module and runs kopf's default registry."""
    code = ("import json, kopf, kubetune.controller.main as m; r = kopf.get_default_registry(); "
            "print(json.dumps([[str(h.id) for h in r._webhooks.get_all_handlers()], "
            "m.OPERATOR.registry is r, m.OPERATOR.settings.resync_seconds]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"), "KUBETUNE_WEBHOOK": "true",
           "KUBETUNE_RESYNC_SECONDS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout.splitlines()[-1]) == [["validate-finetunejobs", "validate-preferencealignments"],
                                                       True, 3.0]
