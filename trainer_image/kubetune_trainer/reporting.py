"""The trainer's side of the operator ↔ trainer channel (docs/trainer-channel.md).

Progress (often, best effort):
- ``<output>/kubetune/progress.json`` (or ``report.progressFile``), replaced atomically, and the same
  snapshot appended as one line to ``progress.jsonl`` beside it, so a reader that polls (``kubetune
  run``) sees every stage even when a stage lasts less than its poll interval;
- the ``kubetune.io/progress`` annotation on the trainer's own Pod, a JSON merge-patch sent at most
  once per ``report.intervalSeconds`` from a background thread (POD_NAME / POD_NAMESPACE from the
  downward API, the in-cluster service-account token and CA; plain urllib, no client library);
- Prometheus gauges on ``report.metricsPort`` (``kubetune_trainer_step``, ``_loss``, ...);
- one log line per step (at most one per second) for local runs.

Final result (once, reliably): the compact form to ``report.terminationLog`` (the container
termination message, ≤ 4 KiB) and the full form to ``<output>/kubetune/result.json``.
Reporting never fails training: I/O errors are logged once and ignored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from kubetune.api.status import DataSummary
from kubetune.api.trainer_contract import ProgressReport, TrainerConfig, TrainerResult

PROGRESS_ANNOTATION = "kubetune.io/progress"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LOG_INTERVAL_S = 1.0
FILE_INTERVAL_S = 1.0

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(p: ProgressReport) -> str:
    """One line for humans: ``step 12/120 (10%) loss 2.3456 lr 4.9e-04 gnorm 1.23 tok/s 1,234 eta 1m40s``."""
    parts = [f"[{p.stage or '?'}]"]
    if p.step is not None:
        total = p.total_steps or 0
        pct = f" ({100 * p.step / total:.0f}%)" if total else ""
        parts.append(f"step {p.step}/{total or '?'}{pct}")
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.learning_rate is not None:
        parts.append(f"lr {p.learning_rate:.2e}")
    if p.grad_norm is not None:
        parts.append(f"gnorm {p.grad_norm:.3g}")
    if p.tokens_per_second is not None:
        parts.append(f"tok/s {p.tokens_per_second:,.0f}")
    if p.eta_seconds is not None:
        parts.append(f"eta {fmt_duration(p.eta_seconds)}")
    if p.peak_gpu_memory_bytes:
        parts.append(f"peak {p.peak_gpu_memory_bytes / 2**30:.1f}GiB")
    if p.model_cache is not None and p.model_cache.progress is not None:
        parts.append(f"model download {p.model_cache.progress.line()}")
    return " ".join(parts)


class PodAnnotator:
    """Merge-patches one annotation on the trainer's own Pod. RBAC needed: patch on that pod."""

    def __init__(self, namespace: str, pod: str, *, api: str | None = None, token_path: Path | None = None,
                 ca_path: Path | None = None, timeout: float = 5.0) -> None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if api is None:
            if not host:
                raise ValueError("not in a cluster: KUBERNETES_SERVICE_HOST is not set")
            api = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self.url = f"{api.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
        self.token_path = token_path or SA_DIR / "token"
        ca = ca_path or SA_DIR / "ca.crt"
        self.context = ssl.create_default_context(cafile=str(ca)) if self.url.startswith("https") and ca.exists() else None
        self.timeout = timeout

    @classmethod
    def from_env(cls) -> PodAnnotator | None:
        pod, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not pod or not ns:
            return None
        try:
            return cls(ns, pod)
        except ValueError:
            return None

    def patch(self, annotations: dict[str, str]) -> None:
        body = json.dumps({"metadata": {"annotations": annotations}}).encode()
        req = urllib.request.Request(self.url, data=body, method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json"})
        # The token is re-read each time: projected tokens rotate.
        with contextlib.suppress(OSError):
            req.add_header("Authorization", "Bearer " + self.token_path.read_text().strip())
        with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
            resp.read()


class _AnnotationPump:
    """Sends the newest progress at most once per interval, off the training thread."""

    def __init__(self, annotator: PodAnnotator, interval: float, log: Log) -> None:
        self.annotator, self.interval, self.log = annotator, interval, log
        self._pending: str | None = None
        self._sent: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="kubetune-progress", daemon=True)
        self._thread.start()

    def offer(self, value: str, urgent: bool = False) -> None:
        with self._lock:
            self._pending = value
        if urgent:
            self._wake.set()

    def _send(self) -> None:
        with self._lock:
            value = self._pending
        if value is None or value == self._sent:
            return
        try:
            self.annotator.patch({PROGRESS_ANNOTATION: value})
            self._sent = value
        except Exception as e:  # never fatal
            if not self._warned:
                self._warned = True
                self.log(f"warning: cannot patch the {PROGRESS_ANNOTATION} annotation ({type(e).__name__}: {e}); "
                         "progress still goes to progress.json and /metrics")

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._send()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=self.annotator.timeout + 1)
        self._send()


class Metrics:
    """Prometheus gauges on their own registry, served on ``port``."""

    GAUGES: ClassVar[dict[str, str]] = {
        "step": "Optimizer steps done",
        "total_steps": "Optimizer steps planned",
        "epoch": "Epochs done (fractional)",
        "loss": "Latest training loss",
        "learning_rate": "Current learning rate",
        "grad_norm": "Latest gradient norm",
        "tokens_per_second": "Training throughput (tokens/s)",
        "eta_seconds": "Estimated seconds to the end of training",
        "peak_gpu_memory_bytes": "Peak GPU memory allocated",
    }

    def __init__(self, port: int, labels: dict[str, str]) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        names = sorted(labels)
        self._labels = [labels[n] for n in names]
        self.gauges = {k: Gauge(f"kubetune_trainer_{k}", doc, names, registry=self.registry) for k, doc in self.GAUGES.items()}
        self.stage = Gauge("kubetune_trainer_stage", "1 for the current stage", [*names, "stage"], registry=self.registry)
        self._stage: str | None = None
        self.server, self.thread = start_http_server(port, registry=self.registry)

    def update(self, p: ProgressReport) -> None:
        for key, gauge in self.gauges.items():
            value = getattr(p, key)
            if value is not None:
                gauge.labels(*self._labels).set(float(value))
        if p.stage and p.stage != self._stage:
            if self._stage:
                self.stage.labels(*self._labels, self._stage).set(0)
            self.stage.labels(*self._labels, p.stage).set(1)
            self._stage = p.stage

    def close(self) -> None:
        self.server.shutdown()


def _count_start(path: Path) -> int | None:
    """1 + the starts recorded in `path`, recorded; None when the output cannot be written yet."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            before = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            before = 0
        write_atomic(path, f"{before + 1}\n")
    except OSError:
        return None
    return before + 1


class Reporter:
    """Progress and the final result, through every channel the config turns on."""

    def __init__(self, config: TrainerConfig, *, log: Log = stderr_log, annotator: PodAnnotator | None = None,
                 progress_path: Path | None = None, count_starts: bool = True, metrics: bool = True) -> None:
        """`progress_path`, `count_starts`, `metrics`: the data preflight pod reports its own progress
        (the model download) to a file of its own, counts no trainer start and serves no metrics."""
        self.config = config
        self.log = log
        out = Path(config.sources.output)
        self.dir = out / "kubetune"
        self.progress_path = progress_path or (
            Path(config.report.progress_file) if config.report.progress_file else self.dir / "progress.json")
        self.history_path = self.progress_path.with_suffix(".jsonl")
        self.result_path = self.dir / "result.json"
        self.progress = ProgressReport()
        # Starts of the trainer on this output (pod deleted, preempted, evicted: the Job's next pod
        # comes back here); the operator reads it from progress, since a deleted pod leaves no trace.
        self.main_rank = os.environ.get("RANK", "0") in ("", "0")
        if self.main_rank and count_starts:
            self.progress.attempt = _count_start(self.dir / "attempts")
        self._last_file = 0.0
        self._last_log = 0.0
        self._last_line: str | None = None
        self.metrics: Metrics | None = None
        # Under torchrun only global rank 0 reports progress (every rank writes its own result).
        if config.report.metrics_port and self.main_rank and metrics:
            try:
                self.metrics = Metrics(config.report.metrics_port,
                                       {"job": config.job.name, "namespace": config.job.namespace, "kind": config.job.kind})
            except OSError as e:
                log(f"warning: cannot serve metrics on port {config.report.metrics_port}: {e}")
        self.pump: _AnnotationPump | None = None
        if config.report.pod_annotations and self.main_rank:
            annotator = annotator or PodAnnotator.from_env()
            if annotator is None:
                log("warning: report.podAnnotations is on but POD_NAME/POD_NAMESPACE or the API server are unknown")
            else:
                self.pump = _AnnotationPump(annotator, config.report.interval_seconds, log)

    def update(self, *, force: bool = False, data: DataSummary | None = None, **fields: Any) -> None:
        stage_changed = "stage" in fields and fields["stage"] != self.progress.stage
        for key, value in fields.items():
            setattr(self.progress, key, value)
        if data is not None:
            self.progress.data = data
        p = self.progress
        if p.step is not None and p.total_steps:
            p.summary = f"{100 * p.step / p.total_steps:.0f}% ({p.step}/{p.total_steps})"
        elif "summary" in fields:
            pass
        elif p.stage:
            p.summary = p.stage
        p.updated_at = now_rfc3339()
        force = force or stage_changed
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.update(p)
        if self.main_rank and (force or now - self._last_file >= FILE_INTERVAL_S):
            self._last_file = now
            try:
                write_atomic(self.progress_path, self._json(p))
                # One whole line per append (O_APPEND): a tailing reader never sees half a snapshot
                # except at the very end, which it leaves for its next read.
                with open(self.history_path, "a", encoding="utf-8") as fh:
                    fh.write(self._compact(p) + "\n")
            except OSError as e:
                self.log(f"warning: cannot write {self.progress_path}: {e}")
        if self.pump is not None:
            self.pump.offer(self._compact(p), urgent=force)
        if force or now - self._last_log >= LOG_INTERVAL_S:
            line = progress_line(p)
            if line != self._last_line:
                self._last_log = now
                self._last_line = line
                self.log(line)

    @staticmethod
    def _json(p: ProgressReport) -> str:
        return json.dumps(p.model_dump(by_alias=True, exclude_none=True, mode="json"), indent=2, sort_keys=True)

    @staticmethod
    def _compact(p: ProgressReport) -> str:
        return json.dumps(p.model_dump(by_alias=True, exclude_none=True, mode="json"), separators=(",", ":"), sort_keys=True)

    def finish(self, result: TrainerResult) -> None:
        """Write the final result: full JSON on the output volume, compact in the termination log."""
        result.progress = result.progress or self.progress.model_copy()
        if not self.main_rank:
            self.result_path = self.dir / f"result-rank{os.environ.get('RANK')}.json"
        try:
            write_atomic(self.result_path, json.dumps(json.loads(result.to_json()), indent=2, sort_keys=True) + "\n")
        except OSError as e:
            self.log(f"warning: cannot write {self.result_path}: {e}")
        # one process per pod writes the pod's termination message: its local rank 0 (rank 0 on the first node)
        if self.config.report.termination_log and os.environ.get("LOCAL_RANK", "0") in ("", "0"):
            try:
                Path(self.config.report.termination_log).write_text(result.termination_message())
            except OSError as e:
                self.log(f"warning: cannot write the termination log: {e}")
        if self.pump is not None:
            self.pump.offer(self._compact(self.progress), urgent=True)
        verdict = "succeeded" if result.outcome == "succeeded" else f"failed: {result.reason}: {result.message}"
        self.log(f"[{self.progress.stage or 'done'}] {verdict}")

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()
            self.pump = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def progress_callback(reporter: Reporter) -> Any:
    """A TrainerCallback feeding :class:`Reporter` (step, loss, lr, grad norm, tokens/s, ETA, memory)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.t0: float | None = None
            self.step0 = 0
            self.window: list[tuple[float, int]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.t0 = time.monotonic()
            self.step0 = state.global_step
            reporter.update(stage="training", step=state.global_step, total_steps=state.max_steps, force=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            now = time.monotonic()
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            self.window.append((now, tokens))
            self.window = self.window[-20:]
            tps = None
            if len(self.window) >= 2 and tokens:
                (t_a, n_a), (t_b, n_b) = self.window[0], self.window[-1]
                if t_b > t_a:
                    tps = (n_b - n_a) / (t_b - t_a)
            eta = None
            done = state.global_step - self.step0
            if self.t0 is not None and done > 0 and state.max_steps:
                eta = (now - self.t0) / done * max(state.max_steps - state.global_step, 0)
            peak = None
            try:
                import torch
                if torch.cuda.is_available():
                    peak = int(torch.cuda.max_memory_allocated())
            except Exception:
                peak = None

            def num(key: str) -> float | None:
                v = logs.get(key)
                return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

            reporter.update(step=state.global_step, total_steps=state.max_steps, epoch=num("epoch") or state.epoch,
                            loss=num("loss"), learning_rate=num("learning_rate"), grad_norm=num("grad_norm"),
                            tokens_per_second=tps, eta_seconds=eta, peak_gpu_memory_bytes=peak)

    return ProgressCallback()


__all__ = ["PROGRESS_ANNOTATION", "Metrics", "PodAnnotator", "Reporter", "progress_callback", "progress_line", "write_atomic"]
