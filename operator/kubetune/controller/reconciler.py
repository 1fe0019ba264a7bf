"""One reconcile of one CR: verdict (semantic rules + memory plan, cached per generation) →
dependency (PreferenceAlignment) → children created idempotently, in two steps: the ConfigMap and
the data preflight's Job (CPU only); once that Job succeeded, the Service and the trainer's Job (the
GPUs) — a failing preflight ends the CR and no GPU is ever requested → status derived from the world
→ patched only when it changed, with Events and metrics for what changed.

A trainer Job found without a preflight Job (made by an operator that predates the preflight pod)
goes on as it is: its trainer runs the preflight itself.

The Kubernetes calls go through `api` (a kubetune.controller.k8s.KubeApi, or a fake that records them
in tests).

A CR never takes over children it does not control: when a child's name is taken by an object of
another owner (an earlier CR of the same name, deleted but its children not yet garbage-collected),
the reconcile creates nothing more and waits — the Job's DELETED event or the next resync retries —
so a CR deleted and applied again always gets a fresh Job, never the old run's result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import FINETUNEJOB, LABEL_MANAGED_BY, PREFERENCEALIGNMENT
from kubetune.api.enums import TERMINAL_PHASES, Phase, Reason
from kubetune.api.method_defaults import resolve
from kubetune.api.resources import AnyJob, PreferenceAlignment, parse_resource
from kubetune.api.semantics import semantic_problems
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_contract import PlanSummary, TrainerResult
from kubetune.controller.config import OperatorSettings
from kubetune.controller.k8s import ForeignChild
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.policy import Bounded
from kubetune.controller.world import Key, World
from kubetune.derivation import (
    ANNOTATION_RESULT,
    EVENT_MESSAGE_LIMIT,
    DependencyState,
    Derived,
    Pods,
    Verdict,
    dependent_adapter,
    derive_status,
    events_for,
    preflight_passed,
)
from kubetune.derivation.events import truncate
from kubetune.derivation.pods import pod_condition
from kubetune.derivation.scheduling import ScaleUp, autoscaler_signal
from kubetune.derivation.timeutil import parse_time
from kubetune.planning.admission import plan_job, plan_summary
from kubetune.planning.oom_retry import attempt_shapes
from kubetune.render.job import attempt_job, render_children
from kubetune.render.names import job_name

log = logging.getLogger("kubetune.controller")

WAITING_FOR_PREVIOUS_RUN = "WaitingForPreviousRun"  # Event reason: a child's name is still taken
RBAC_RECHECK_SECONDS = 300.0
RBAC_NAMESPACES_MEMORY = 4096
SCALE_UP_RECHECK_SECONDS = 15.0
SCALE_UP_MIN_AGE_SECONDS = 20.0  # the autoscaler takes seconds to react: no reads before (but before failing)
SCALE_UP_MEMORY = 10_000


class ClusterApi(Protocol):
    """What the reconciler asks of the API server (kubetune.controller.k8s.KubeApi)."""

    def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...  # raises ForeignChild

    def patch_job(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]: ...

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None: ...

    def workload_of(self, namespace: str, job_uid: str) -> dict[str, Any] | None: ...  # Kueue's, or None
    def pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]: ...

    def job_pods(self, namespace: str, job_uid: str) -> list[dict[str, Any]]: ...


def _cached_verdict_key(cr: Mapping[str, Any], ref_seen: bool) -> tuple[str, int, bool]:
    meta = cr.get("metadata") or {}
    return (str(meta.get("uid")), int(meta.get("generation") or 0), ref_seen)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch turning `old` into `new` at the top level of status."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


class Reconciler:
    def __init__(self, world: World, settings: OperatorSettings, api: ClusterApi, metrics: OperatorMetrics,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.world = world
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self._locks: dict[Key, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # per CR: the verdict of its latest (uid, generation, ref seen); dropped with the CR (`forget`)
        self._verdicts: dict[Key, tuple[tuple[str, int, bool], tuple[Verdict, AnyJob | None, PlanSummary | None]]] = {}
        self._last_patch: dict[Key, float] = {}
        # namespaces whose trainer ServiceAccount + RoleBinding were ensured lately: ensured again after
        # RBAC_RECHECK_SECONDS, so one deleted by hand comes back without a restart
        self._rbac_done: Bounded[str, bool] = Bounded(RBAC_NAMESPACES_MEMORY, ttl=RBAC_RECHECK_SECONDS)
        self._foreign_seen: dict[Key, set[tuple[str, str]]] = {}  # (CR uid, child uid) announced once
        self._attempt_summaries: dict[Key, list[PlanSummary | None]] = {}  # oomRetry plans, per CR
        # the cluster autoscaler's latest word on each unschedulable pod, read at most every
        # SCALE_UP_RECHECK_SECONDS per pod: (CR, pod) => signal, forgotten with the CR
        self._scale_ups: Bounded[tuple[Key, str], tuple[ScaleUp | None]] = Bounded(
            SCALE_UP_MEMORY, ttl=SCALE_UP_RECHECK_SECONDS)

    # ------------------------------------------------------------------------------------------
    def lock(self, key: Key) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: Key) -> None:
        with self._locks_guard:
            self._locks.pop(key, None)
        self._last_patch.pop(key, None)
        self._foreign_seen.pop(key, None)
        self._verdicts.pop(key, None)
        self._attempt_summaries.pop(key, None)
        self._scale_ups.discard_where(lambda k: k[0] == key)

    def sizes(self) -> dict[str, int]:
        """How many entries each per-CR cache holds (the soak test checks they follow the live CRs)."""
        with self._locks_guard:
            locks = len(self._locks)
        return {"locks": locks, "verdicts": len(self._verdicts), "last_patch": len(self._last_patch),
                "foreign_seen": len(self._foreign_seen), "rbac_done": len(self._rbac_done),
                "scale_ups": len(self._scale_ups), "attempt_summaries": len(self._attempt_summaries)}

    def reconcile(self, key: Key, *, progress_only: bool = False) -> None:
        """`progress_only`: triggered by a progress annotation alone — mirrored at most every
        progress_min_interval_seconds (the periodic resync catches up)."""
        if progress_only and time.monotonic() - self._last_patch.get(key, 0.0) < self.settings.progress_min_interval_seconds:
            return
        if self.world.cr(key) is None:
            return  # deleted (a child's late event): no lock is made for it, nothing to do
        started = time.monotonic()
        try:
            with self.lock(key):
                self._reconcile(key)
        except Exception as exc:
            self.metrics.reconcile_errors.labels(kind=key[0], error=type(exc).__name__).inc()
            raise
        finally:
            self.metrics.reconcile_duration.labels(kind=key[0]).observe(time.monotonic() - started)

    # ------------------------------------------------------------------------------------------
    def _lookup(self, namespace: str) -> Callable[[str], FineTuneJobSpec | None]:
        def lookup(name: str) -> FineTuneJobSpec | None:
            cr = self.world.cr((FINETUNEJOB, namespace, name))
            if cr is None:
                return None
            return FineTuneJobSpec.model_validate(cr.get("spec") or {})
        return lookup

    def verdict(self, cr: Mapping[str, Any]) -> tuple[Verdict, AnyJob | None, PlanSummary | None]:
        meta = cr.get("metadata") or {}
        key: Key = (str(cr.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        ns = str(meta.get("namespace"))
        lookup = self._lookup(ns)
        ref = ((cr.get("spec") or {}).get("fineTuneJobRef") or {}).get("name")
        ref_seen = bool(ref and lookup(ref) is not None)
        ck = _cached_verdict_key(cr, ref_seen)
        cached = self._verdicts.get(key)
        if cached is not None and cached[0] == ck:
            return cached[1]
        try:
            job = parse_resource({k: cr[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in cr})
        except Exception as exc:  # the CRD schema should have refused it
            result: tuple[Verdict, AnyJob | None, PlanSummary | None] = (Verdict(problems=[f"spec: {exc}"]), None, None)
            self._verdicts[key] = (ck, result)
            return result
        problems = [str(p) for p in semantic_problems(job, local=False, lookup=lookup) if p.severity == "error"]
        verdict, summary = self._plan(job, lookup, ref, ref_seen)
        attempts = self._attempts(job, lookup, ref) if not (ref and not ref_seen) else []
        verdict = Verdict(problems=problems, plan=verdict.plan, fits=verdict.fits, plan_message=verdict.plan_message,
                          attempts=[{k: v for k, v in a.items() if k != "summary"} for a in attempts])
        self._attempt_summaries[key] = [a.get("summary") for a in attempts]
        self._verdicts[key] = (ck, (verdict, job, summary))
        return verdict, job, summary

    def _plan(self, job: AnyJob, lookup: Callable[[str], FineTuneJobSpec | None], ref: str | None,
              ref_seen: bool) -> tuple[Verdict, PlanSummary | None]:
        if ref and not ref_seen:
            return Verdict(fits=None, plan_message=f"planned once FineTuneJob {ref} is known"), None
        try:
            plan = plan_job(job, lookup)
        except Exception as exc:  # CannotPlan (an unknown architecture), or a planner bug: run unplanned
            return Verdict(fits=None, plan_message=f"cannot plan memory: {exc}"), None
        return Verdict(plan=plan.to_dict(), fits=plan.fits, plan_message=plan.summary()), plan_summary(plan)

    @staticmethod
    def _attempts(job: AnyJob, lookup: Callable[[str], FineTuneJobSpec | None], ref: str | None) -> list[dict[str, Any]]:
        """spec.training.oomRetry: each attempt's configuration (kubetune.planning.oom_retry) with its
        memory plan (the planner run again for it); empty without oomRetry."""
        if job.spec.training.oom_retry is None:
            return []
        referenced = lookup(ref) if ref else None
        try:
            shapes = attempt_shapes(resolve(job.spec, referenced) if isinstance(job, PreferenceAlignment)
                                    else resolve(job.spec))
        except Exception as exc:  # semantic validation reports a spec that cannot be resolved
            log.warning("cannot list the oomRetry attempts: %s", exc)
            return []
        out: list[dict[str, Any]] = []
        for i, shape in enumerate(shapes, start=1):
            entry: dict[str, Any] = {"jobName": job_name(job.kind, job.metadata.name or "", i),
                                     "batchSize": shape.batch_size,
                                     "gradientAccumulationSteps": shape.gradient_accumulation_steps,
                                     "gradientCheckpointing": shape.gradient_checkpointing}
            try:
                plan = plan_job(attempt_job(job, i, referenced), lookup)
                entry.update(plan=plan.summary(), planFits=plan.fits, summary=plan_summary(plan))
            except Exception as exc:  # CannotPlan: the attempt runs unplanned, as the first would
                entry["plan"] = f"cannot plan memory: {exc}"
            out.append(entry)
        return out

    def dependency(self, key: Key, cr: Mapping[str, Any]) -> tuple[DependencyState, FineTuneJobSpec | None, str | None]:
        ref = ((cr.get("spec") or {}).get("fineTuneJobRef") or {}).get("name")
        if key[0] != PREFERENCEALIGNMENT or not ref:
            return DependencyState(), None, None
        ref_key = (FINETUNEJOB, key[1], str(ref))
        ftj = self.world.cr(ref_key)
        if ftj is None:
            if self.world.was_deleted(ref_key):
                return DependencyState("failed", f"FineTuneJob {ref} was deleted"), None, None
            return DependencyState("waiting", f"waiting for FineTuneJob {ref}: not found in this namespace"), None, None
        st = ftj.get("status") or {}
        phase = st.get("phase")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        if phase == Phase.SUCCEEDED and ready:
            art = st.get("artifact") or {}
            adapter = dependent_adapter(art)
            if not adapter:
                return DependencyState("failed", f"FineTuneJob {ref} succeeded but reported no artifact"), None, None
            spec = FineTuneJobSpec.model_validate(ftj.get("spec") or {})
            return DependencyState("ready", f"FineTuneJob {ref} succeeded with its gates passed; using {adapter}"), spec, adapter
        if phase in (Phase.FAILED, Phase.GATE_FAILED):
            why = f" ({st.get('reason')}: {st.get('message')})" if st.get("reason") else ""
            return DependencyState("failed", f"FineTuneJob {ref} ended {phase}{why}"), None, None
        return DependencyState("waiting", f"waiting for FineTuneJob {ref} to succeed (phase {phase or 'Pending'})"), None, None

    # ------------------------------------------------------------------------------------------
    def _ensure_trainer_rbac(self, namespace: str) -> None:
        if not self.settings.manage_trainer_rbac or namespace in self._rbac_done:
            return
        sa = self.settings.render.trainer_service_account
        labels = {LABEL_MANAGED_BY: "kubetune"}
        self.api.create({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": sa, "namespace": namespace, "labels": labels}})
        self.api.create({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": sa, "namespace": namespace, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": self.settings.trainer_cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        })
        self._rbac_done[namespace] = True

    def _create_children(self, key: Key, cr: Mapping[str, Any], job: AnyJob, referenced: FineTuneJobSpec | None,
                         adapter: str | None, summary: PlanSummary | None, *, training: bool,
                         attempt: int = 1) -> dict[str, Any] | None:
        """The data preflight's Job, or with `training` the trainer's (created, or this CR's own found on
        a 409), after the objects it needs; None while a child's name is taken. `attempt` > 1: the Job
        (and ConfigMap) of that oomRetry attempt."""
        self._ensure_trainer_rbac(key[1])
        children = render_children(job, self.settings.render, referenced=referenced, adapter_uri=adapter, plan=summary,
                                   attempt=attempt)
        created: dict[str, Any] = {}
        try:
            for obj in children.training_objects() if training else children.preflight_objects():
                created = self.api.create(obj)
        except ForeignChild as exc:
            self._wait_for_previous_run(key, cr, exc)
            return None
        self.world.put_job(created, created=True)
        log.info("%s %s/%s: created Job %s", key[0], key[1], key[2], created["metadata"]["name"])
        return created

    def _wait_for_previous_run(self, key: Key, cr: Mapping[str, Any], exc: ForeignChild) -> None:
        """Logged and posted as an Event once per CR and child; the resync and the child's
        DELETED event retry."""
        seen = (str((cr.get("metadata") or {}).get("uid")), exc.uid)
        announced = self._foreign_seen.setdefault(key, set())
        if seen in announced:
            return
        announced.add(seen)
        if exc.owner is not None:  # most often an earlier CR of this name: its children go after it
            msg = (f"{exc.kind} {exc.name} belongs to {exc.owner}, not to this {key[0]}; "
                   "waiting for it to be garbage-collected before creating this run's")
        else:
            msg = (f"{exc.kind} {exc.name} exists and has no owner (orphaned or made by hand); "
                   f"delete it to let this {key[0]} run")
        log.warning("%s %s/%s: %s", key[0], key[1], key[2], msg)
        self._post_event(cr, "Normal" if exc.owner else "Warning", WAITING_FOR_PREVIOUS_RUN, msg)

    def _sync_suspend(self, cr: Mapping[str, Any], job: dict[str, Any], *, queued: bool = True) -> dict[str, Any]:
        """spec.suspend onto a Job not finished yet; `queued`: the Job goes through Kueue when spec.queueName
        is set (the trainer's; never the preflight's)."""
        spec = cr.get("spec") or {}
        js = job.get("spec") or {}
        done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])
        if done:
            return job
        want = bool(spec.get("suspend"))
        if not want and queued and spec.get("queueName"):
            return job  # Kueue decides when a queued Job runs
        if bool(js.get("suspend")) != want:
            meta = job["metadata"]
            job = self.api.patch_job(meta["namespace"], meta["name"], {"spec": {"suspend": want}})
            self.world.put_job(job, written=True)
        return job

    def _workload(self, cr: Mapping[str, Any], job: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Kueue's Workload of the trainer's Job while Kueue holds it suspended (spec.queueName set): it
        says why (pending quota, preempted). Read on each reconcile of such a Job only; the resync
        picks up its changes. None when there is none, or it cannot be read (status stays generic)."""
        if job is None or not (cr.get("spec") or {}).get("queueName") or not (job.get("spec") or {}).get("suspend"):
            return None
        meta = job.get("metadata") or {}
        try:
            return self.api.workload_of(str(meta.get("namespace")), str(meta.get("uid")))
        except Exception as exc:  # the status says "waiting for Kueue" without the detail
            log.warning("cannot read the Kueue Workload of Job %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
            return None

    # ------------------------------------------------------------------------------------------
    def _reconcile(self, key: Key) -> None:
        cr = self.world.cr(key)
        if cr is None or (cr.get("metadata") or {}).get("deletionTimestamp"):
            return
        meta = cr.get("metadata") or {}
        old = cr.get("status") or {}
        if old.get("phase") in TERMINAL_PHASES and old.get("observedGeneration") == meta.get("generation"):
            return  # final
        verdict, job_typed, summary = self.verdict(cr)
        dep, referenced, adapter = self.dependency(key, cr)
        job = self.world.job(key)
        preflight = self.world.preflight_job(key)
        can_run = (job_typed is not None and not verdict.problems and verdict.fits is not False
                   and dep.state in ("none", "ready"))
        if job is None and can_run:
            assert job_typed is not None
            if isinstance(job_typed, PreferenceAlignment) and job_typed.spec.fine_tune_job_ref and referenced is None:
                pass  # not ready yet
            elif preflight is None:  # 1. the data, checked in a CPU pod
                preflight = self._create_children(key, cr, job_typed, referenced, adapter, summary, training=False)
            elif preflight_passed(preflight, Pods.of(self.world.preflight_pods_of(key))):  # 2. the GPUs
                job = self._create_children(key, cr, job_typed, referenced, adapter, summary, training=True)
        if job is not None:
            job = self._sync_suspend(cr, job)
        elif preflight is not None:
            preflight = self._sync_suspend(cr, preflight, queued=False)
        rs = self.settings.render
        if job is not None:
            self._read_result(key, job)
        pods, preflight_pods = self.world.pods_of(key), self.world.preflight_pods_of(key)
        derived = derive_status(cr, verdict=verdict, dependency=dep, job=job, pods=pods,
                                preflight=preflight, preflight_pods=preflight_pods,
                                now=self.clock(), unschedulable_grace_seconds=rs.unschedulable_grace_seconds,
                                image_pull_grace_seconds=rs.image_pull_grace_seconds,
                                workload=self._workload(cr, job),
                                scale_ups=(scale_ups := self._autoscaler(key, [*pods, *preflight_pods])))
        if Reason.UNSCHEDULABLE in (derived.stop_job, derived.stop_preflight):
            # failing it: decide on the autoscaler's latest word, not on one read up to 10 s ago
            fresh = self._autoscaler(key, [*pods, *preflight_pods], fresh=True)
            if fresh != scale_ups:
                derived = derive_status(cr, verdict=verdict, dependency=dep, job=job, pods=pods, preflight=preflight,
                                        preflight_pods=preflight_pods, now=self.clock(),
                                        unschedulable_grace_seconds=rs.unschedulable_grace_seconds,
                                        image_pull_grace_seconds=rs.image_pull_grace_seconds, scale_ups=fresh,
                                        workload=self._workload(cr, job))
        if derived.next_attempt is not None and job_typed is not None and job is not None:
            job, derived = self._next_attempt(key, cr, job, derived, job_typed, referenced, adapter, verdict, dep,
                                              preflight)
        new = derived.status
        if new != old:
            try:
                resp = self.api.patch_status(key[0], key[1], key[2], status_patch(old, new))
            except ApiException as exc:
                if exc.status != 404:
                    raise
                # gone while the watch was away (its DELETED event never came): forget it
                log.info("%s %s/%s: not found on the API server; forgotten", *key)
                self.world.drop_cr(key)
                self.forget(key)
                return
            if isinstance(resp, dict) and resp.get("metadata"):
                self.world.put_cr(resp, written=True)
            else:
                self.world.update_cr_status(key, new)
            self._last_patch[key] = time.monotonic()
            self._announce(cr, old, new)
        for child, stop, result in ((job, derived.stop_job, derived.result),
                                    (preflight, derived.stop_preflight, derived.preflight_result)):
            if child is not None:
                self._finish_job(child, stop, result)

    def _next_attempt(self, key: Key, cr: Mapping[str, Any], job: dict[str, Any], derived: Derived, job_typed: AnyJob,
                      referenced: FineTuneJobSpec | None, adapter: str | None, verdict: Verdict, dep: DependencyState,
                      preflight: dict[str, Any] | None) -> tuple[dict[str, Any], Derived]:
        """spec.training.oomRetry: the current attempt ran out of memory. Stop its Job when it would retry
        as it is, create the next attempt's (idempotent: a deterministic name), announce it, and derive
        the status again from the new Job. A crash anywhere in between is healed by the next reconcile:
        the failed attempt is still there to decide the same."""
        attempt = derived.next_attempt or 1
        if derived.stop_job:
            self._finish_job(job, derived.stop_job, None)
        summaries = self._attempt_summaries.get(key, [])
        summary = summaries[attempt - 1] if len(summaries) >= attempt else None
        created = self._create_children(key, cr, job_typed, referenced, adapter, summary, training=True, attempt=attempt)
        if created is None:
            return job, derived
        self._post_event(cr, "Warning", Reason.RETRYING_SMALLER,
                         truncate(str(derived.status.get("message")), EVENT_MESSAGE_LIMIT))
        new_job = self.world.job(key) or created
        rs = self.settings.render
        again = derive_status(cr, verdict=verdict, dependency=dep, job=new_job, pods=self.world.pods_of(key),
                              preflight=preflight, preflight_pods=self.world.preflight_pods_of(key),
                              now=self.clock(), unschedulable_grace_seconds=rs.unschedulable_grace_seconds,
                              image_pull_grace_seconds=rs.image_pull_grace_seconds)
        return new_job, again

    def _read_result(self, key: Key, job: dict[str, Any]) -> None:
        """A Job finished but no pod's result seen yet: its pods' watch events may lag behind the Job's
        (separate streams; after a restart, separate lists). Read them from the API server once, so the
        gates never decide on a result that exists but was not seen."""
        done = any(c.get("type") in ("Complete", "SuccessCriteriaMet") and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])
        if not done or Pods.of(self.world.pods_of(key)).result(job) is not None:
            return
        uid = str((job.get("metadata") or {}).get("uid"))
        try:
            for pod in self.api.job_pods(key[1], uid):
                self.world.put_pod(pod)
        except Exception as exc:  # the derivation waits RESULT_WAIT_SECONDS for the watch instead
            log.warning("%s %s/%s: could not read the pods of Job %s: %s", *key, uid, exc)

    def _autoscaler(self, key: Key, pods: list[dict[str, Any]], *, fresh: bool = False) -> dict[str, ScaleUp]:
        """What the cluster autoscaler said about each unschedulable pod (its Events), by pod name;
        read once a pod has been unschedulable for SCALE_UP_MIN_AGE_SECONDS, then at most every
        SCALE_UP_RECHECK_SECONDS per pod — or now (`fresh`, before failing it)."""
        namespace = key[1]
        out: dict[str, ScaleUp] = {}
        for pod in pods:
            sched = pod_condition(pod, "PodScheduled")
            if (pod.get("status") or {}).get("phase") != "Pending" or not sched or sched.get("reason") != "Unschedulable":
                continue
            name = str((pod.get("metadata") or {}).get("name"))
            since = parse_time(sched.get("lastTransitionTime"))
            if not fresh and since is not None and (self.clock() - since).total_seconds() < SCALE_UP_MIN_AGE_SECONDS:
                continue
            cached = None if fresh else self._scale_ups.get((key, name))
            if cached is None:
                try:
                    cached = (autoscaler_signal(self.api.pod_events(namespace, name)),)
                except Exception as exc:  # no Events to read (RBAC, the API away): the grace period decides
                    log.warning("events of pod %s/%s: %s", namespace, name, exc)
                    cached = (None,)
                self._scale_ups[(key, name)] = cached
            if cached[0] is not None:
                out[name] = cached[0]
        return out

    def _finish_job(self, job: dict[str, Any], stop: str | None, result: TrainerResult | None) -> None:
        """Suspend a Job whose pod can never start (`stop`); keep its pod's result on it, for when
        the pod is gone."""
        jm = job["metadata"]
        if stop and not (job.get("spec") or {}).get("suspend"):
            job = self.api.patch_job(jm["namespace"], jm["name"], {"spec": {"suspend": True}})
            self.world.put_job(job, written=True)
        if result is not None and ANNOTATION_RESULT not in ((job.get("metadata") or {}).get("annotations") or {}):
            self.world.put_job(self.api.patch_job(jm["namespace"], jm["name"], {"metadata": {"annotations": {
                ANNOTATION_RESULT: result.termination_message()}}}), written=True)

    def _announce(self, cr: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        kind = str(cr.get("kind"))
        if old.get("phase") != new.get("phase"):
            self.metrics.phase_transitions.labels(kind=kind, from_phase=str(old.get("phase") or "None"),
                                                  to_phase=str(new.get("phase"))).inc()
            if new.get("phase") in (Phase.SUCCEEDED, Phase.GATE_FAILED):
                for g in new.get("gates") or []:
                    self.metrics.gate_evaluations.labels(kind=kind, gate=str(g.get("metric")),
                                                         result="passed" if g.get("passed") else "failed").inc()
        for ev in events_for(old, new):
            self._post_event(cr, ev.type, ev.reason, ev.message)

    def _post_event(self, cr: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.api.post_event(dict(cr), type_, reason, message)
            self.metrics.events_posted.labels(type=type_, reason=reason).inc()
        except Exception as exc:  # an Event is best effort
            log.warning("could not post event %s: %s", reason, exc)
