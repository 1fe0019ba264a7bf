"""The trainer's progress on this terminal: `ProgressTail` reads every snapshot the trainer appends
to progress.jsonl, `ProgressView` shows them — a one-line bar on a terminal, plain lines in a log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


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
