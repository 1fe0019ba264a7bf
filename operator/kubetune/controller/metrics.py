"""Prometheus metrics of the operator (prometheus-client), served on /metrics.

Counters and the histogram are updated as things happen; the per-job gauges and the phase counts
are computed from the operator's cache at scrape time, so the series of a deleted job disappear
with it (bounded cardinality). Names follow Prometheus conventions: base units, `_total` counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune.api.enums import Phase
from kubetune.derivation.timeutil import parse_time

PHASES = [str(p) for p in Phase]


class JobsCollector(Collector):
    """Phase counts and per-job series from the cache of CRs (kind, namespace, name) ⇒ object."""

    def __init__(self, objects: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._objects = objects
        # the highest GPU-seconds reported per CR uid: a counter never goes down, even when a resumed
        # Job resets its startTime; only uids still in the cache are kept (bounded by the live CRs)
        self._gpu_high: dict[str, float] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("kubetune_jobs", "kubetune jobs by kind and phase.", labels=["kind", "phase"])
        loss = GaugeMetricFamily("kubetune_job_training_loss", "Latest training loss reported by the trainer.",
                                 labels=["kind", "namespace", "name"])
        ratio = GaugeMetricFamily("kubetune_job_progress_ratio", "Optimizer steps done / planned, in [0, 1].",
                                  labels=["kind", "namespace", "name"])
        tps = GaugeMetricFamily("kubetune_job_tokens_per_second", "Training throughput, all GPUs of the job.",
                                labels=["kind", "namespace", "name"])
        gpu_s = CounterMetricFamily("kubetune_job_gpu_seconds", "GPU-seconds held by the job's trainer: "
                                    "GPUs × nodes × seconds since the Job started (until it finished); "
                                    "never decreases while the operator runs (a resumed Job keeps its total).",
                                    labels=["kind", "namespace", "name"])
        # the model cache, from what each job's data preflight reported (status.modelCache)
        cache = CounterMetricFamily("kubetune_model_cache_requests", "Base models asked of the model cache by "
                                    "the jobs that exist, by result: hit (nothing downloaded) or miss.",
                                    labels=["result"])
        downloaded = GaugeMetricFamily("kubetune_job_model_downloaded_bytes", "Bytes of the base model the job's "
                                       "data preflight downloaded into the model cache (0 on a hit).",
                                       labels=["kind", "namespace", "name"])
        hits = misses = 0
        counts: dict[tuple[str, str], int] = {}
        now = datetime.now(UTC)
        high: dict[str, float] = {}
        for obj in list(self._objects()):
            kind = str(obj.get("kind"))
            meta = obj.get("metadata") or {}
            status = obj.get("status") or {}
            phase = str(status.get("phase") or Phase.PENDING)
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
            labels = [kind, str(meta.get("namespace")), str(meta.get("name"))]
            progress = status.get("progress") or {}
            if progress.get("loss") is not None:
                loss.add_metric(labels, float(progress["loss"]))
            if progress.get("step") is not None and progress.get("totalSteps"):
                ratio.add_metric(labels, min(1.0, float(progress["step"]) / float(progress["totalSteps"])))
            if progress.get("tokensPerSecond") is not None:
                tps.add_metric(labels, float(progress["tokensPerSecond"]))
            mc = status.get("modelCache") or {}
            if mc.get("used"):
                hits, misses = hits + bool(mc.get("hit")), misses + (not mc.get("hit"))
                downloaded.add_metric(labels, float(mc.get("bytesDownloaded") or 0))
            uid = str(meta.get("uid"))
            with self._lock:
                value = self._gpu_high.get(uid)
            start = parse_time(status.get("startTime"))
            if start is not None:
                end = parse_time(status.get("completionTime")) or now
                res = (obj.get("spec") or {}).get("resources") or {}
                gpus = int(res.get("gpus") or 1) * int(res.get("nodes") or 1)
                value = max(value or 0.0, (end - start).total_seconds() * gpus)
            if value is not None:  # also while a suspended Job has no startTime
                high[uid] = value
                gpu_s.add_metric(labels, value)
        with self._lock:
            self._gpu_high = high
        for kind in ("FineTuneJob", "PreferenceAlignment"):
            for phase in PHASES:
                jobs.add_metric([kind, phase], counts.get((kind, phase), 0))
        cache.add_metric(["hit"], hits)
        cache.add_metric(["miss"], misses)
        yield from (jobs, loss, ratio, tps, gpu_s, cache, downloaded)


class _CacheCollector(Collector):
    def __init__(self, sizes: Callable[[], Mapping[str, int]]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[Any]:
        fam = GaugeMetricFamily("kubetune_operator_cache_entries",
                                "Entries in each of the operator's in-memory caches (bounded by the live CRs).",
                                labels=["cache"])
        for name, n in sorted(self._sizes().items()):
            fam.add_metric([name], float(n))
        yield fam


class OperatorMetrics:
    """One operator's metrics, in a registry of its own: two operators in one process (tests) never
    count into each other's series. `objects` (the cache of CRs) feeds the scrape-time gauges."""

    def __init__(self, objects: Callable[[], Iterable[Mapping[str, Any]]] = tuple) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.phase_transitions = Counter(
            "kubetune_phase_transitions_total",
            "Phase changes of kubetune jobs, by kind and the phases left and entered.",
            ["kind", "from_phase", "to_phase"], registry=self.registry)
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds", "Time to reconcile one job (derive status, create/patch children).",
            ["kind"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors_total", "Reconciles that raised (retried), by kind and error class.",
            ["kind", "error"], registry=self.registry)
        self.gate_evaluations = Counter(
            "kubetune_gate_evaluations_total", "Evaluation gates decided, by gate metric and result (passed/failed).",
            ["kind", "gate", "result"], registry=self.registry)
        self.api_requests = Counter(
            "kubetune_operator_api_requests_total", "Kubernetes API requests made by the operator's own calls "
            "(kopf's watches and its own patches are not included), by verb and resource.",
            ["verb", "resource"], registry=self.registry)
        self.events_posted = Counter(
            "kubetune_events_total", "Kubernetes Events posted, by type and reason.", ["type", "reason"],
            registry=self.registry)
        self.registry.register(JobsCollector(objects))

    def track_caches(self, sizes: Callable[[], Mapping[str, int]]) -> None:
        """kubetune_operator_cache_entries{cache}: how many entries each of the operator's caches holds
        (the World's and the Reconciler's `sizes()`), so a leak shows on a dashboard and in the soak test."""
        self.registry.register(_CacheCollector(sizes))

    def names(self) -> list[str]:
        """Every metric name this registry exposes (docs/operator.md lists them)."""
        return sorted({m.name for m in self.registry.collect()})

    def serve(self, port: int) -> Callable[[], None]:
        """Serve /metrics on `port` (all addresses) in a thread; returns what stops the server."""
        server, _ = start_http_server(port, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
        return stop
