"""GitOps health on the real local control plane: what kstatus (sigs.k8s.io/cli-utils — Flux and
kstatus-based pipelines decide from it) computes for live FineTuneJobs through their life, run by
cluster/kstatus (built by cluster/build-kstatus.sh), and what it computes for the Argo CD testdata.

The Argo CD testdata (gitops/argocd/kubetune.io/<Kind>/testdata/) are CRs captured here, from
real runs: regenerate them with

    KUBETUNE_GITOPS_CAPTURE=1 pytest tests/e2e/test_gitops.py

and review the messages in health_test.yaml beside them (tests/unit/gitops runs the Lua checks and
the Flux CEL expressions on them).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    REPO,
    TRAINER_CLUSTER_ROLE,
    OperatorProcess,
    finish,
    ftj,
    get_cr,
    pa,
    pass_preflight,
    report_progress,
    trainer_pods,
    wait_phase,
)

from kubetune.api.constants import GROUP, PLURALS, VERSION
from kubetune.api.trainer_contract import TrainerResult
from kubetune_devcluster import Cluster, wait_until

pytestmark = pytest.mark.e2e

ARGOCD = REPO / "gitops" / "argocd" / GROUP
CAPTURE = os.environ.get("KUBETUNE_GITOPS_CAPTURE") == "1"
# Argo CD's verdict in health_test.yaml ⇒ what kstatus must say of the same object
KSTATUS_OF = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress", "Suspended": "InProgress"}
PASS = {"golden.accuracy": 0.8}
FAIL = {"golden.accuracy": 0.2}
# a trainer that reports free text as its reason, 200 characters long
LONG_REASON = ("CUDA error: an illegal memory access was encountered; compile with TORCH_USE_CUDA_DSA to "
               "enable device-side assertions (rank 0, step 1187). " + "Details follow. " * 10)[:200]


@pytest.fixture(scope="module")
def kstatus_bin() -> Path:
    out = subprocess.run(["bash", str(REPO / "cluster" / "build-kstatus.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    cluster.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    for kind in PLURALS.values():
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{kind}.{GROUP}", "--timeout=60s", check=True)
    cluster.apply(TRAINER_CLUSTER_ROLE)
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    print(op.log_tail(40))
    op.kill(signal.SIGTERM)


class Health:
    """kstatus of live CRs in one namespace, and the captures for Argo CD's testdata."""

    def __init__(self, cluster: Cluster, kstatus_bin: Path, namespace: str) -> None:
        self.cluster, self.bin, self.ns = cluster, kstatus_bin, namespace
        self.seen: list[tuple[str, str, str]] = []

    def kstatus(self, kind: str, name: str, label: str) -> str:
        ref = f"{PLURALS[kind]}.{VERSION}.{GROUP}/{name}"
        out = subprocess.run([str(self.bin), "-kubeconfig", str(self.cluster.kubeconfig), "-n", self.ns, ref],
                             capture_output=True, text=True, check=True)
        self.seen.append((label, out.stdout.strip(), out.stderr.strip()))
        print(f"kstatus {kind} {name} [{label}]: {out.stdout.strip()} — {out.stderr.strip()}")
        return out.stdout.strip()

    def capture(self, obj: dict[str, Any], name: str) -> None:
        """Keep `obj` as Argo CD testdata (with KUBETUNE_GITOPS_CAPTURE=1): as the API server served
        it, less what changes on every run and says nothing of health (managedFields, uid,
        resourceVersion, the test's namespace name)."""
        if not CAPTURE:
            return
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        for key in ("managedFields", "uid", "resourceVersion"):
            meta.pop(key, None)
        meta["namespace"] = "ml-team"
        for ref in meta.get("ownerReferences") or []:
            ref.pop("uid", None)
        path = ARGOCD / obj["kind"] / "testdata" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create and return the API server's answer (the status it defaults, before the operator's write)."""
        out = self.cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(obj), check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def suspend(self, kind: str, name: str, suspend: bool) -> dict[str, Any]:
        """Patch spec.suspend; returns the API server's answer (a new generation the status has not seen)."""
        out = self.cluster.kubectl("patch", f"{kind.lower()}.{GROUP}", name, "-n", self.ns, "--type=merge",
                                   "-p", json.dumps({"spec": {"suspend": suspend}}), "-o", "json", check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def phase(self, kind: str, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        return wait_phase(self.cluster, kind, self.ns, name, *phases, timeout=timeout)


def result(metrics: dict[str, float]) -> TrainerResult:
    return TrainerResult(outcome="succeeded", metrics=metrics, artifact="s3://bucket/out/adapter")


def test_kstatus_through_a_finetunejob_life(cluster: Cluster, operator: OperatorProcess, kstatus_bin: Path,
                                            namespace: str) -> None:
    h = Health(cluster, kstatus_bin, namespace)
    # Pending: created, before the trainer runs
    h.capture(h.create(ftj("tune", namespace)), "new")
    assert h.kstatus("FineTuneJob", "tune", "Pending") == "InProgress"
    pass_preflight(cluster, namespace, "tune")
    (pod,) = trainer_pods(cluster, namespace, "tune")
    name = pod["metadata"]["name"]
    h.phase("FineTuneJob", "tune", "Running")
    report_progress(cluster, namespace, name, step=120, totalSteps=200, loss=1.25, stage="training")
    obj = wait_until(lambda: (o := get_cr(cluster, "FineTuneJob", namespace, "tune"))["status"].get("progress")
                     and o, timeout=30, what="progress mirrored")
    h.capture(obj, "running")
    assert h.kstatus("FineTuneJob", "tune", "Running") == "InProgress"
    finish(cluster, namespace, name, "succeeded", result=result(PASS))
    h.capture(h.phase("FineTuneJob", "tune", "Succeeded"), "succeeded")
    assert h.kstatus("FineTuneJob", "tune", "Succeeded") == "Current"

    h.create(ftj("weak", namespace))
    pass_preflight(cluster, namespace, "weak")
    (pod,) = trainer_pods(cluster, namespace, "weak")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(FAIL))
    h.capture(h.phase("FineTuneJob", "weak", "GateFailed"), "gate-failed")
    assert h.kstatus("FineTuneJob", "weak", "GateFailed") == "Failed"

    # a trainer reason of 200 characters of free text: the status still updates, in CamelCase
    h.create(ftj("crash", namespace))
    pass_preflight(cluster, namespace, "crash")
    (pod,) = trainer_pods(cluster, namespace, "crash")
    crash = TrainerResult(outcome="failed", reason=LONG_REASON, message="the trainer crashed at step 1187")
    finish(cluster, namespace, pod["metadata"]["name"], "failed", exit_code=1, result=crash)
    obj = h.phase("FineTuneJob", "crash", "Failed")
    h.capture(obj, "failed")
    assert h.kstatus("FineTuneJob", "crash", "Failed") == "Failed"
    reason = obj["status"]["reason"]
    assert reason.startswith("CUDAErrorAnIllegalMemoryAccessWasEncountered") and reason.isalnum()
    assert "the trainer crashed at step 1187" in obj["status"]["message"]
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", reason)

    assert [s for _, s, _ in h.seen] == ["InProgress", "InProgress", "Current", "Failed", "Failed"]


def test_suspended_stale_and_preference_alignment(cluster: Cluster, operator: OperatorProcess, kstatus_bin: Path,
                                                 namespace: str) -> None:
    h = Health(cluster, kstatus_bin, namespace)
    h.create(ftj("base", namespace))
    h.capture(h.create(pa("align", namespace, "base")), "new")
    h.capture(h.phase("PreferenceAlignment", "align", "Waiting"), "waiting")
    assert h.kstatus("PreferenceAlignment", "align", "Waiting") == "InProgress"
    pass_preflight(cluster, namespace, "base")
    h.phase("FineTuneJob", "base", "Running")

    # spec.suspend changes the generation: until the operator has seen it, the status is stale
    stale = h.suspend("FineTuneJob", "base", True)
    assert stale["metadata"]["generation"] == stale["status"]["observedGeneration"] + 1
    h.capture(stale, "stale-generation")
    h.capture(h.phase("FineTuneJob", "base", "Suspended"), "suspended")
    assert h.kstatus("FineTuneJob", "base", "Suspended") == "InProgress"
    h.suspend("FineTuneJob", "base", False)
    h.phase("FineTuneJob", "base", "Running")
    (pod,) = trainer_pods(cluster, namespace, "base")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(PASS))
    h.phase("FineTuneJob", "base", "Succeeded")

    pass_preflight(cluster, namespace, "align")
    (pod,) = trainer_pods(cluster, namespace, "align")
    h.capture(h.phase("PreferenceAlignment", "align", "Running"), "running")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result({}))
    h.capture(h.phase("PreferenceAlignment", "align", "Succeeded"), "succeeded")
    assert h.kstatus("PreferenceAlignment", "align", "Succeeded") == "Current"

    # an alignment of a FineTuneJob whose gates failed can never run
    h.create(ftj("weak", namespace))
    pass_preflight(cluster, namespace, "weak")
    (pod,) = trainer_pods(cluster, namespace, "weak")
    finish(cluster, namespace, pod["metadata"]["name"], "succeeded", result=result(FAIL))
    h.phase("FineTuneJob", "weak", "GateFailed")
    h.create(pa("align-weak", namespace, "weak"))
    h.capture(h.phase("PreferenceAlignment", "align-weak", "Failed"), "dependency-failed")
    assert h.kstatus("PreferenceAlignment", "align-weak", "DependencyFailed") == "Failed"


def argocd_cases() -> list[tuple[str, str]]:
    cases = []
    for test in sorted(ARGOCD.glob("*/health_test.yaml")):
        for case in yaml.safe_load(test.read_text())["tests"]:
            cases.append((str((test.parent / case["inputPath"]).relative_to(ARGOCD)), case["healthStatus"]["status"]))
    return cases


@pytest.mark.parametrize(("path", "argocd"), argocd_cases())
def test_kstatus_agrees_with_argocd_on_the_testdata(kstatus_bin: Path, path: str, argocd: str) -> None:
    out = subprocess.run([str(kstatus_bin), "-f", str(ARGOCD / path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == KSTATUS_OF[argocd], out.stderr
