"""One job in `kubetune run`: where its output goes, its memory plan, its trainer config, the trainer
as a subprocess (with live progress), its result, the gates and the promotion the trainer did, status
and report."""

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
from kubetune.derivation import dependent_adapter, finished_state, outcome_status
from kubetune.gates import promotion_decision
from kubetune.local.jobs import LocalJob, file_uri, local_path, secret_env_name
from kubetune.local.outcome import Outcome
from kubetune.local.progress import ProgressTail, ProgressView
from kubetune.local.report import write_report, write_status
from kubetune.planning.oom_retry import attempt_shapes
from kubetune.render.job import MASTER_ADDR_ENV, attempt_job, trainer_command

Device = Literal["auto", "cpu", "cuda"]


class Interrupted(Exception):
    pass


def trainer_commands(python: str, config_path: Path, gpus: int, nodes: int) -> list[list[str]]:
    """The pod's trainer command (kubetune.render.job.trainer_command), one per node: a process per GPU
    under torchrun (`kubetune-trainer launch`; on CPU, one gloo process per requested GPU); `nodes`
    launchers meet on loopback, node i with the node rank the Indexed Job gives pod i."""
    port = _free_port() if nodes > 1 else 0
    commands = []
    for node in range(nodes):
        cmd = trainer_command(str(config_path), gpus=gpus, nodes=nodes, port=port)
        cmd = [python, "-m", "kubetune_trainer", *cmd[1:]]  # the entry point of this Python, not one on PATH
        commands.append([a.replace("$(JOB_COMPLETION_INDEX)", str(node)).replace(f"$({MASTER_ADDR_ENV})", "127.0.0.1")
                         for a in cmd])
    return commands


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Group:
    """Node 0's launcher (whose exit status counts) and the other nodes' launchers, as one process."""

    def __init__(self, main: subprocess.Popen[str], others: list[subprocess.Popen[str]]) -> None:
        self.main, self.others = main, others

    @property
    def returncode(self) -> int | None:
        return self.main.returncode

    def poll(self) -> int | None:
        for p in self.others:
            p.poll()
        return self.main.poll()

    def send_signal(self, sig: int) -> None:
        for p in (self.main, *self.others):
            if p.poll() is None:
                p.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        rc = self.main.wait(timeout)
        for p in self.others:
            p.wait(timeout)
        return rc

    def kill(self) -> None:
        for p in (self.main, *self.others):
            if p.poll() is None:
                p.kill()


def _out_of_memory(result: TrainerResult, rc: int) -> bool:
    """The trainer ran out of memory: it said so (CUDA or host allocator), or the kernel's OOM killer
    ended it (SIGKILL, what a pod shows as OOMKilled)."""
    return result.reason == Reason.OUT_OF_MEMORY or rc in (-signal.SIGKILL, 128 + signal.SIGKILL)


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
class Paths:
    """Where a job's trainer writes: `output` is a local folder (the output itself, or where an
    s3:// output is staged — checkpoints, status.json, report.html, the trainer's log); `output_uri`
    is what it stands for; `promoted` is a local folder or an s3:// URI, `promoted_uri` its URI."""

    output: Path
    output_uri: str
    promoted: str | None = None
    promoted_uri: str | None = None


def _runs_dir() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune") / "runs"


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

    def paths(self, job: AnyJob) -> Paths:
        """--output-root moves the output and the promoted copy below it; otherwise file:// is a
        local folder and s3:// is staged in ~/.cache/kubetune/runs/<name> and uploaded by the trainer."""
        name = job.metadata.name or "job"
        out = job.spec.output
        if self.output_root is not None:
            root = self.output_root.resolve()
            promoted = root / "promoted" / name if out.promoted_uri else None
            return Paths(root / name, file_uri(root / name), str(promoted) if promoted else None,
                         file_uri(promoted) if promoted else None)
        if out.uri.startswith("file://"):
            paths = Paths(Path(local_path(out.uri)), out.uri)
        elif out.uri.startswith("s3://"):
            paths = Paths(_runs_dir() / name, out.uri)
        else:
            raise ValueError(f"spec.output.uri {out.uri!r}: `kubetune run` writes to file:// or s3:// only "
                             "(or pass --output-root)")
        if out.promoted_uri and out.promoted_uri.startswith(("file://", "s3://")):
            paths.promoted, paths.promoted_uri = local_path(out.promoted_uri), out.promoted_uri
        elif out.promoted_uri:
            raise ValueError(f"spec.output.promotedUri {out.promoted_uri!r}: `kubetune run` promotes to file:// or "
                             "s3:// only (or pass --output-root)")
        return paths

    def plan(self, job: AnyJob, lookup: Any) -> PlanSummary:
        from kubetune.planning.admission import plan_job, plan_summary
        from kubetune.planning.types import CannotPlan

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
            # the operator's rule (kubetune.derivation.dependent_adapter): the promoted copy, else the artifact
            found = dependent_adapter((dep.status or {}).get("artifact"))
            if dep.phase != Phase.SUCCEEDED or not found:
                return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.DEPENDENCY_FAILED,
                               f"FineTuneJob {ref} ended {dep.phase} ({dep.reason}), not Succeeded; nothing to align")
            referenced = lookup(ref)
            adapter, before = local_path(found), dep.metrics
        elif isinstance(job, PreferenceAlignment) and job.spec.adapter is not None:
            adapter = local_path(job.spec.adapter.uri)
        try:
            paths = self.paths(job)
        except ValueError as exc:
            return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.INVALID_SPEC, str(exc))
        if job.spec.storage is not None and job.spec.storage.secret_ref is not None:
            self.say(f"  storage: spec.storage.secretRef {job.spec.storage.secret_ref.name!r} is a cluster Secret; "
                     "here the trainer uses the AWS_* variables of this environment")
        plan = self.plan(job, lookup)
        outcome = self._train(job, lj, paths=paths, referenced=referenced, adapter=adapter, plan=plan, lookup=lookup)
        outcome.before = before
        outcome.seconds = time.monotonic() - started
        return outcome

    def _config(self, job: AnyJob, *, paths: Paths, referenced: FineTuneJobSpec | None,
                adapter: str | None, plan: PlanSummary) -> Any:
        from kubetune.render.trainer_config import build_trainer_config

        spec = job.spec
        base = spec.base_model if spec.base_model is not None else (referenced.base_model if referenced else None)
        if base is None:
            raise ValueError("no base model: set spec.baseModel or spec.fineTuneJobRef")
        ev = spec.evaluation
        replay = getattr(spec.dataset, "replay", None)  # FineTuneJob only
        sources = Sources(
            model=local_path(base.uri), model_revision=base.revision, adapter=adapter,
            dataset=local_path(spec.dataset.uri), output=str(paths.output), output_uri=paths.output_uri,
            promoted=paths.promoted, promoted_uri=paths.promoted_uri,
            golden=local_path(ev.golden_dataset.uri) if ev and ev.golden_dataset else None,
            safety=local_path(ev.safety_dataset.uri) if ev and ev.safety_dataset else None,
            forgetting=local_path(ev.forgetting_dataset.uri) if ev and ev.forgetting_dataset else None,
            replay=local_path(replay.uri) if replay is not None else None,
            checked_data=str(paths.output / CHECKED_DATA_DIR),
        )
        secret = SecretEnv(
            hf_token=secret_env_name(base.token_secret_ref.name, base.token_secret_ref.key) if base.token_secret_ref else None,
            judge_api_key=(secret_env_name(ev.judge.api_key_secret_ref.name, ev.judge.api_key_secret_ref.key)
                           if ev and ev.judge and ev.judge.api_key_secret_ref else None),
        )
        return build_trainer_config(job, sources=sources, referenced=referenced, plan=plan, secret_env=secret,
                                    device=self.device)

    def _train(self, job: AnyJob, lj: LocalJob, *, paths: Paths, referenced: FineTuneJobSpec | None,
               adapter: str | None, plan: PlanSummary, lookup: Any = None) -> Outcome:
        output = paths.output
        try:
            config = self._config(job, paths=paths, referenced=referenced, adapter=adapter, plan=plan)
        except ValueError as exc:
            return Outcome(lj.name, lj.kind, Phase.FAILED, Reason.INVALID_SPEC, str(exc))
        state = output / "kubetune"
        previous = _read_json(state / "result.json")
        if previous is not None and previous.get("reason") in (Reason.INTERRUPTED, Reason.RANK_FAILED):
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
            return self._finish(job, lj, checked, paths=paths)
        self.say(f"  data: {checked.message}")
        # 2. the trainer, on the checked data
        log_path = state / "trainer.log"
        # spec.training.oomRetry: the operator's decision (kubetune.planning.oom_retry), attempt after attempt
        shapes, attempt = attempt_shapes(config.spec), 1
        while True:
            commands = trainer_commands(self.python, config_path, job.spec.resources.gpus, job.spec.resources.nodes)
            for command in commands:
                self.say(f"  trainer: {' '.join(command)}  (log: {log_path})")
            rc = self._subprocess(config_path, log_path, state / "progress.json", lj.name, commands=commands)
            result = self._result(state / "result.json", rc, log_path)
            if attempt >= len(shapes) or not _out_of_memory(result, rc):
                break
            attempt += 1
            smaller = attempt_job(job, attempt, referenced)
            self.say(f"  attempt {attempt - 1} ran out of memory ({result.reason}); attempt {attempt} of "
                     f"{len(shapes)}: {shapes[attempt - 1].describe()}, resuming from the newest checkpoint")
            config = self._config(smaller, paths=paths, referenced=referenced, adapter=adapter,
                                  plan=self.plan(smaller, lookup))
            config_path.write_text(config.to_json() + "\n", encoding="utf-8")
            (state / "result.json").unlink(missing_ok=True)
            log_path = state / f"trainer-attempt-{attempt}.log"
        return self._finish(job, lj, result, paths=paths)

    def _subprocess(self, config_path: Path, log_path: Path, progress_path: Path, name: str,
                    stage: str = "train", commands: list[list[str]] | None = None) -> int:
        """Run the stage; `commands`: the trainer's launchers (one per node, the first is node 0's) —
        its exit status is the job's, the others are waited for."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd, *others = commands or [[self.python, "-m", "kubetune_trainer", "--config", str(config_path), "--stage", stage]]
        view = ProgressView(name, self.err, tty=self.tty)
        self._view = view
        with open(log_path, "w", encoding="utf-8") as log:
            nodes = [subprocess.Popen(other, stdout=None if self.verbose else log,
                                      stderr=None if self.verbose else subprocess.STDOUT, env=env, text=True)
                     for other in others]
            proc = _Group(subprocess.Popen(cmd, stdout=None if self.verbose else log,
                                           stderr=None if self.verbose else subprocess.STDOUT, env=env, text=True),
                          nodes)
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
        try:
            proc.wait(timeout=120)  # the other nodes' launchers end with node 0's
        except subprocess.TimeoutExpired:
            proc.kill()
        return int(proc.main.returncode)

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

    def _finish(self, job: AnyJob, lj: LocalJob, result: TrainerResult, *, paths: Paths) -> Outcome:
        """The gates (the operator's function, on the result as reported), the promotion the trainer
        did (reported in the result), status.json (what the operator's outcome_status makes of this
        result) and report.html."""
        state = finished_state(result)
        gates = job.spec.evaluation.gates if job.spec.evaluation else None
        output = paths.output
        if state.phase == Phase.FAILED:
            outcome = Outcome(lj.name, lj.kind, state.phase, state.reason, state.message,
                              metrics=dict(result.metrics), artifact=result.artifact, output=output)
        else:
            decision = promotion_decision(result, gates)
            outcome = Outcome(lj.name, lj.kind, decision.phase, decision.reason, decision.message,
                              metrics=dict(result.metrics), decision=decision, artifact=result.artifact, output=output)
        outcome.promotion = result.promotion
        outcome.promoted = result.promotion.uri if result.promotion else None
        outcome.status = outcome_status(state, result=result, gates=gates, output_uri=paths.output_uri, now=self.now())
        outcome.artifact_uri = (outcome.status.get("artifact") or {}).get("uri")
        write_status(output, outcome.status)
        outcome.report_html = write_report(outcome, result, self._view.history if self._view else {})
        return outcome
