"""spec.tracking.mlflow: the run in MLflow.

The trainer opens the run itself (so it knows the run id, and a restart or an oomRetry attempt reattaches to
the same run: its id is kept in `<output>/kubetune/mlflow-run.json`), then transformers' own MLflow
integration (`report_to="mlflow"`, transformers.integrations.MLflowCallback) logs the training arguments and
model config as parameters and the training curve (loss, learning rate, grad norm per step) to that active
run. After training the trainer adds what only it knows: the evaluation metrics, each gate's value and
verdict, the memory plan (plan.json) and the model card (README.md) as artifacts.

A tracking server that cannot be used never fails the training: the first call that fails turns tracking
off for the rest of the run and the result says why (`TrainerResult.tracking`, available false), which the
operator shows as the condition TrackingAvailable=False (reason TrackingUnavailable) with a Warning Event.
Credentials are MLflow's own environment variables (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, from
spec.tracking.mlflow.credentialsSecret in a pod); they are never logged, and an error message is reported
without the URI's userinfo.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from kubetune.api.trainer_contract import TrackingReport, TrainerConfig
from kubetune_trainer.reporting import Log

RUN_FILE = "kubetune/mlflow-run.json"
# a server that is down must cost seconds, not the client's default minutes of retries
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def _redact(text: str) -> str:
    """An error message without userinfo in URLs or the values of credential variables."""
    text = re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)
    for var in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        value = os.environ.get(var)
        if value:
            text = text.replace(value, "***")
    return text[:500]


class Tracking:
    """The run of one trainer start; every method is a no-op once tracking is off."""

    def __init__(self, config: TrainerConfig, output: Path, log: Log) -> None:
        mlf = config.spec.tracking.mlflow if config.spec.tracking else None
        if int(os.environ.get("RANK", "0") or 0) != 0:  # torchrun: rank 0 logs the run, as it writes the artifact
            mlf = None
        self.config, self.output, self.log = config, output, log
        self.uri = mlf.tracking_uri if mlf else None
        self.experiment = mlf.experiment if mlf else None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.error: str | None = None
        self._mlflow: Any = None

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    @property
    def active(self) -> bool:
        return self._mlflow is not None and self.run_id is not None and self.error is None

    def _fail(self, doing: str, exc: BaseException) -> None:
        self.error = f"{doing}: {type(exc).__name__}: {_redact(str(exc))}"
        self.log(f"tracking: {self.error}; training goes on without it")
        try:
            if self._mlflow is not None and self._mlflow.active_run() is not None:
                self._mlflow.end_run()
        except Exception:  # the server is gone: nothing to close
            pass

    def start(self) -> None:
        """Open (or reattach to) the run; the environment then points transformers' integration at it."""
        if not self.enabled:
            return
        for k, v in _CLIENT_ENV.items():
            os.environ.setdefault(k, v)
        try:
            import mlflow

            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            exp = mlflow.set_experiment(self.experiment)
            self.experiment_id = exp.experiment_id
            previous = self._saved_run()
            job = self.config.job
            if previous:
                run = mlflow.start_run(run_id=previous)
            else:
                run = mlflow.start_run(run_name=f"{job.namespace}/{job.name}", tags={
                    "kubetune.kind": job.kind, "kubetune.name": job.name, "kubetune.namespace": job.namespace,
                    "kubetune.uid": job.uid or "", "kubetune.task": self.config.task})
            self.run_id = run.info.run_id
            self._save_run()
            os.environ["MLFLOW_TRACKING_URI"] = str(self.uri)
            os.environ["MLFLOW_EXPERIMENT_NAME"] = str(self.experiment)
            # transformers' MLflowCallback logs to the active run; with MLFLOW_RUN_ID set it would start it again
            os.environ.pop("MLFLOW_RUN_ID", None)
            self.log(f"tracking: MLflow run {self.run_id} in experiment {self.experiment!r}"
                     + (" (reattached)" if previous else ""))
        except Exception as exc:
            self._fail(f"cannot use the MLflow server {_redact(str(self.uri))}", exc)

    def report_to(self) -> str:
        """TrainingArguments.report_to: transformers' MLflow integration while the run is open."""
        return "mlflow" if self.active else "none"

    def _saved_run(self) -> str | None:
        try:
            data = json.loads((self.output / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        same = data.get("trackingUri") == self.uri and data.get("experiment") == self.experiment
        return str(data["runId"]) if same and data.get("runId") else None

    def _save_run(self) -> None:
        path = self.output / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"runId": self.run_id, "trackingUri": self.uri, "experiment": self.experiment}),
                        encoding="utf-8")

    def log_outcome(self, *, metrics: dict[str, float], gates: list[dict[str, Any]], card: str | None,
                    outcome: str) -> None:
        """Evaluation metrics, gate results, the plan and the model card; then the run ends."""
        if not self.active:
            return
        mlflow = self._mlflow
        try:
            spec = self.config.spec
            t = spec.training
            mlflow.log_params({
                "kubetune.method": str(getattr(spec, "method", "")), "kubetune.baseModel": self.config.sources.model,
                "kubetune.batchSize": t.batch_size, "kubetune.gradientAccumulationSteps": t.gradient_accumulation_steps,
                "kubetune.gradientCheckpointing": t.gradient_checkpointing, "kubetune.maxSeqLength": t.max_seq_length,
            })
            clean = {re.sub(r"[^0-9A-Za-z_\-. :/]", "_", k): float(v) for k, v in metrics.items()}
            for g in gates:
                name = "gate." + re.sub(r"[^0-9A-Za-z_\-. :/]", "_", str(g.get("metric")))
                clean[name + ".passed"] = 1.0 if g.get("passed") else 0.0
            if clean:
                mlflow.log_metrics(clean)
            mlflow.log_dict({"gates": gates}, "kubetune/gates.json")
            mlflow.log_dict(self.config.plan.model_dump(by_alias=True, exclude_none=True, mode="json"),
                            "kubetune/plan.json")
            if card is not None:
                mlflow.log_text(card, "model-card/README.md")
            mlflow.set_tag("kubetune.outcome", outcome)
            mlflow.end_run(status="FINISHED" if outcome == "succeeded" else "FAILED")
        except Exception as exc:
            self._fail("cannot log the outcome to MLflow", exc)

    def close(self, failed: bool) -> None:
        """End the run if the outcome was not logged (a failure before it)."""
        if self.active and self._mlflow.active_run() is not None:
            try:
                self._mlflow.end_run(status="FAILED" if failed else "FINISHED")
            except Exception as exc:
                self._fail("cannot end the MLflow run", exc)

    def report(self) -> TrackingReport | None:
        if not self.enabled:
            return None
        return TrackingReport(available=self.error is None, run_id=self.run_id, experiment_id=self.experiment_id,
                              message=self.error or f"logged to MLflow experiment {self.experiment!r}")


__all__ = ["Tracking"]
