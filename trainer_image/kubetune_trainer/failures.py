"""Failure classification: every way the trainer can end maps to one documented Reason.

- ``OutOfMemory``: CUDA (or CPU allocator) out of memory, with the planner's estimate in the message.
- ``Diverged``: a NaN/inf training loss; :class:`DivergenceCallback` stops training at once.
- ``DataInvalid`` / ``InsufficientData``: the data preflight (raised as :class:`TrainerFailure`).
- ``ModelUnavailable``: the model, adapter or tokenizer could not be found or loaded.
- ``GPUUnavailable``: the config says ``cuda`` (a GPU job) but the process sees no CUDA device.
- ``StorageUnavailable``: an s3:// bucket is missing, the credentials are wrong or the endpoint cannot
  be reached (kubetune_trainer.storage.StorageError), for an input (checked before training) or an output.
- ``Interrupted``: SIGTERM (preemption, deletion, suspend); a checkpoint is saved first.
- ``TrainerError``: anything else, with a short message (the traceback goes to the log only).

Fault injection for tests and chaos drills: ``KUBETUNE_FAULT_INJECT=nan_loss@3`` (a NaN weight before
step 3), ``sigterm@3``, ``oom@3``, ``error@3``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from typing import Any

from kubetune.api.enums import Reason
from kubetune.api.trainer_contract import PlanSummary

FAULT_ENV = "KUBETUNE_FAULT_INJECT"
MAX_MESSAGE = 1024


class TrainerFailure(Exception):
    """A classified failure: ``reason`` is a :class:`kubetune.api.enums.Reason` value."""

    def __init__(self, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "?"


def oom_message(exc: BaseException, plan: PlanSummary, step: int | None) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f" at step {step}" if step else ""
    parts = [f"out of memory{where}: {first[:300]}"]
    if plan.peak_bytes:
        limit = (f"with {_gib(plan.memory_bytes)} memory per pod (CPU job)" if plan.memory_bytes
                 else f"on a {_gib(plan.gpu_memory_bytes)} GPU")
        parts.append(f"the planner estimated a peak of {_gib(plan.peak_bytes)} {limit}"
                     + (f" ({plan.summary})" if plan.summary else ""))
    if plan.best_suggestion:
        parts.append(f"try: {plan.best_suggestion}")
    else:
        parts.append("try a smaller training.batchSize (with more gradientAccumulationSteps), a shorter "
                     "maxSeqLength, gradientCheckpointing: true, or method qlora")
    return "; ".join(parts)


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch
        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is always there in the trainer
        pass
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "out of memory" in text.lower() and ("CUDA" in text or "HIP" in text or "allocate" in text)


def short(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify(exc: BaseException, plan: PlanSummary, step: int | None = None) -> TrainerFailure:
    """Map an exception to a TrainerFailure with a short, human message (never a traceback)."""
    if isinstance(exc, TrainerFailure):
        return exc
    from kubetune_trainer.storage import StorageError

    if isinstance(exc, StorageError):  # its message names the URI and the cause, scrubbed of credentials
        return TrainerFailure(Reason.STORAGE_UNAVAILABLE, short(str(exc)))
    if _is_oom(exc):
        return TrainerFailure(Reason.OUT_OF_MEMORY, short(oom_message(exc, plan, step)))
    if isinstance(exc, KeyboardInterrupt):
        return TrainerFailure(Reason.INTERRUPTED, "interrupted")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f" at step {step}" if step else ""
    return TrainerFailure(Reason.TRAINER_ERROR, short(f"{type(exc).__name__}{where}: {first}" if first else f"{type(exc).__name__}{where}"))


def model_unavailable(what: str, exc: BaseException) -> TrainerFailure:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainerFailure(Reason.MODEL_UNAVAILABLE, short(f"cannot load {what}: {first}"))


def gpu_unavailable(gpus: int | None) -> TrainerFailure:
    """A GPU job on a pod that sees no CUDA device: what was requested, what the pod sees, what to check.

    `gpus` is `spec.resources.gpus` (None or 0 when cuda was asked for some other way, e.g.
    `kubetune run --device cuda`).
    """
    import torch

    if gpus:
        asked = f"the job requested {gpus} GPU{'s' if gpus > 1 else ''} (resources.gpus) but the pod sees no CUDA device"
    else:
        asked = "device cuda was requested but this process sees no CUDA device"
    if torch.version.cuda is None:
        why = (f"this torch ({torch.__version__}) is built without CUDA: the trainer image needs a CUDA build "
               "of torch")
    else:
        visible = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES") if k in os.environ}
        shown = ", ".join(f"{k}={v!r}" for k, v in visible.items()) or "neither CUDA_VISIBLE_DEVICES nor NVIDIA_VISIBLE_DEVICES is set"
        why = (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no device ({shown}): check the node's "
               "NVIDIA driver, device plugin and container runtime")
    instead = "set resources.gpus: 0 to run on CPU" if gpus else "run on CPU (--device cpu)"
    return TrainerFailure(Reason.GPU_UNAVAILABLE, short(f"{asked}; {why}; or {instead}"))


def is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


class StopRequest:
    """Set by SIGTERM/SIGINT; read by the training callback to checkpoint and stop."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (tests calling main() from a thread)
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


def parse_fault(value: str | None) -> tuple[str, int] | None:
    """``"nan_loss@3"`` → ("nan_loss", 3)."""
    if not value:
        return None
    kind, _, at = value.partition("@")
    if kind not in {"nan_loss", "sigterm", "oom", "error"}:
        raise ValueError(f"{FAULT_ENV}={value!r}: kind must be nan_loss, sigterm, oom or error")
    return kind, int(at or 1)


def training_callbacks(stop: StopRequest, outcome: dict[str, Any]) -> list[Any]:
    """TrainerCallbacks for divergence, SIGTERM and fault injection. ``outcome`` collects what
    happened: ``diverged`` (step, loss), ``interrupted`` (signal name)."""
    from transformers import TrainerCallback

    fault = parse_fault(os.environ.get(FAULT_ENV))

    class DivergenceCallback(TrainerCallback):  # type: ignore[misc]
        """Stops at once on a NaN/inf loss (the Trainer's nan filter must be off to see it)."""

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs")
            if not logs:
                return
            for key in ("loss", "train_loss"):
                if key in logs and not is_finite(logs[key]):
                    outcome["diverged"] = {"step": state.global_step, "loss": str(logs[key])}
                    control.should_training_stop = True
                    control.should_save = False
                    return

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # don't write a checkpoint of diverged weights
            if outcome.get("diverged"):
                control.should_save = False

    class StopCallback(TrainerCallback):  # type: ignore[misc]
        """On SIGTERM: save a checkpoint at the end of the current step, then stop."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if stop.requested and not outcome.get("diverged"):
                outcome["interrupted"] = stop.signal_name or "SIGTERM"
                control.should_save = True
                control.should_training_stop = True

    class FaultCallback(TrainerCallback):  # type: ignore[misc]
        def __init__(self, kind: str, at: int) -> None:
            self.kind, self.at, self.done = kind, at, False

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            model = kwargs.get("model")
            if self.done or state.global_step + 1 < self.at:
                return
            self.done = True
            if self.kind == "nan_loss" and model is not None:
                import torch
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))
                            break
            elif self.kind == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif self.kind == "oom":
                import torch
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            else:
                raise RuntimeError("injected trainer error")

    callbacks: list[Any] = [DivergenceCallback(), StopCallback()]
    if fault is not None:
        callbacks.append(FaultCallback(*fault))
    return callbacks


__all__ = ["FAULT_ENV", "StopRequest", "TrainerFailure", "classify", "gpu_unavailable", "model_unavailable", "oom_message",
           "training_callbacks"]
