"""Replay (spec.dataset.replay): how many general examples join the training set, and which. Pure.

``ratio`` is the share of the training mix the replay set makes up: ``n_train × ratio / (1 − ratio)``
replay examples, rounded, at least one. They are drawn with the training seed: a shuffled pass over
the replay set, then another shuffled pass when more are needed than it holds, so no example
repeats before every example was used once.
"""

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def replay_count(n_train: int, ratio: float) -> int:
    """How many replay examples join ``n_train`` training examples for a mix with ``ratio`` replay."""
    if not 0 < ratio < 1:
        raise ValueError(f"replay ratio must be in (0, 1), got {ratio}")
    if n_train <= 0:
        return 0
    return max(1, round(n_train * ratio / (1 - ratio)))


def draw_replay(rows: Sequence[T], count: int, seed: int) -> list[T]:
    """``count`` rows of ``rows`` in shuffled passes (seeded); empty when either is empty."""
    if not rows or count <= 0:
        return []
    rng = random.Random(seed)
    drawn: list[T] = []
    while len(drawn) < count:
        order = list(range(len(rows)))
        rng.shuffle(order)
        drawn += [rows[i] for i in order[:count - len(drawn)]]
    return drawn


__all__ = ["draw_replay", "replay_count"]
