"""Checkpoints under ``<output>/checkpoints/``, resumable only when complete.

The Hugging Face Trainer writes ``checkpoint-<step>/`` every ``checkpoint.everySteps`` steps and keeps
the newest ``checkpoint.keepLast`` (``save_total_limit``). It writes in place, so a process killed
mid-save leaves a half-written folder. :class:`CompletionMarker` writes ``kubetune-complete.json``
into the folder (atomically) only after the Trainer has finished saving it; on start,
:func:`prepare_resume` moves folders without the marker aside and returns the newest complete one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

MARKER = "kubetune-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` folder, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        m = _CHECKPOINT.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def checkpoint_step(path: Path) -> int | None:
    """N of a ``checkpoint-N`` folder."""
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def newest_complete(folder: Path) -> Path | None:
    complete = [p for _, p in checkpoints(folder) if is_complete(p)]
    return complete[-1] if complete else None


def prepare_resume(folder: Path, log: Any = None) -> Path | None:
    """Remove half-written checkpoints (no marker) and return the newest complete one, if any."""
    for step, path in checkpoints(folder):
        if not is_complete(path):
            if log:
                log(f"ignoring incomplete checkpoint {path.name} (the process stopped while saving it)")
            trash = path.with_name(f".incomplete-{path.name}-{int(time.time())}")
            path.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
            del step
    return newest_complete(folder)


def is_final(path: Path, max_steps: int | None = None) -> bool:
    """Whether the checkpoint was saved at the last step of training: its trainer_state.json's
    ``global_step`` reaches ``max_steps`` (this run's ``training.maxSteps`` when set, else the
    step count the checkpointed run had computed from its epochs). Resuming from such a checkpoint
    would make the Trainer take one more optimizer step (transformers 5.x), so the caller loads it
    instead of training on."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        last = max_steps or int(state.get("max_steps") or 0)
        return last > 0 and int(state["global_step"]) >= last
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_final(trainer: Any, path: Path) -> None:
    """Put a final checkpoint's weights and state into ``trainer`` without another training step."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(path))  # adapter or full weights, whichever the checkpoint has
    trainer.state = TrainerState.load_from_json(str(path / "trainer_state.json"))


def mark_complete(path: Path, step: int) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time()}))
    tmp.replace(path / MARKER)


def completion_callback() -> Any:
    """A TrainerCallback that marks each checkpoint complete once the Trainer has saved it."""
    from transformers import TrainerCallback

    class CompletionMarker(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir() and state.is_world_process_zero:
                mark_complete(path, state.global_step)

    return CompletionMarker()


__all__ = [
    "MARKER",
    "checkpoint_step",
    "checkpoints",
    "completion_callback",
    "is_complete",
    "is_final",
    "load_final",
    "mark_complete",
    "newest_complete",
    "prepare_resume",
]
