"""The channel: progress.json (atomic), the pod annotation merge-patch (rate-limited, off the
training thread), Prometheus metrics, the final result in the termination log and result.json."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import sft_manifest

from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_contract import (
    JobIdentity,
    ReportChannel,
    Sources,
    TrainerConfig,
    TrainerResult,
)
from kubetune_trainer.reporting import PROGRESS_ANNOTATION, PodAnnotator, Reporter, progress_line

pytestmark = pytest.mark.trainer


def _config(tmp_path: Path, **report: object) -> TrainerConfig:
    return TrainerConfig(job=JobIdentity(kind="FineTuneJob", name="j", namespace="ns"), task="sft",
                         spec=FineTuneJobSpec.model_validate(sft_manifest("lora")["spec"]),
                         sources=Sources(model="m", dataset="d", output=str(tmp_path / "out")),
                         report=ReportChannel(**report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ApiServer:
    """Records PATCH requests like the API server would receive them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_progress_annotation_metrics_and_result(tmp_path: Path) -> None:
    api = _ApiServer()
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    port = _free_port()
    config = _config(tmp_path, pod_annotations=True, metrics_port=port, interval_seconds=60,
                     termination_log=str(tmp_path / "termination-log"))
    lines: list[str] = []
    annotator = PodAnnotator("ns", "pod-1", api=api.url, token_path=token)
    reporter = Reporter(config, log=lines.append, annotator=annotator)
    try:
        reporter.update(stage="training", step=0, total_steps=10, force=True)
        for step in range(1, 6):
            reporter.update(step=step, loss=2.0 / step, learning_rate=1e-4, tokens_per_second=1000.0)
        progress = json.loads((tmp_path / "out" / "kubetune" / "progress.json").read_text())
        assert progress["stage"] == "training" and progress["totalSteps"] == 10
        # the history beside it holds each written snapshot in order (first: the forced stage change)
        history = [json.loads(line) for line in
                   (tmp_path / "out" / "kubetune" / "progress.jsonl").read_text().splitlines()]
        assert history[0]["stage"] == "training" and history[0]["step"] == 0
        assert history[-1] == progress and [h["step"] for h in history] == sorted(h["step"] for h in history)

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'kubetune_trainer_step{job="j",kind="FineTuneJob",namespace="ns"} 5.0' in metrics
        assert "kubetune_trainer_loss" in metrics and "kubetune_trainer_tokens_per_second" in metrics

        reporter.finish(TrainerResult(outcome="succeeded", reason="Succeeded", metrics={"train.loss": 0.4},
                                      details={"big": "x" * 10_000}))
    finally:
        reporter.close()
    result = json.loads((tmp_path / "out" / "kubetune" / "result.json").read_text())
    assert result["details"]["big"] and result["progress"]["step"] == 5
    term = (tmp_path / "termination-log").read_bytes()
    assert len(term) <= 4096 and json.loads(term)["metrics"] == {"train.loss": 0.4}

    # interval 60 s: the forced stage change, then the final state — not one patch per step
    assert 1 <= len(api.requests) <= 3
    path, headers, body = api.requests[-1]
    assert path == "/api/v1/namespaces/ns/pods/pod-1"
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert headers["Authorization"] == "Bearer secret-token"
    assert json.loads(body["metadata"]["annotations"][PROGRESS_ANNOTATION])["step"] == 5
    assert any(line.startswith("[training] step 5/10 (50%)") for line in lines) or lines


def test_annotation_failures_never_stop_training(tmp_path: Path) -> None:
    lines: list[str] = []
    annotator = PodAnnotator("ns", "p", api=f"http://127.0.0.1:{_free_port()}", token_path=tmp_path / "none",
                             timeout=0.5)
    reporter = Reporter(_config(tmp_path, pod_annotations=True, interval_seconds=0.05), log=lines.append,
                        annotator=annotator)
    reporter.update(stage="training", step=1, total_steps=2, force=True)
    reporter.finish(TrainerResult(outcome="succeeded"))
    reporter.close()
    assert sum("cannot patch" in line for line in lines) == 1


def test_progress_line() -> None:
    from kubetune.api.trainer_contract import ProgressReport

    line = progress_line(ProgressReport(stage="training", step=12, total_steps=120, loss=2.34567, learning_rate=4.9e-4,
                                        grad_norm=1.234, tokens_per_second=1234.4, eta_seconds=100))
    assert line == "[training] step 12/120 (10%) loss 2.3457 lr 4.90e-04 gnorm 1.23 tok/s 1,234 eta 1m40s"
