"""The operator's plain decisions (kubetune.controller.policy): retry backoff, bounded caches, which
copy of an object is newest (resourceVersions compared for equality only), leader election."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubetune.controller.policy import (
    Bounded,
    Freshness,
    LeaseView,
    leader_decision,
    retry_after_seconds,
    retry_delay,
)


# --- retry_delay ----------------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    lows = [retry_delay(n, base=1, cap=60, rand=lambda: 0.0) for n in range(1, 10)]
    highs = [retry_delay(n, base=1, cap=60, rand=lambda: 1.0) for n in range(1, 10)]
    assert lows == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert highs == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_spreads_jobs_that_failed_together() -> None:
    import random

    rng = random.Random(7)
    delays = {round(retry_delay(5, base=1, cap=300, rand=rng.random), 3) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 8 and max(delays) <= 16


def test_retry_after_wins_when_longer() -> None:
    assert retry_delay(1, base=1, retry_after=7, rand=lambda: 1.0) == 7
    assert retry_delay(10, base=1, cap=300, retry_after=7, rand=lambda: 0.0) == 150
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds(None) is None


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    assert retry_delay(10_000, base=1, cap=300, rand=lambda: 1.0) == 300
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(0)


# --- Bounded ----------------------------------------------------------------------------------------
def test_bounded_keeps_the_most_recent() -> None:
    b: Bounded[int, str] = Bounded(3)
    for i in range(10):
        b[i] = str(i)
    assert list(b) == [7, 8, 9] and len(b) == 3
    assert b.get(7) == "7"  # reading makes it recent
    b[10] = "10"
    assert list(b) == [9, 7, 10]


def test_bounded_ttl_forgets_old_entries() -> None:
    now = [0.0]
    b: Bounded[str, bool] = Bounded(10, ttl=300, clock=lambda: now[0])
    b["ns"] = True
    now[0] = 299
    assert "ns" in b
    now[0] = 600
    assert "ns" not in b and len(b) == 0


def test_bounded_after_two_thousand_create_delete_cycles() -> None:
    b: Bounded[tuple[str, str, str], bool] = Bounded(100)
    for i in range(2000):
        b[("FineTuneJob", "ns", f"j{i}")] = True
    assert len(b) == 100


# --- Freshness ----------------------------------------------------------------------------------------
def obj(rv: str, uid: str = "u1") -> dict[str, object]:
    return {"metadata": {"resourceVersion": rv, "uid": uid}}


def test_watch_events_in_order_are_taken() -> None:
    f = Freshness()
    assert all(f.watched("k", obj(rv)) for rv in ("9", "10", "11"))


def test_a_late_event_from_before_our_write_is_ignored_until_our_write_arrives() -> None:
    f = Freshness()
    assert f.watched("k", obj("a"))
    assert f.written("k", obj("c"))  # our status patch's response
    assert not f.watched("k", obj("b"))  # delivered late, older than our write
    assert f.watched("k", obj("c"))  # the watch caught up
    assert f.watched("k", obj("d"))


def test_resource_versions_are_never_ordered() -> None:
    # "10" < "9" as strings, 9 < 10 as ints: neither matters, only the stream order does
    f = Freshness()
    assert f.watched("k", obj("10"))
    assert f.written("k", obj("9"))
    assert not f.watched("k", obj("8"))
    assert f.watched("k", obj("9"))


def test_a_write_response_older_than_the_watch_is_ignored() -> None:
    f = Freshness()
    assert f.watched("k", obj("5"))
    assert f.watched("k", obj("6"))  # someone else's change after our write
    assert not f.written("k", obj("5"))  # our response arrives after the watch delivered it and more
    assert f.written("k", obj("6"))


def test_waiting_for_our_write_gives_up_after_max_age() -> None:
    now = [0.0]
    f = Freshness(max_age=30, clock=lambda: now[0])
    f.written("k", obj("7"))
    assert not f.watched("k", obj("x"))
    now[0] = 31  # a re-list skipped our write's event
    assert f.watched("k", obj("y"))


def test_another_uid_is_another_object() -> None:
    f = Freshness()
    f.written("k", obj("7", uid="old"))
    assert f.watched("k", obj("3", uid="new"))
    f.forget("k")
    assert len(f) == 0


# --- leader election ------------------------------------------------------------------------------
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_no_lease_take_it() -> None:
    step = leader_decision(None, "a", T0, 15)
    assert step.leader and step.write is not None
    assert step.write["holderIdentity"] == "a" and step.write["leaseTransitions"] == 0


def test_renew_our_own() -> None:
    step = leader_decision(LeaseView("a", T0, 15, 3), "a", T0 + timedelta(seconds=5), 15)
    assert step.leader and step.write is not None and "acquireTime" not in step.write


def test_follow_a_live_leader() -> None:
    step = leader_decision(LeaseView("a", T0, 15), "b", T0 + timedelta(seconds=14), 15)
    assert not step.leader and step.write is None


def test_take_an_expired_or_released_lease() -> None:
    expired = leader_decision(LeaseView("a", T0, 15, 2), "b", T0 + timedelta(seconds=16), 15)
    released = leader_decision(LeaseView(None, T0, 15, 2), "b", T0 + timedelta(seconds=1), 15)
    for step in (expired, released):
        assert step.leader and step.write is not None
        assert step.write["holderIdentity"] == "b" and step.write["leaseTransitions"] == 3


def test_a_create_response_never_replaces_what_the_watch_delivered() -> None:
    f = Freshness()
    assert f.written("k", obj("4"), created=True)  # nothing seen yet: take it, nothing pending
    assert f.watched("k", obj("5"))
    g = Freshness()
    assert g.watched("k", obj("4")) and g.watched("k", obj("5"))
    assert not g.written("k", obj("4"), created=True)
