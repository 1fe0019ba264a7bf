"""`kubetune run`'s status.json is what the operator's status code makes of the same trainer result:
the shared `outcome_status`, and so what `derive_status` shows for a Job that finished with it."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from operator_builders import EXAMPLES, jcond, job, pod, terminated

from kubetune.api.status import DataSummary, Progress
from kubetune.api.trainer_contract import Promotion, TrainerResult
from kubetune.derivation import Verdict, derive_status, finished_state, outcome_status
from kubetune.local import LocalJob, Runner, load_jobs

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
PASSING = {"golden.accuracy": 0.7, "safety.refusal_rate": 0.8, "forgetting.perplexity_increase": 0.2}
FAILING = dict(PASSING, **{"golden.accuracy": 0.1})


def _job(tmp_path: Path) -> LocalJob:
    shutil.copy(EXAMPLES / "quickstart" / "finetunejob.yaml", tmp_path)  # its file:// URIs: below tmp_path
    [lj], errors = load_jobs([str(tmp_path / "finetunejob.yaml")])
    assert errors == [] and lj.job is not None
    return lj


def _result(output: Path, outcome: str, metrics: dict[str, float], promoted_uri: str | None) -> TrainerResult:
    """What the trainer reports; `promoted_uri`: it promoted there (the gates passed)."""
    adapter = output / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    failed = outcome == "failed"
    promotion = Promotion(uri=promoted_uri, manifest_digest="sha256:" + "ab" * 32, files=1, bytes=2) if promoted_uri else None
    return TrainerResult(outcome=outcome,  # type: ignore[arg-type]
                         reason="Diverged" if failed else "Succeeded",
                         message="loss became NaN at step 3" if failed else "qlora training finished",
                         metrics=metrics, data=DataSummary(examples=300, train=285, validation=15),
                         progress=Progress(step=3 if failed else 100, total_steps=100, stage="failed" if failed else "done"),
                         artifact=str(adapter), artifact_uri=f"file://{adapter}", promotion=promotion)


CASES = [("succeeded", PASSING, "Succeeded", True), ("succeeded", FAILING, "GateFailed", False),
         ("failed", {}, "Failed", False)]


@pytest.mark.parametrize(("outcome", "metrics", "phase", "promoted"), CASES)
def test_local_status_is_the_shared_outcome_status(tmp_path: Path, outcome: str, metrics: dict[str, float],
                                                   phase: str, promoted: bool) -> None:
    lj = _job(tmp_path)
    assert lj.job is not None
    runner = Runner(out=io.StringIO(), err=io.StringIO(), now=lambda: NOW)
    paths = runner.paths(lj.job)
    assert paths.promoted_uri is not None
    result = _result(paths.output, outcome, metrics, paths.promoted_uri if promoted else None)

    done = runner._finish(lj.job, lj, result, paths=paths)
    local = json.loads((paths.output / "kubetune" / "status.json").read_text())

    shared = outcome_status(finished_state(result), result=result, gates=lj.obj["spec"]["evaluation"]["gates"],
                            output_uri=f"file://{paths.output}", now=NOW)
    assert local == json.loads(json.dumps(shared))
    assert (local["phase"], str(done.phase)) == (phase, phase)
    # `kubetune run` copies nothing itself: it shows the promotion the trainer reported
    assert (done.promoted is not None) is promoted and not Path(paths.promoted or "/nonexistent").exists()
    if outcome == "succeeded":
        assert local["artifact"] == {"uri": result.artifact_uri, "promoted": promoted, **(
            {"promotedUri": paths.promoted_uri, "manifestDigest": "sha256:" + "ab" * 32} if promoted else {})}


def test_gates_passing_without_a_reported_promotion_is_not_promoted(tmp_path: Path) -> None:
    # the gate decision alone never makes status say promoted: only the trainer's report of a copy does
    lj = _job(tmp_path)
    assert lj.job is not None
    paths = Runner(out=io.StringIO(), err=io.StringIO(), now=lambda: NOW).paths(lj.job)
    result = _result(paths.output, "succeeded", PASSING, None)
    status = outcome_status(finished_state(result), result=result, gates=lj.obj["spec"]["evaluation"]["gates"],
                            output_uri=f"file://{paths.output}", now=NOW)
    assert status["phase"] == "Succeeded" and status["artifact"] == {"uri": result.artifact_uri, "promoted": False}


@pytest.mark.parametrize(("outcome", "metrics", "phase", "promoted"), CASES)
def test_local_status_says_what_the_operator_says_for_the_same_result(
        tmp_path: Path, outcome: str, metrics: dict[str, float], phase: str, promoted: bool) -> None:
    lj = _job(tmp_path)
    assert lj.job is not None
    runner = Runner(out=io.StringIO(), err=io.StringIO(), now=lambda: NOW)
    paths = runner.paths(lj.job)
    result = _result(paths.output, outcome, metrics, paths.promoted_uri if promoted else None)
    runner._finish(lj.job, lj, result, paths=paths)
    local = json.loads((paths.output / "kubetune" / "status.json").read_text())

    # the same manifest as a CR whose Job ended with the same result in the termination message
    pod_phase, code = ("Succeeded", 0) if outcome == "succeeded" else ("Failed", 5)
    p = pod(phase=pod_phase, state=terminated(code, "Completed", result.termination_message()))
    ended = job(conditions=[jcond("Complete" if outcome == "succeeded" else "Failed", "PodFailurePolicy")])
    cluster: dict[str, Any] = derive_status(lj.obj, verdict=Verdict(), job=ended, pods=[p], now=NOW).status

    for key in ("phase", "reason", "message", "metrics", "gates", "artifact", "data", "progress"):
        assert local.get(key) == cluster.get(key), key
    operator_conditions = {c["type"]: c for c in cluster["conditions"]}
    assert all(operator_conditions[c["type"]] == c for c in local["conditions"])
    # what the operator adds: validation and the plan, which `kubetune run` prints instead
    assert set(operator_conditions) - {c["type"] for c in local["conditions"]} == {"Valid", "ResourcesFit"}


@pytest.mark.parametrize(("resources", "warned"), [
    ({"gpuMemory": "1Gi"}, False),  # a GPU plan says nothing about a run on this CPU
    ({"gpus": 0, "memory": "1Gi"}, True),  # a CPU job's plan is about exactly this kind of run
    ({"gpus": 0, "memory": "64Gi"}, False),
])
def test_kubetune_run_warns_when_a_cpu_jobs_plan_does_not_fit(tmp_path: Path, resources: dict[str, Any],
                                                              warned: bool) -> None:
    lj = _job(tmp_path)
    assert lj.job is not None
    lj.job.spec.resources = lj.job.spec.resources.model_validate(resources)
    out = io.StringIO()
    summary = Runner(device="cpu", out=out, err=io.StringIO()).plan(lj.job, lambda _: None)
    assert ("(warning: does not fit)" in out.getvalue()) == warned, out.getvalue()
    cpu = "gpus" in resources
    assert (summary.memory_bytes is not None, summary.gpu_memory_bytes is None) == (cpu, cpu)
    assert ("memory per pod (CPU job)" in (summary.summary or "")) == cpu
