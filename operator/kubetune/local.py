"""`kubetune run`: FineTuneJobs and PreferenceAlignments on this machine, without a cluster.

    kubetune run -f examples/quickstart/finetunejob.yaml -f examples/quickstart/preference.yaml
    kubetune run -f job.yaml --device cuda --output-root /tmp/runs

The same steps and contracts as in a cluster, with this process as the operator:

1. validate each object (schema, CEL, semantic rules; `file://` allowed) — `file://rel/path` is
   relative to the manifest's folder;
2. plan memory (kubetune.planning) and print the plan (a warning locally, not an error: the local
   device is not `spec.resources`);
3. render the trainer config (kubetune.render.build_trainer_config — the pod's ConfigMap) into
   `<output>/kubetune/trainer-config.json` and run the trainer as a subprocess
   (`python -m kubetune_trainer --config …`): it preflights the data, trains, evaluates and writes
   `<output>/kubetune/progress.jsonl` (every progress snapshot, tailed here for a live progress bar)
   and `result.json`;
4. apply the gates (kubetune.gates.decide — the operator's function) and promote: copy the artifact
   folder to `spec.output.promotedUri` only when every gate passed;
5. print base vs tuned for every metric and the verdict; write `<output>/kubetune/status.json`
   (the status the operator would set) and `<output>/kubetune/report.html`.

A PreferenceAlignment whose `fineTuneJobRef` names a FineTuneJob among the files runs after it,
on its artifact (`sources.adapter`), inheriting its base model, quantization and LoRA shape; when
that job does not end Succeeded, the PreferenceAlignment fails with DependencyFailed.

Secrets: locally a `secretKeyRef {name: N, key: K}` is read from the environment variable
`KUBETUNE_SECRET_<N>_<K>` (upper case, non-alphanumerics as `_`), e.g. KUBETUNE_SECRET_JUDGE_API_KEY.

Exit status: 0 when every job Succeeded; 3 when a job ended GateFailed (and none Failed on its own);
1 when a job Failed (invalid spec, trainer failure, or DependencyFailed); 130 when interrupted
(Ctrl-C here, or the trainer stopped by a signal).
An output folder holding a finished run (a result.json) is cleared first; an interrupted one
(Ctrl-C, SIGTERM: the trainer saves a checkpoint) is resumed from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from kubetune.api.constants import FINETUNEJOB, PREFERENCEALIGNMENT
from kubetune.api.enums import ConditionType, Phase, Reason
from kubetune.api.problems import Problem
from kubetune.api.resources import AnyJob, FineTuneJob, PreferenceAlignment, parse_resource
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_contract import PlanSummary, SecretEnv, Sources, TrainerResult
from kubetune.api.validate import defaulted, is_kubetune, validate_object
from kubetune.gates import Decision, decide
from kubetune.manifests import Document, ManifestError, load_documents

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_GATE_FAILED, EXIT_INTERRUPTED = 0, 1, 3, 130
Device = Literal["auto", "cpu", "cuda"]

# Where URIs live in a spec (dotted path ⇒ the URI string).
URI_FIELDS = (
    ("baseModel", "uri"), ("adapter", "uri"), ("dataset", "uri"),
    ("evaluation", "goldenDataset", "uri"), ("evaluation", "safetyDataset", "uri"),
    ("evaluation", "forgettingDataset", "uri"), ("output", "uri"), ("output", "promotedUri"),
)


class Interrupted(Exception):
    pass


@dataclass
class LocalJob:
    doc: Document
    obj: dict[str, Any]  # the manifest with file:// URIs made absolute
    name: str
    kind: str
    job: AnyJob | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Outcome:
    name: str
    kind: str
    phase: Phase
    reason: str
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    decision: Decision | None = None
    artifact: str | None = None
    promoted: str | None = None
    output: Path | None = None
    report_html: Path | None = None
    seconds: float = 0.0
    before: dict[str, float] | None = None  # the referenced job's metrics (PreferenceAlignment)

    @property
    def exit_code(self) -> int:
        return {Phase.SUCCEEDED: EXIT_SUCCEEDED, Phase.GATE_FAILED: EXIT_GATE_FAILED}.get(self.phase, EXIT_FAILED)


# ---------------------------------------------------------------- manifests and paths


def absolute_file_uri(uri: str, folder: Path) -> str:
    """file://rel/path ⇒ file:///<folder>/rel/path; other URIs unchanged."""
    if not uri.startswith("file://"):
        return uri
    rest = uri[len("file://"):]
    if rest.startswith("/"):
        return uri
    return "file://" + str((folder / rest).resolve())


def local_path(uri: str) -> str:
    """A trainer source: file:// ⇒ a plain path; hf://, s3://, pvc:// stay URIs."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _absolutize(obj: dict[str, Any], folder: Path) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return obj
    for path in URI_FIELDS:
        node: Any = spec
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            node[path[-1]] = absolute_file_uri(node[path[-1]], folder)
    return obj


def secret_env_name(name: str, key: str) -> str:
    return "KUBETUNE_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", f"{name}_{key}").upper()


def load_jobs(files: list[str]) -> tuple[list[LocalJob], list[str]]:
    """Kubetune objects from the files, validated for a local run (errors as lines)."""
    errors: list[str] = []
    jobs: list[LocalJob] = []
    for path in files:
        try:
            docs = load_documents(path)
        except ManifestError as exc:
            errors.append(str(exc))
            continue
        for doc in docs:
            if not is_kubetune(doc.obj):
                continue
            obj = _absolutize(doc.obj, Path(path).resolve().parent)
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            jobs.append(LocalJob(doc, obj, str((meta or {}).get("name", "?")), str(obj.get("kind", "?"))))
    specs: dict[str, FineTuneJobSpec] = {}
    for j in jobs:
        if j.kind == FINETUNEJOB:
            try:
                parsed = parse_resource(defaulted(j.obj))
                if isinstance(parsed, FineTuneJob):
                    specs[j.name] = parsed.spec
            except Exception:  # reported by validate_object below
                pass
    for j in jobs:
        j.problems = validate_object(j.obj, local=True, lookup=specs.get)
        if not any(p.severity == "error" for p in j.problems):
            j.job = parse_resource(defaulted(j.obj))
    return jobs, errors


def order(jobs: list[LocalJob]) -> list[LocalJob]:
    """FineTuneJobs first (in file order), then PreferenceAlignments."""
    return [j for j in jobs if j.kind == FINETUNEJOB] + [j for j in jobs if j.kind == PREFERENCEALIGNMENT]


# ---------------------------------------------------------------- progress


class ProgressView:
    """A one-line progress bar on a terminal; periodic plain lines otherwise (CI logs)."""

    def __init__(self, name: str, stream: IO[str], *, tty: bool | None = None, width: int = 28) -> None:
        self.name, self.stream, self.width = name, stream, width
        self.tty = stream.isatty() if tty is None else tty
        self.stage: str | None = None
        self.last_line = 0.0
        self.history: dict[int, float] = {}
        self.started = time.monotonic()
        self.dirty = False

    def line(self, p: dict[str, Any]) -> str:
        stage = p.get("stage") or "starting"
        step, total = p.get("step"), p.get("totalSteps")
        parts = [f"[{self.name}] {stage:<10}"]
        if stage == "training" and step is not None and total:
            done = int(self.width * min(step, total) / total)
            parts.append("█" * done + "░" * (self.width - done) + f" {step}/{total}")
            if p.get("loss") is not None:
                parts.append(f"loss {p['loss']:.3f}")
            if p.get("etaSeconds") is not None:
                eta = int(p["etaSeconds"])
                parts.append(f"ETA {eta // 60}:{eta % 60:02d}")
        parts.append(f"{int(time.monotonic() - self.started)}s")
        return "  ".join(parts)

    def update(self, p: dict[str, Any]) -> None:
        step, loss = p.get("step"), p.get("loss")
        if p.get("stage") == "training" and step is not None and loss is not None:
            self.history[int(step)] = float(loss)
        text = self.line(p)
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.dirty = True
        elif p.get("stage") != self.stage or now - self.last_line >= 15:
            self.stream.write(text + "\n")
            self.last_line = now
        self.stage = p.get("stage")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.dirty:
            self.stream.write("\n")
            self.stream.flush()


class ProgressTail:
    """Reads the trainer's progress.jsonl from where it last stopped: every snapshot, in order, so a
    stage shorter than the poll interval is still shown (progress.json holds only the newest)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read_new(self, *, final: bool = False) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return []
        # A line still being appended has no newline yet: leave it for the next read (unless the
        # trainer has exited, when whatever is there is all there will be).
        end = len(chunk) if final else chunk.rfind(b"\n") + 1
        self.offset += end
        snapshots = []
        for raw in chunk[:end].splitlines():
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                snapshots.append(item)
        return snapshots


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- one job


@dataclass
class Runner:
    device: Device = "cpu"
    output_root: Path | None = None
    python: str = sys.executable
    out: IO[str] = sys.stdout
    err: IO[str] = sys.stderr
    tty: bool | None = None
    verbose: bool = False
    poll_seconds: float = 0.5
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    _view: ProgressView | None = None

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def paths(self, job: AnyJob) -> tuple[Path, Path | None]:
        name = job.metadata.name or "job"
        if self.output_root is not None:
            root = self.output_root.resolve()
            return root / name, (root / "promoted" / name if job.spec.output.promoted_uri else None)
        output = Path(local_path(job.spec.output.uri))
        promoted = job.spec.output.promoted_uri
        if output.as_posix().startswith(("hf:", "s3:", "pvc:")):
            raise ValueError(f"spec.output.uri {job.spec.output.uri!r}: `kubetune run` writes to file:// only "
                             "(or pass --output-root)")
        return output, (Path(local_path(promoted)) if promoted and promoted.startswith("file://") else None)

    def plan(self, job: AnyJob, lookup: Any) -> PlanSummary:
        try:
            from kubetune.planning.admission import plan_job
            from kubetune.planning.types import CannotPlan
        except ImportError:  # the planner is optional
            return PlanSummary()
        try:
            p = plan_job(job, lookup)
        except CannotPlan as exc:
            self.say(f"  plan: cannot estimate memory ({exc})")
            return PlanSummary()
        except Exception as exc:  # never let the estimate stop a local run
            self.say(f"  plan: skipped ({type(exc).__name__}: {exc})")
            return PlanSummary()
        self.say(f"  plan: {p.summary()}" + ("" if p.fits or self.device == "cpu" else "  (warning: does not fit)"))
        best = p.best_suggestion
        return PlanSummary(peak_bytes=p.peak_bytes, gpu_memory_bytes=p.gpu_memory_bytes, fits=p.fits,
                           summary=p.summary(), best_suggestion=best.description if best else None)

    def run_job(self, lj: LocalJob, lookup: Any) -> Outcome:
        started = time.monotonic()
        self.say(f"\n== {lj.kind}/{lj.name} ({lj.doc.file})")
        for p in lj.problems:
            self.say(f"  {'warning: ' if p.severity == 'warning' else ''}{p}")
        if lj.job is None:
            return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.INVALID_SPEC,
                           "; ".join(str(p) for p in lj.problems if p.severity == "error"))
        job = lj.job
        referenced: FineTuneJobSpec | None = None
        adapter: str | None = None
        before: dict[str, float] | None = None
        if isinstance(job, PreferenceAlignment) and job.spec.fine_tune_job_ref is not None:
            ref = job.spec.fine_tune_job_ref.name
            dep = self.outcomes.get(ref)
            if dep is None:
                return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.DEPENDENCY_FAILED,
                               f"FineTuneJob {ref} (spec.fineTuneJobRef) is not among the manifests given with -f")
            if dep.phase != Phase.SUCCEEDED or not dep.artifact:
                return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.DEPENDENCY_FAILED,
                               f"FineTuneJob {ref} ended {dep.phase} ({dep.reason}), not Succeeded; nothing to align")
            referenced = lookup(ref)
            adapter, before = dep.artifact, dep.metrics
        elif isinstance(job, PreferenceAlignment) and job.spec.adapter is not None:
            adapter = local_path(job.spec.adapter.uri)
        try:
            output, promoted = self.paths(job)
        except ValueError as exc:
            return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.INVALID_SPEC, str(exc))
        plan = self.plan(job, lookup)
        outcome = self._train(job, lj, output=output, promoted=promoted, referenced=referenced, adapter=adapter, plan=plan)
        outcome.before = before
        outcome.seconds = time.monotonic() - started
        return outcome

    def _config(self, job: AnyJob, *, output: Path, promoted: Path | None, referenced: FineTuneJobSpec | None,
                adapter: str | None, plan: PlanSummary) -> Any:
        from kubetune.render.trainer_config import build_trainer_config

        spec = job.spec
        base = spec.base_model if spec.base_model is not None else (referenced.base_model if referenced else None)
        if base is None:
            raise ValueError("no base model: set spec.baseModel or spec.fineTuneJobRef")
        ev = spec.evaluation
        sources = Sources(
            model=local_path(base.uri), model_revision=base.revision, adapter=adapter,
            dataset=local_path(spec.dataset.uri), output=str(output), promoted=str(promoted) if promoted else None,
            golden=local_path(ev.golden_dataset.uri) if ev and ev.golden_dataset else None,
            safety=local_path(ev.safety_dataset.uri) if ev and ev.safety_dataset else None,
            forgetting=local_path(ev.forgetting_dataset.uri) if ev and ev.forgetting_dataset else None,
        )
        secret = SecretEnv(
            hf_token=secret_env_name(base.token_secret_ref.name, base.token_secret_ref.key) if base.token_secret_ref else None,
            judge_api_key=(secret_env_name(ev.judge.api_key_secret_ref.name, ev.judge.api_key_secret_ref.key)
                           if ev and ev.judge and ev.judge.api_key_secret_ref else None),
        )
        return build_trainer_config(job, sources=sources, referenced=referenced, plan=plan, secret_env=secret,
                                    device=self.device)

    def _train(self, job: AnyJob, lj: LocalJob, *, output: Path, promoted: Path | None,
               referenced: FineTuneJobSpec | None, adapter: str | None, plan: PlanSummary) -> Outcome:
        try:
            config = self._config(job, output=output, promoted=promoted, referenced=referenced, adapter=adapter, plan=plan)
        except ValueError as exc:
            return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.INVALID_SPEC, str(exc))
        state = output / "kubetune"
        previous = _read_json(state / "result.json")
        if previous is not None and previous.get("reason") == Reason.INTERRUPTED:
            self.say(f"  output {output} holds an interrupted run; the trainer resumes from its newest checkpoint")
            (state / "result.json").unlink()
        elif previous is not None:
            self.say(f"  output {output} holds a finished run; starting afresh")
            shutil.rmtree(output)
        state.mkdir(parents=True, exist_ok=True)
        for stale in ("progress.json", "progress.jsonl", "status.json", "report.html"):
            (state / stale).unlink(missing_ok=True)
        config_path = state / "trainer-config.json"
        config_path.write_text(config.to_json() + "\n", encoding="utf-8")
        log_path = state / "trainer.log"
        self.say(f"  trainer: {self.python} -m kubetune_trainer --config {config_path}  (log: {log_path})")
        rc = self._subprocess(config_path, log_path, state / "progress.json", lj.name)
        result = self._result(state / "result.json", rc, log_path)
        return self._finish(job, lj, result, output=output, promoted=promoted)

    def _subprocess(self, config_path: Path, log_path: Path, progress_path: Path, name: str) -> int:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [self.python, "-m", "kubetune_trainer", "--config", str(config_path)]
        view = ProgressView(name, self.err, tty=self.tty)
        self._view = view
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, stdout=None if self.verbose else log,
                                    stderr=None if self.verbose else subprocess.STDOUT, env=env, text=True)
            history = ProgressTail(progress_path.with_suffix(".jsonl"))
            try:
                while proc.poll() is None:
                    time.sleep(self.poll_seconds)
                    for p in history.read_new():
                        view.update(p)
                for p in history.read_new(final=True):
                    view.update(p)
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGTERM)  # the trainer saves a checkpoint and reports Interrupted
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                view.close()
                raise Interrupted() from None
            finally:
                view.close()
        return proc.returncode

    def _result(self, path: Path, rc: int, log_path: Path) -> TrainerResult:
        text = path.read_text(encoding="utf-8") if path.exists() else None
        if text:
            try:
                return TrainerResult.parse(text)
            except ValueError as exc:
                why = f"unreadable result.json ({str(exc).splitlines()[0]})"
        else:
            why = "no result.json"
        tail = _tail(log_path, 15)
        return TrainerResult(outcome="failed", reason=Reason.TRAINER_ERROR,
                             message=f"trainer exited with code {rc} and {why}; last log lines:\n{tail}")

    def _finish(self, job: AnyJob, lj: LocalJob, result: TrainerResult, *, output: Path,
                promoted: Path | None) -> Outcome:
        if result.outcome != "succeeded":
            message = result.message or "trainer failed"
            outcome = Outcome(lj.name, lj.kind, Phase.FAILED, result.reason or Reason.TRAINER_ERROR, message,
                              metrics=dict(result.metrics), artifact=result.artifact, output=output)
            self._write_status(outcome, result)
            return outcome
        ev = job.spec.evaluation
        decision = decide(result.metrics, ev.gates if ev else None)
        outcome = Outcome(lj.name, lj.kind, decision.phase, decision.reason, decision.message,
                          metrics=dict(result.metrics), decision=decision, artifact=result.artifact, output=output)
        if decision.passed and promoted is not None and result.artifact:
            if promoted.exists():
                shutil.rmtree(promoted)
            promoted.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(result.artifact, promoted)
            outcome.promoted = str(promoted)
        self._write_status(outcome, result)
        return outcome

    def _write_status(self, outcome: Outcome, result: TrainerResult) -> None:
        if outcome.output is None:
            return
        state = outcome.output / "kubetune"
        state.mkdir(parents=True, exist_ok=True)
        conditions = [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                      for c in (outcome.decision.conditions if outcome.decision else [])]
        if outcome.phase == Phase.FAILED:
            conditions = [{"type": ConditionType.READY, "status": "False", "reason": outcome.reason,
                           "message": outcome.message}]
        status = {
            "phase": str(outcome.phase), "reason": outcome.reason, "message": outcome.message,
            "conditions": conditions, "metrics": outcome.metrics,
            "gates": [g.as_status().model_dump(by_alias=True, exclude_none=True) for g in
                      (outcome.decision.gates if outcome.decision else [])],
            "artifact": {"uri": outcome.artifact, "promoted": outcome.promoted is not None,
                         "promotedUri": outcome.promoted},
        }
        (state / "status.json").write_text(json.dumps(status, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        from kubetune.report_html import render

        view = self._view
        points = {int(h["step"]): float(h["loss"]) for h in result.details.get("trainLog", [])
                  if isinstance(h, dict) and "step" in h and "loss" in h}
        for step, loss in (view.history.items() if view else []):
            points.setdefault(step, loss)
        html = render(name=outcome.name, kind=outcome.kind, phase=str(outcome.phase), reason=outcome.reason,
                      message=outcome.message, metrics=outcome.metrics, decision=outcome.decision,
                      loss=sorted(points.items()), details=result.details, before=outcome.before,
                      before_label="after SFT", artifact=outcome.artifact, promoted=outcome.promoted,
                      seconds=outcome.seconds or result.details.get("seconds"))
        outcome.report_html = state / "report.html"
        outcome.report_html.write_text(html, encoding="utf-8")

    # ------------------------------------------------------------ printing

    def print_outcome(self, o: Outcome) -> None:
        from kubetune.report_html import fmt, metric_rows

        self.say(f"  {o.kind}/{o.name}: {o.phase} ({o.reason}) in {o.seconds:.0f}s")
        for line in o.message.splitlines():
            self.say(f"    {line}")
        rows = metric_rows(o.metrics, o.before)
        if rows:
            gates = {g.metric: g for g in (o.decision.gates if o.decision else [])}
            mid = f" {'after SFT':>10}" if o.before else ""
            self.say(f"  {'metric':<32} {'base':>10}{mid} {'tuned':>10} {'change':>10}   gate")
            for r in rows:
                g = gates.get(r["metric"])
                verdict = f"{g.op} {fmt(g.threshold)} {'PASS' if g.passed else 'FAIL'}" if g else ""
                change = r["change"]
                ch = "" if change is None else ("+" if change > 0 else "") + fmt(change)
                mid = f" {fmt(r['before']):>10}" if o.before else ""
                self.say(f"  {r['metric']:<32} {fmt(r['base']):>10}{mid} {fmt(r['tuned']):>10} {ch:>10}   {verdict}")
            for name, g in gates.items():
                if name not in {r["metric"] for r in rows}:
                    self.say(f"  {name:<32} {'':>10} {'–':>10} {'':>10}   {g.op} {fmt(g.threshold)} FAIL (not measured)")
        train = {k: v for k, v in o.metrics.items() if k.startswith("train.")}
        if train:
            self.say("  " + "  ".join(f"{k} {fmt(v)}" for k, v in sorted(train.items())))
        if o.promoted:
            self.say(f"  promoted: {o.artifact} -> {o.promoted}")
        elif o.artifact:
            self.say(f"  artifact: {o.artifact}" + ("  (not promoted)" if o.phase == Phase.GATE_FAILED else ""))
        if o.report_html:
            self.say(f"  report: {o.report_html}")


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def overall_exit(outcomes: list[Outcome]) -> int:
    """130 if a trainer was interrupted; 1 if a job Failed on its own; else 3 if one ended GateFailed;
    else 1 if one failed only because its dependency did; else 0."""
    if any(o.reason == Reason.INTERRUPTED for o in outcomes):
        return EXIT_INTERRUPTED
    own_failure = any(o.phase == Phase.FAILED and o.reason != Reason.DEPENDENCY_FAILED for o in outcomes)
    if own_failure:
        return EXIT_FAILED
    if any(o.phase == Phase.GATE_FAILED for o in outcomes):
        return EXIT_GATE_FAILED
    return EXIT_FAILED if any(o.phase == Phase.FAILED for o in outcomes) else EXIT_SUCCEEDED


def run(files: list[str], *, device: Device = "cpu", output_root: str | None = None, out: IO[str] | None = None,
        err: IO[str] | None = None, tty: bool | None = None, verbose: bool = False,
        python: str | None = None) -> tuple[int, list[Outcome]]:
    """Run the jobs in `files` in dependency order; returns (exit status, outcomes)."""
    runner = Runner(device=device, output_root=Path(output_root) if output_root else None,
                    out=out or sys.stdout, err=err or sys.stderr, tty=tty, verbose=verbose,
                    python=python or sys.executable)
    jobs, errors = load_jobs(files)
    for line in errors:
        runner.say(line)
    if errors or not jobs:
        if not jobs and not errors:
            runner.say("no FineTuneJob or PreferenceAlignment in the files given")
        return EXIT_FAILED, []
    specs = {j.name: j.job.spec for j in jobs if j.job is not None and isinstance(j.job, FineTuneJob)}
    outcomes: list[Outcome] = []
    try:
        for lj in order(jobs):
            outcome = runner.run_job(lj, specs.get)
            runner.outcomes[lj.name] = outcome
            outcomes.append(outcome)
            runner.print_outcome(outcome)
    except Interrupted:
        runner.say("interrupted: the trainer saved a checkpoint; run the same command again to resume")
        return EXIT_INTERRUPTED, outcomes
    code = overall_exit(outcomes)
    runner.say("\n== summary")
    for o in outcomes:
        runner.say(f"  {o.kind + '/' + o.name:<48} {o.phase!s:<11} {o.reason:<18} {o.seconds:6.0f}s")
    runner.say(f"  exit status {code}")
    return code, outcomes
