"""One job in `kubetune run`: where its output goes, its memory plan, its trainer config, the trainer
as a subprocess (with live progress), its result, the gates and promotion, status and report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from kubetune.api.enums import Phase, Reason
from kubetune.api.resources import AnyJob, PreferenceAlignment
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_contract import CHECKED_DATA_DIR, PlanSummary, SecretEnv, Sources, TrainerResult
from kubetune.gates import decide
from kubetune.local.jobs import LocalJob, file_uri, local_path, secret_env_name
from kubetune.local.outcome import Outcome
from kubetune.local.progress import ProgressTail, ProgressView
from kubetune.local.promotion import promote
from kubetune.local.report import write_report, write_status
from kubetune.status import finished_state, outcome_status

Device = Literal["auto", "cpu", "cuda"]


class Interrupted(Exception):
    pass


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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
    now: Callable[[], datetime] = _utc_now  # the time status.json is stamped with
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
            from kubetune.planning.admission import plan_job, plan_summary
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
        # a GPU plan says nothing about a run on this CPU; a CPU job's plan (its memory limit) does
        applies = p.cpu_only or self.device != "cpu"
        self.say(f"  plan: {p.summary()}" + ("" if p.fits or not applies else "  (warning: does not fit)"))
        return plan_summary(p)

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
            dataset=local_path(spec.dataset.uri), output=str(output), output_uri=file_uri(output),
            promoted=str(promoted) if promoted else None,
            golden=local_path(ev.golden_dataset.uri) if ev and ev.golden_dataset else None,
            safety=local_path(ev.safety_dataset.uri) if ev and ev.safety_dataset else None,
            forgetting=local_path(ev.forgetting_dataset.uri) if ev and ev.forgetting_dataset else None,
            checked_data=str(output / CHECKED_DATA_DIR),
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
        # 1. the data preflight, as the cluster runs it in its own pod before the GPU Job
        log_path = state / "preflight.log"
        self.say(f"  preflight: {self.python} -m kubetune_trainer --config {config_path} --stage preflight  "
                 f"(log: {log_path})")
        rc = self._subprocess(config_path, log_path, state / "progress.json", lj.name, stage="preflight")
        checked = self._result(output / CHECKED_DATA_DIR / "result.json", rc, log_path)
        if checked.outcome != "succeeded":
            return self._finish(job, lj, checked, output=output, promoted=promoted)
        self.say(f"  data: {checked.message}")
        # 2. the trainer, on the checked data
        log_path = state / "trainer.log"
        self.say(f"  trainer: {self.python} -m kubetune_trainer --config {config_path}  (log: {log_path})")
        rc = self._subprocess(config_path, log_path, state / "progress.json", lj.name)
        result = self._result(state / "result.json", rc, log_path)
        return self._finish(job, lj, result, output=output, promoted=promoted)

    def _subprocess(self, config_path: Path, log_path: Path, progress_path: Path, name: str,
                    stage: str = "train") -> int:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [self.python, "-m", "kubetune_trainer", "--config", str(config_path), "--stage", stage]
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
        """The gates, promotion, status.json (what the operator's outcome_status makes of this
        result) and report.html."""
        state = finished_state(result)
        gates = job.spec.evaluation.gates if job.spec.evaluation else None
        if state.phase == Phase.FAILED:
            outcome = Outcome(lj.name, lj.kind, state.phase, state.reason, state.message,
                              metrics=dict(result.metrics), artifact=result.artifact, output=output)
        else:
            decision = decide(result.metrics, gates)
            outcome = Outcome(lj.name, lj.kind, decision.phase, decision.reason, decision.message,
                              metrics=dict(result.metrics), decision=decision, artifact=result.artifact, output=output)
            if decision.passed and promoted is not None and result.artifact:
                promote(result.artifact, promoted)
                outcome.promoted = str(promoted)
        write_status(output, outcome_status(
            state, result=result, gates=gates, output_uri=file_uri(output),
            promoted_uri=file_uri(promoted) if promoted else None, promoted=outcome.promoted is not None,
            now=self.now()))
        outcome.report_html = write_report(outcome, result, self._view.history if self._view else {})
        return outcome
