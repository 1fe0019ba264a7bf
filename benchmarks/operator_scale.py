"""Operator scale benchmark on the local control plane.

    python benchmarks/operator_scale.py [--jobs 200] [--rss-jobs 1000] [--cluster-dir DIR]

Creates N FineTuneJobs (suspended, so no pods run and only the operator's work is measured) and
times create → Job created (seen on a watch), p50/p99, and the API requests per CR (the API
server's own request counter, minus the benchmark's creates). The same is run, on the same API
server, with a minimal kopf operator that only creates a Job per CR; the ratio of the p50s is the
figure of merit (goal ≤ 1.5). Then kubetune's operator RSS with --rss-jobs CRs (goal ≤ 200 MB).
Writes benchmarks/results/operator_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "cluster"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

MINIMAL_OPERATOR = '''
import kopf, kubernetes

@kopf.on.startup()
def configure(settings, **_):
    settings.posting.level = 40
    settings.peering.standalone = True
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()

@kopf.on.create("kubetune.io", "v1alpha1", "finetunejobs")
def create(body, name, namespace, **_):
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name + "-ft", "labels": {"kubetune.io/job": name}},
           "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "trainer", "image": "ghcr.io/kubetune/trainer:bench"}]}}}}
    kopf.adopt(job)
    kubernetes.client.BatchV1Api().create_namespaced_job(namespace, job)
'''


def cr(name: str, namespace: str) -> dict[str, Any]:
    from operator_helpers import ftj

    obj = ftj(name, namespace, suspend=True)
    return obj


def apiserver_requests(cluster: Any) -> float:
    _, body = cluster.api_get("/metrics", timeout=30)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class JobWatcher(threading.Thread):
    """Records when each Job (by its kubetune.io/job label) is first seen."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.namespace = cluster, namespace
        self.seen: dict[str, float] = {}
        self.proc: subprocess.Popen[str] | None = None

    def run(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.cluster.kubectl_path), f"--kubeconfig={self.cluster.kubeconfig}", "get", "jobs", "-n",
             self.namespace, "--watch", "-o", "jsonpath={.metadata.labels.kubetune\\.io/job}{\"\\n\"}"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            name = line.strip()
            if name and name not in self.seen:
                self.seen[name] = time.monotonic()

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()


def create_all(cluster: Any, namespace: str, n: int, prefix: str, rate: float = 0.0) -> dict[str, float]:
    """POST the CRs one by one (at `rate` per second when > 0, the same arrival rate for every
    operator) and note when each POST returned."""
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    from kubetune.controller.k8s import KubeApi

    api = KubeApi()
    created: dict[str, float] = {}
    t0 = time.monotonic()
    for i in range(n):
        if rate > 0:
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        obj = cr(f"{prefix}{i}", namespace)
        path = f"/apis/kubetune.io/v1alpha1/namespaces/{namespace}/finetunejobs"
        api.request("POST", path, obj, resource="finetunejobs")
        created[obj["metadata"]["name"]] = time.monotonic()
    return created


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run_case(cluster: Any, label: str, start_operator: Any, n: int, workdir: Path, rate: float,
             burst: bool = False) -> dict[str, Any]:
    """Paced: the operator runs, CRs arrive at `rate`/s. Burst: the CRs exist before the operator
    starts (a restart after an outage); latency is then counted from the operator's start."""
    ns = f"bench-{label}-{'burst' if burst else 'paced'}-{int(time.time()) % 100000}"
    cluster.kubectl("create", "namespace", ns, check=True)
    watcher = JobWatcher(cluster, ns)
    watcher.start()
    time.sleep(1)
    before = apiserver_requests(cluster)
    if burst:
        create_all(cluster, ns, n, "b")
        t0 = time.monotonic()
        proc = start_operator(ns)
        created = dict.fromkeys((f"b{i}" for i in range(n)), t0)
    else:
        proc = start_operator(ns)
        time.sleep(3)
        t0 = time.monotonic()
        created = create_all(cluster, ns, n, "b", rate)
    deadline = time.monotonic() + 600
    while len(watcher.seen) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    wall = time.monotonic() - t0
    time.sleep(2)
    after = apiserver_requests(cluster)
    watcher.stop()
    lat = [watcher.seen[k] - created[k] for k in created if k in watcher.seen]
    result = {
        "label": label + (" (burst)" if burst else f" (paced {rate:g}/s)"), "n": n, "jobs_seen": len(watcher.seen), "wall_s": wall,
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p99_s": percentile(lat, 0.99) if lat else float("nan"),
        "requests_per_cr": (after - before - n) / n,  # minus the benchmark's own creates
        "proc": proc, "namespace": ns,
    }
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rss-jobs", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0, help="CRs per second in the paced case")
    ap.add_argument("--cluster-dir", default=os.environ.get("KUBETUNE_E2E_CLUSTER_DIR"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "operator_scale.md"))
    args = ap.parse_args()

    from operator_helpers import TRAINER_CLUSTER_ROLE, OperatorProcess

    from kubetune_devcluster import Cluster, ensure_binaries, start

    workdir = Path(tempfile.mkdtemp(prefix="kt-bench-"))
    own = not args.cluster_dir
    cluster = start(workdir / "cluster", binaries=ensure_binaries()) if own else Cluster.attach(args.cluster_dir)
    try:
        cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
        for crd in ("finetunejobs.kubetune.io", "preferencealignments.kubetune.io"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=True)
        cluster.apply(TRAINER_CLUSTER_ROLE)

        # 1. the minimal kopf operator
        script = workdir / "minimal_operator.py"
        script.write_text(MINIMAL_OPERATOR)

        # Each operator watches only its own namespace: neither sees the other's CRs (or older ones).
        def start_minimal(ns: str) -> subprocess.Popen[bytes]:
            log = open(workdir / "minimal.log", "wb")  # noqa: SIM115
            return subprocess.Popen([sys.executable, "-m", "kopf", "run", str(script), f"--namespace={ns}",
                                     "--standalone"], env=cluster.env(), stdout=log, stderr=subprocess.STDOUT)

        def stop(r: dict[str, Any]) -> None:
            r["proc"].send_signal(signal.SIGTERM)
            r["proc"].wait(timeout=60)
            cluster.kubectl("delete", "namespace", r["namespace"], "--wait=false")

        base = run_case(cluster, "minimal", start_minimal, args.jobs, workdir, args.rate)
        stop(base)
        base_burst = run_case(cluster, "minimal", start_minimal, args.jobs, workdir, args.rate, burst=True)
        stop(base_burst)

        # 2. kubetune's operator
        holder: dict[str, OperatorProcess] = {}

        def start_kubetune(ns: str) -> Any:
            holder["op"] = OperatorProcess(cluster, workdir, namespaces=(ns,), KUBETUNE_RESYNC_SECONDS="5")
            holder["op"].start()
            return holder["op"].proc

        ours_burst = run_case(cluster, "kubetune", start_kubetune, args.jobs, workdir, args.rate, burst=True)
        holder["op"].kill(signal.SIGTERM)
        cluster.kubectl("delete", "namespace", ours_burst["namespace"], "--wait=false")
        ours = run_case(cluster, "kubetune", start_kubetune, args.jobs, workdir, args.rate)
        op = holder["op"]

        own_requests = 0.0
        for line in op.metrics().splitlines():
            m = re.match(r"kubetune_operator_api_requests_total\{.*\} ([0-9.e+]+)", line)
            if m:
                own_requests += float(m.group(1))

        # 3. RSS with rss_jobs CRs (add the rest in the same namespace)
        assert op.proc is not None
        rss_before = rss_mb(op.proc.pid)
        extra = args.rss_jobs - args.jobs
        if extra > 0:
            ns = ours["namespace"]
            for s in range(0, extra, 100):
                objs = [cr(f"r{i}", ns) for i in range(s, min(extra, s + 100))]
                cluster.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                       "items": objs}), check=True, timeout=300)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                n_jobs = len(cluster.get("jobs", "-n", ns)["items"])
                if n_jobs >= args.rss_jobs:
                    break
                time.sleep(5)
            time.sleep(10)
        rss = rss_mb(op.proc.pid)
        op.kill(signal.SIGTERM)
        cluster.kubectl("delete", "namespace", ours["namespace"], "--wait=false")
    finally:
        if own:
            cluster.stop()

    ratio = ours["p50_s"] / base["p50_s"] if base["p50_s"] > 0 else float("nan")
    lines = [
        "# Operator scale benchmark",
        "",
        f"`python benchmarks/operator_scale.py --jobs {args.jobs} --rss-jobs {args.rss_jobs}` on the local control "
        "plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok), 2 shared CPU cores. "
        "FineTuneJobs are created suspended, so no trainer pod runs and only the operators' work is measured. "
        f"Paced: the operator runs and CRs arrive at {args.rate:g}/s (one POST each), latency from the POST "
        "returning to the Job's ADDED event on a watch. Burst: the CRs exist before the operator starts, latency "
        "from the operator's start. Each operator watches only its own namespace. The minimal operator is "
        "kopf `on.create` + `kopf.adopt` + `BatchV1Api.create_namespaced_job` (embedded in the script).",
        "",
        "| operator | CRs | Jobs created | p50 create→Job (s) | p99 (s) | wall (s) | API requests / CR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (base, ours, base_burst, ours_burst):
        lines.append(f"| {r['label']} | {r['n']} | {r['jobs_seen']} | {r['p50_s']:.3f} | {r['p99_s']:.3f} | "
                     f"{r['wall_s']:.1f} | {r['requests_per_cr']:.1f} |")
    lines += [
        "",
        f"- **p50 ratio kubetune / minimal: {ratio:.2f}** paced (goal ≤ 1.5), p99 ratio "
        f"{ours['p99_s'] / base['p99_s']:.2f}; burst (all CRs waiting when the operator starts): p50 ratio "
        f"{ours_burst['p50_s'] / base_burst['p50_s']:.2f}, time to the last Job {ours_burst['wall_s']:.1f} s vs "
        f"{base_burst['wall_s']:.1f} s.",
        f"- API requests per CR are the API server's `apiserver_request_total` (all clients but watches: the "
        f"Job controller's and the operators') over the run, minus the benchmark's own creates. kubetune's own "
        f"calls (`kubetune_operator_api_requests_total`): {own_requests / max(1, args.jobs):.1f} per CR "
        "(ServiceAccount + RoleBinding once per namespace, ConfigMap, Job, status patches, Events).",
        f"- kubetune operator RSS: {rss_before:.0f} MB with {args.jobs} CRs, **{rss:.0f} MB with {args.rss_jobs} "
        f"CRs** (goal ≤ 200 MB).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
