"""The trainer's promotion decision and the operator's phase cannot disagree: both are
kubetune.gates.promotion_decision on the same TrainerResult — the trainer on the result it is about
to report, with the gates of the spec it was given; the operator on that result read back from the
termination message (and `kubetune run` from result.json), with the gates of the CR."""

from __future__ import annotations

import copy
import math
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from operator_builders import ftj, jcond, job, pod, terminated, typed

from kubetune.api.trainer_contract import Promotion, ReportChannel, Sources, TrainerConfig, TrainerResult
from kubetune.derivation import Verdict, derive_status, finished_state, outcome_status
from kubetune.gates import promotion_decision
from kubetune.render.trainer_config import build_trainer_config

NOW = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)
METRICS = ["golden.accuracy", "safety.refusal_rate", "forgetting.perplexity_increase", "eval.loss"]
OPS = [">=", ">", "<=", "<"]
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 0.1 + 0.2, 1 / 3, 5e-324, 1e308]


def _metrics(rng: random.Random, thresholds: list[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in METRICS:
        roll = rng.random()
        if roll < 0.1:
            continue  # not measured
        if roll < 0.4:  # exactly on a threshold: where a lossy round trip would flip >= / >
            out[name] = rng.choice(thresholds)
        elif roll < 0.55:
            out[name] = rng.choice(SPECIAL)
        else:
            out[name] = rng.uniform(-2, 2) * 10 ** rng.randint(-8, 3)
    return out


def _cr(rng: random.Random) -> tuple[dict[str, Any], list[float]]:
    cr = copy.deepcopy(ftj())
    thresholds = [rng.choice([0.5, 0.1 + 0.2, 1 / 3, 1e-9, 2.0, 0.0]) for _ in METRICS]
    cr["spec"]["evaluation"]["gates"] = [
        {"metric": m, "op": rng.choice(OPS), "threshold": t} for m, t in zip(METRICS, thresholds, strict=True)
        if rng.random() < 0.8]
    return cr, thresholds


def _trainer_side(cr: dict[str, Any], metrics: dict[str, float]) -> tuple[TrainerResult, bool]:
    """What the trainer does: its config as the pod reads it (JSON), the gates of its resolved spec."""
    rendered = build_trainer_config(typed(cr), sources=Sources(model="m", dataset="d", output="/out"),
                                    report=ReportChannel())
    config = TrainerConfig.model_validate_json(rendered.to_json())
    gates = config.spec.evaluation.gates if config.spec.evaluation else None
    result = TrainerResult(outcome="succeeded", metrics=metrics, artifact="/out/adapter",
                           artifact_uri="pvc://triage-models/triage-llama3-70b/adapter")
    promote = promotion_decision(result, gates).passed
    if promote:
        result.promotion = Promotion(uri="pvc://triage-models/promoted/triage-llama3-70b",
                                     manifest_digest="sha256:" + "a" * 64, files=3, bytes=10)
    return result, promote


@pytest.mark.parametrize("seed", range(20))
def test_trainer_and_operator_decide_alike_on_every_result(seed: int) -> None:
    rng = random.Random(seed)
    cr, thresholds = _cr(rng)
    for _ in range(10):
        metrics = _metrics(rng, thresholds)
        result, promoted = _trainer_side(cr, metrics)
        # the operator: the result from the pod's termination message, the CR's own gates
        p = pod(phase="Succeeded", state=terminated(0, "Completed", result.termination_message()))
        status = derive_status(cr, verdict=Verdict(), job=job(conditions=[jcond("Complete")], succeeded=1),
                               pods=[p], now=NOW).status
        assert (status["phase"] == "Succeeded") is promoted, (metrics, cr["spec"]["evaluation"]["gates"])
        assert status["artifact"]["promoted"] is promoted
        assert ("promotedUri" in status["artifact"]) is promoted
        # `kubetune run`: the same result through result.json
        local = outcome_status(finished_state(TrainerResult.parse(result.to_json())), result=TrainerResult.parse(
            result.to_json()), gates=cr["spec"]["evaluation"]["gates"], output_uri="pvc://x", now=NOW)
        assert local["phase"] == status["phase"] and local["artifact"] == status["artifact"]
