"""spec.tracking.mlflow against a real `mlflow server` (loopback, sqlite): a tiny SFT run logs its parameters,
its loss curve (transformers' own MLflow integration), evaluation metrics and gate results, the plan and the
model card, and reports the run id, which the status derivation shows. A server that is down never fails the
training: the run succeeds and status says TrackingAvailable=False with a Warning Event."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import instruction_records, make_config, sft_manifest, write_jsonl
from mlflow_server import MlflowServer, free_port

from kubetune.api.trainer_contract import PlanSummary
from kubetune.derivation import events_for, finished_state, outcome_status
from kubetune_trainer.run import run

pytest.importorskip("mlflow")
pytestmark = [pytest.mark.trainer, pytest.mark.slow]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


def _config(tiny_model: Path, tmp_path: Path, uri: str) -> Any:
    manifest = sft_manifest("lora", maxSteps=4)
    manifest["spec"]["evaluation"] = {"goldenDataset": {"uri": "file:///golden.jsonl", "scorer": "contains"},
                                      "maxNewTokens": 4,
                                      "gates": [{"metric": "golden.accuracy", "op": ">=", "threshold": 0.0}]}
    manifest["spec"]["tracking"] = {"mlflow": {"trackingUri": uri, "experiment": "kubetune-tests"}}
    data = write_jsonl(tmp_path / "train.jsonl", instruction_records(40))
    config = make_config(manifest, model=tiny_model, dataset=data, output=tmp_path / "out")
    config.sources.golden = str(write_jsonl(tmp_path / "golden.jsonl", [
        {"prompt": "patient reports fever. what should i do?", "answer": "Urgency"},
        {"prompt": "patient reports rash. what should i do?", "answer": "Urgency"}]))
    config.plan = PlanSummary(peak_bytes=123_000_000, fits=True, summary="a tiny plan")
    return config


def _status(config: Any, result: Any) -> dict[str, Any]:
    gates = config.spec.evaluation.gates
    return outcome_status(finished_state(result), result=result, gates=gates, output_uri="file:///out", now=NOW)


def test_a_run_is_tracked_in_mlflow(mlflow_server: MlflowServer, tiny_model: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = _config(tiny_model, tmp_path, mlflow_server.uri)
    result = run(config, log=lambda _: None)
    assert result.outcome == "succeeded", result.message
    assert result.tracking is not None and result.tracking.available, result.tracking
    run_id = result.tracking.run_id
    status = _status(config, result)
    assert status["tracking"]["runId"] == run_id
    cond = next(c for c in status["conditions"] if c["type"] == "TrackingAvailable")
    assert (cond["status"], cond["reason"]) == ("True", "Tracked")

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "kubetune-tests"
    params = got.data.params
    assert params["per_device_train_batch_size"] == "2" and params["learning_rate"] == "0.005"  # transformers'
    assert params["kubetune.method"] == "lora" and params["kubetune.batchSize"] == "2"
    history = client.get_metric_history(run_id, "loss")  # the curve, step by step, from transformers
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx([h["loss"] for h in result.details["trainLog"]])
    metrics = got.data.metrics
    assert metrics["golden.accuracy"] == pytest.approx(result.metrics["golden.accuracy"])
    assert metrics["gate.golden.accuracy.passed"] == 1.0
    files = {f.path for f in client.list_artifacts(run_id, "kubetune")} | {
        f.path for f in client.list_artifacts(run_id, "model-card")}
    assert {"kubetune/plan.json", "kubetune/gates.json", "model-card/README.md"} <= files
    card = Path(client.download_artifacts(run_id, "model-card/README.md", str(tmp_path / "dl")))
    assert card.read_text() == (Path(result.artifact or "") / "README.md").read_text()
    plan = Path(client.download_artifacts(run_id, "kubetune/plan.json", str(tmp_path / "dl2"))).read_text()
    assert '"summary": "a tiny plan"' in plan

    # a restart of the same job (a pod restart, an oomRetry attempt) reattaches to the same run
    again = run(config, log=lambda _: None)
    assert again.tracking is not None and again.tracking.run_id == run_id


def test_a_tracking_server_that_is_down_never_fails_the_training(tiny_model: Path, tmp_path: Path) -> None:
    down = f"http://user:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    config = _config(tiny_model, tmp_path, down)
    lines: list[str] = []
    result = run(config, log=lines.append)
    assert result.outcome == "succeeded", result.message
    assert result.tracking is not None and not result.tracking.available and result.tracking.run_id is None
    assert "cannot use the MLflow server" in (result.tracking.message or "")
    assert "s3cret" not in result.to_json() and not any("s3cret" in line for line in lines)
    status = _status(config, result)
    assert status["phase"] == "Succeeded" and "runId" not in status.get("tracking", {})
    cond = next(c for c in status["conditions"] if c["type"] == "TrackingAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "TrackingUnavailable")
    (event,) = [e for e in events_for({"phase": "Running", "reason": "Running"}, status) if e.reason != "GatesPassed"]
    assert (event.type, event.reason) == ("Warning", "TrackingUnavailable") and "s3cret" not in event.message
