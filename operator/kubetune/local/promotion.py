"""Promotion in `kubetune run`: the artifact folder copied to spec.output.promotedUri, replacing
what was there — only after every gate passed (the caller's decision, kubetune.gates.decide)."""

from __future__ import annotations

import shutil
from pathlib import Path


def promote(artifact: str, promoted: Path) -> None:
    if promoted.exists():
        shutil.rmtree(promoted)
    promoted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(artifact, promoted)
