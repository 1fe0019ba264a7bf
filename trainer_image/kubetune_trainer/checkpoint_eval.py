"""Checkpoint evaluation (spec.evaluation.checkpoints): evaluate the model during training on a
cheap subset of the evaluation sets, keep the best checkpoint's weights, stop early when asked, and
put the chosen weights back before the final (full) evaluation.

Every ``everySteps`` optimizer steps and at the last step, :class:`CheckpointTracker` evaluates the
model with ``limit=examples`` (the base is measured once, at the first evaluation, and its outputs
reused), adds a row to the table and asks :func:`kubetune.checkpoint_selection.choose` for the
step to promote. When the choice moves to the new row, the trainable weights (the adapter; all
weights for a full fine-tune) are saved to ``<output>/kubetune/chosen-checkpoint.safetensors`` (written
beside it and renamed into place, its step in the metadata); the choice
never moves back to an older row, so one file is enough. The table is written to
``<output>/kubetune/checkpoint-evaluations.json`` after each row: a restarted pod resumes it (rows up
to the step it resumes from).

After training, :meth:`CheckpointTracker.finish` loads the chosen weights when the chosen step is
not the last one and returns the :class:`~kubetune.api.status.CheckpointSelection` for the result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.api.spec import CheckpointEvaluation, Gate
from kubetune.api.status import CheckpointMetrics, CheckpointSelection
from kubetune.checkpoint_selection import choose, row, should_stop
from kubetune_trainer.reporting import Log

TABLE_FILE = "checkpoint-evaluations.json"
WEIGHTS_FILE = "chosen-checkpoint.safetensors"


def trainable_state(model: Any) -> dict[str, Any]:
    """The weights training changes, copied to CPU: the adapter of a PEFT model, else every weight."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: Path, step: int, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata={"step": str(step)})
    tmp.replace(path)


def load_weights(path: Path) -> tuple[int, dict[str, Any]]:
    """(step, weights) of a file :func:`save_weights` wrote."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        step = int((fh.metadata() or {})["step"])
    return step, load_file(str(path))


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"the chosen checkpoint's adapter does not fit the model: {unexpected[:3]}")
    else:
        model.load_state_dict(state)


class CheckpointTracker:
    """The table of checkpoint evaluations and the chosen step's weights; see the module docstring."""

    def __init__(self, settings: CheckpointEvaluation, gates: list[Gate] | None, folder: Path,
                 evaluate: Callable[[Any], dict[str, float]], log: Log, resume_step: int | None = None) -> None:
        self.settings, self.gates, self.folder, self.evaluate, self.log = settings, gates, folder, evaluate, log
        self.select_by = str(settings.select_by)
        self.rows: list[CheckpointMetrics] = []
        self.stopped_early = False
        folder.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._resume(resume_step)
        else:
            (folder / TABLE_FILE).unlink(missing_ok=True)
            (folder / WEIGHTS_FILE).unlink(missing_ok=True)

    def _resume(self, step: int) -> None:
        try:
            saved = json.loads((self.folder / TABLE_FILE).read_text(encoding="utf-8"))
            self.rows = [CheckpointMetrics.model_validate(r) for r in saved.get("evaluations", [])
                         if int(r.get("step", step + 1)) <= step]
        except (OSError, ValueError):
            self.rows = []
        chosen = choose(self.rows, self.select_by).step
        if chosen is not None and self._saved_step() != chosen:
            self.log(f"checkpoint evaluations: the weights of step {chosen} were not kept; evaluating afresh")
            self.rows = []
        elif self.rows:
            self.log(f"checkpoint evaluations: {len(self.rows)} resumed, up to step {self.rows[-1].step}")

    def _saved_step(self) -> int | None:
        try:
            return load_weights(self.folder / WEIGHTS_FILE)[0]
        except (OSError, KeyError, RuntimeError, ValueError):
            return None

    def due(self, step: int, max_steps: int) -> bool:
        return step > 0 and (step % self.settings.every_steps == 0 or step == max_steps) and \
            not any(r.step == step for r in self.rows)

    def evaluate_step(self, model: Any, step: int, *, writer: bool = True) -> bool:
        """Evaluate at ``step``; True when training should stop early. Only the ``writer`` (rank 0 under
        torchrun; every rank evaluates, as the final evaluation does) saves the weights and the table."""
        started = time.monotonic()
        metrics = self.evaluate(model)
        r = row(step, metrics, self.gates)
        self.rows.append(r)
        choice = choose(self.rows, self.select_by)
        if writer:
            if choice.step == step:
                save_weights(self.folder / WEIGHTS_FILE, step, trainable_state(model))
            self._write()
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_base"))
        self.log(f"checkpoint evaluation at step {step} ({time.monotonic() - started:.1f}s): {shown}; "
                 f"{'passes' if r.passed else 'fails ' + ', '.join(r.failed or [])} the gates measured; "
                 f"chosen so far: step {choice.step}")
        if should_stop(self.rows, self.select_by, self.settings.patience):
            self.stopped_early = True
            self.log(f"stopping early at step {step}: {self.select_by} has not improved for "
                     f"{self.settings.patience} checkpoint evaluations")
        return self.stopped_early

    def _write(self) -> None:
        table = {"selectBy": self.select_by,
                 "evaluations": [r.model_dump(by_alias=True, exclude_none=True, mode="json") for r in self.rows]}
        tmp = self.folder / (TABLE_FILE + ".partial")
        tmp.write_text(json.dumps(table, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(self.folder / TABLE_FILE)

    def finish(self, model: Any, last_step: int) -> CheckpointSelection:
        """Load the chosen step's weights into ``model`` (when it is not the last step) and describe the choice."""
        choice = choose(self.rows, self.select_by)
        reason = choice.reason
        if choice.step is not None and choice.step != last_step:
            saved_step, state = load_weights(self.folder / WEIGHTS_FILE)
            if saved_step != choice.step:
                raise RuntimeError(f"{self.folder / WEIGHTS_FILE} holds step {saved_step}, not the chosen "
                                   f"step {choice.step}")
            load_trainable_state(model, state)
            self.log(f"promoting the weights of step {choice.step}, not the last step {last_step}: {reason}")
        elif choice.step is not None:
            self.log(f"the last step is the chosen one: {reason}")
        return CheckpointSelection(select_by=self.select_by, evaluations=list(self.rows), chosen_step=choice.step,
                                   last_step=last_step, stopped_early=self.stopped_early, reason=reason)


def tracker_callback(tracker: CheckpointTracker) -> Any:
    """A TrainerCallback that evaluates when a checkpoint evaluation is due and stops early when asked."""
    from transformers import TrainerCallback

    class CheckpointEvaluationCallback(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            if model is None or not tracker.due(state.global_step, state.max_steps):
                return
            if tracker.evaluate_step(model, state.global_step, writer=state.is_world_process_zero):
                control.should_training_stop = True
                control.should_save = True  # the step training ends at is a checkpoint too

    return CheckpointEvaluationCallback()


__all__ = [
    "TABLE_FILE",
    "WEIGHTS_FILE",
    "CheckpointTracker",
    "load_trainable_state",
    "tracker_callback",
    "trainable_state",
]
