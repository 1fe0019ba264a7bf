"""How many replay examples join the training set, and which (kubetune.data.replay)."""

import pytest

from kubetune.data.replay import draw_replay, replay_count


@pytest.mark.parametrize(("n", "ratio", "count"), [(300, 0.2, 75), (277, 0.25, 92), (10, 0.01, 1), (0, 0.5, 0),
                                                    (100, 0.5, 100), (100, 0.9, 900)])
def test_replay_count_makes_ratio_the_share_of_the_mix(n, ratio, count):
    assert replay_count(n, ratio) == count
    if n:
        assert abs(count / (n + count) - ratio) < 0.02 or count == 1


def test_replay_count_rejects_ratios_outside_the_open_interval():
    for bad in (0, 1, -0.1):
        with pytest.raises(ValueError, match="ratio"):
            replay_count(10, bad)


def test_draw_uses_every_row_once_before_any_repeats_and_is_seeded():
    rows = list(range(7))
    drawn = draw_replay(rows, 16, seed=3)
    assert len(drawn) == 16
    assert sorted(drawn[:7]) == rows and sorted(drawn[7:14]) == rows  # two full passes, then part of a third
    assert drawn == draw_replay(rows, 16, seed=3)
    assert drawn != draw_replay(rows, 16, seed=4)
    assert len(set(draw_replay(rows, 5, seed=1))) == 5
    assert draw_replay([], 5, seed=1) == [] and draw_replay(rows, 0, seed=1) == []
