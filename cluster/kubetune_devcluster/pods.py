"""Driving fake pods to their end: kwok Stages (stages.yaml) react to these annotations.

A pod on a kwok node becomes Running (containers ready) and then stays Running until
one of these happens:

* annotation `kwok.kubetune.io/complete` = succeeded | failed | oomkilled | evicted
  (see ANNOTATIONS below for exit code / termination message / container / delay), or
* the pod is deleted (`preempted` / `deleted` outcomes here): a pod with finalizers
  (Job pods) first turns Failed with exit code 143, as a kubelet killing it would.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

COMPLETE = "kwok.kubetune.io/complete"
EXIT_CODE = "kwok.kubetune.io/exit-code"
TERMINATION_MESSAGE = "kwok.kubetune.io/termination-message"
CONTAINER = "kwok.kubetune.io/container"
DISRUPTION_REASON = "kwok.kubetune.io/disruption-reason"
DELAY = "kwok.kubetune.io/delay"
ANNOTATIONS = (COMPLETE, EXIT_CODE, TERMINATION_MESSAGE, CONTAINER, DISRUPTION_REASON, DELAY)

STAGE_OUTCOMES = ("succeeded", "failed", "oomkilled", "evicted")  # handled by kwok Stages
OUTCOMES = (*STAGE_OUTCOMES, "preempted", "deleted")  # + handled here by deleting the pod
# kubelet keeps at most 4096 bytes of a container's termination message.
MAX_TERMINATION_MESSAGE = 4096


def _truncate(message: str) -> str:
    data = message.encode()
    if len(data) <= MAX_TERMINATION_MESSAGE:
        return message
    return data[:MAX_TERMINATION_MESSAGE].decode(errors="ignore")


def completion_annotations(
    outcome: str,
    exit_code: int | None = None,
    message: str | None = None,
    *,
    container: str | None = None,
    disruption_reason: str | None = None,
    delay: str | None = None,
) -> dict[str, str]:
    """The annotations that make kwok finish a pod; put them on a Job's pod template to
    have its pods finish on their own (`delay="5s"`: that long after becoming Running)."""
    if outcome not in STAGE_OUTCOMES:
        raise ValueError(f"outcome must be one of {STAGE_OUTCOMES} for annotations, got {outcome!r}")
    if outcome == "succeeded" and exit_code not in (None, 0):
        raise ValueError("a succeeded pod exits with 0")
    if outcome == "oomkilled" and exit_code not in (None, 137):
        raise ValueError("an OOM-killed container exits with 137")
    if outcome in ("failed", "evicted") and exit_code is not None and not 1 <= int(exit_code) <= 255:
        raise ValueError(f"exit code of a failed container must be 1..255, got {exit_code}")
    ann = {COMPLETE: outcome}
    if exit_code is not None:
        ann[EXIT_CODE] = str(int(exit_code))
    if message is not None:
        ann[TERMINATION_MESSAGE] = _truncate(message)
    if container:
        ann[CONTAINER] = container
    if disruption_reason:
        ann[DISRUPTION_REASON] = disruption_reason
    if delay:
        ann[DELAY] = delay
    return ann


def _kubectl_path(kubectl: str | os.PathLike[str] | None) -> str:
    if kubectl:
        return str(kubectl)
    from .binaries import ensure_binaries

    return str(ensure_binaries().kubectl)


def _run(kubectl: str, kubeconfig: str | os.PathLike[str], *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=60
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def finish_pod(
    kubeconfig: str | os.PathLike[str],
    namespace: str,
    pod: str,
    outcome: str,
    exit_code: int | None = None,
    message: str | None = None,
    *,
    container: str | None = None,
    disruption_reason: str | None = None,
    wait: bool = True,
    timeout: float = 30,
    kubectl: str | os.PathLike[str] | None = None,
) -> dict[str, Any] | None:
    """Drive a Running kwok pod to its end.

    outcome:
      succeeded  phase Succeeded, exit 0 (reason Completed), `message` as termination message
      failed     phase Failed, `exit_code` (default 1, reason Error), `message`
      oomkilled  phase Failed, exit 137, reason OOMKilled, `message`
      evicted    phase Failed, exit `exit_code` (default 137), condition DisruptionTarget=True
                 (reason `disruption_reason`, default TerminationByKubelet), pod reason Evicted
      preempted  condition DisruptionTarget=True (reason default PreemptionByScheduler) set on
                 the status, then the pod is deleted, like the scheduler preempting it; a Job
                 pod turns Failed (exit 143) before it disappears
      deleted    plain deletion (no condition); Job pods turn Failed (exit 143) first

    The termination message goes to the target container (`container`, default the first)
    and is cut to 4096 bytes like the kubelet does. With wait=True, returns the pod once it
    is terminal (Succeeded/Failed); for preempted/deleted, waits until the pod is gone (a Job
    pod leaves once the Job controller has accounted for it) and returns None.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    kc = _kubectl_path(kubectl)
    if outcome in STAGE_OUTCOMES:
        ann = completion_annotations(
            outcome, exit_code, message, container=container, disruption_reason=disruption_reason
        )
        _run(
            kc,
            kubeconfig,
            "annotate",
            "--overwrite",
            "-n",
            namespace,
            f"pod/{pod}",
            *[f"{k}={v}" for k, v in ann.items()],
        )
    else:
        if outcome == "preempted":
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            cond = {
                "type": "DisruptionTarget",
                "status": "True",
                "lastTransitionTime": now,
                "reason": disruption_reason or "PreemptionByScheduler",
                "message": message or "kube-scheduler: preempting to accommodate a higher priority pod",
            }
            _run(
                kc,
                kubeconfig,
                "patch",
                "-n",
                namespace,
                f"pod/{pod}",
                "--subresource=status",
                "--type=strategic",
                "-p",
                json.dumps({"status": {"conditions": [cond]}}),
            )
        _run(kc, kubeconfig, "delete", "-n", namespace, f"pod/{pod}", "--wait=false")
    if not wait:
        return None
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(
            [kc, f"--kubeconfig={kubeconfig}", "get", "-n", namespace, f"pod/{pod}", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise RuntimeError(proc.stderr.strip())
        obj: dict[str, Any] = json.loads(proc.stdout)
        if outcome in STAGE_OUTCOMES and obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return obj
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"pod {namespace}/{pod} not terminal/gone after {timeout}s: {obj.get('status', {}).get('phase')}"
            )
        time.sleep(0.2)


def wait_for_pods(
    kubeconfig: str | os.PathLike[str],
    namespace: str,
    selector: str,
    phase: str = "Running",
    count: int = 1,
    timeout: float = 30,
    kubectl: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Wait until at least `count` pods matching the label selector are in `phase`."""
    kc = _kubectl_path(kubectl)
    deadline = time.monotonic() + timeout
    while True:
        items = json.loads(
            _run(kc, kubeconfig, "get", "pods", "-n", namespace, "-l", selector, "-o", "json")
        )["items"]
        hits = [p for p in items if p.get("status", {}).get("phase") == phase]
        if len(hits) >= count:
            return hits
        if time.monotonic() > deadline:
            phases = [(p["metadata"]["name"], p.get("status", {}).get("phase")) for p in items]
            raise TimeoutError(f"wanted {count} pod(s) {selector!r} in {phase} within {timeout}s: {phases}")
        time.sleep(0.2)


__all__ = [
    "ANNOTATIONS",
    "COMPLETE",
    "CONTAINER",
    "DELAY",
    "DISRUPTION_REASON",
    "EXIT_CODE",
    "OUTCOMES",
    "TERMINATION_MESSAGE",
    "completion_annotations",
    "finish_pod",
    "wait_for_pods",
]
