"""How evaluation reaches the *base* model to compare the fine-tuned one against.

The trainer owns this protocol; evaluation (``kubetune_trainer.evaluate``) only uses it:

    with base.base() as model:      # the base model, ready for forward/generate
        ...                         # (same tokenizer as the tuned model)

Two implementations:

- :class:`AdapterBase` — for LoRA/QLoRA: the tuned PEFT model with its adapter disabled. No extra
  memory, and for QLoRA it is exactly the 4-bit base the adapter was trained on.
- :class:`LazyBase` — for full fine-tunes: a separate copy of the base, loaded on first use (by a
  callable the trainer supplies) and kept until :meth:`LazyBase.release`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class BaseAccess(Protocol):
    """Gives the base model for comparison (forgetting, before/after metrics)."""

    description: str  # one line for logs/model card, e.g. "adapter disabled on the 4-bit base"

    def base(self) -> AbstractContextManager[Any]:
        """A context manager yielding the base model; leaving it restores the tuned model."""
        ...


class AdapterBase:
    """The PEFT model with its adapter(s) disabled for the duration of the ``with`` block."""

    def __init__(self, model: Any, description: str = "adapter disabled") -> None:
        self._model = model
        self.description = description

    @contextmanager
    def base(self) -> Iterator[Any]:
        was_training = self._model.training
        self._model.eval()
        try:
            with self._model.disable_adapter():
                yield self._model
        finally:
            self._model.train(was_training)


class LazyBase:
    """A separately loaded base model (full fine-tunes), loaded once on first use."""

    def __init__(self, load: Callable[[], Any], description: str = "separately loaded base") -> None:
        self._load = load
        self._model: Any = None
        self.description = description

    @contextmanager
    def base(self) -> Iterator[Any]:
        if self._model is None:
            self._model = self._load()
            self._model.eval()
        yield self._model

    def release(self) -> None:
        self._model = None


def base_access_for(model: Any, load_base: Callable[[], Any] | None = None, *, quantized: bool = False) -> BaseAccess:
    """AdapterBase for a PEFT model, else LazyBase over ``load_base``."""
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        what = "adapter disabled on the 4-bit base it was trained on" if quantized else "adapter disabled"
        return AdapterBase(model, what)
    if load_base is None:
        raise ValueError("a full fine-tune needs load_base to compare against the base model")
    return LazyBase(load_base)


__all__ = ["AdapterBase", "BaseAccess", "LazyBase", "base_access_for"]


def dpo_reference(model: Any, ref_model: Any = None) -> Callable[[], AbstractContextManager[Any]] | None:
    """DPO's reference for the held-out preference metrics: the model TRL trains against, so that they
    mean what its rewards/accuracies and rewards/margins mean on the training batches.

    An explicit reference (dpo.referenceModel: base) is itself; for a PEFT policy it is TRL's frozen "ref"
    adapter (the copy of the adapter DPO started from: the SFT policy, not the base before SFT) or, for
    a new adapter, the adapters disabled. None: the evaluation's base is the reference (a full model)."""
    if ref_model is not None:
        return lambda: nullcontext(ref_model)
    if not hasattr(model, "peft_config"):
        return None
    from trl.trainer.utils import use_adapter

    name = "ref" if "ref" in model.peft_config else None

    @contextmanager
    def reference() -> Iterator[Any]:
        was_training = model.training
        model.eval()
        try:
            with use_adapter(model, name):
                yield model
        finally:
            model.train(was_training)

    return reference
