"""The throttle's arithmetic: a rate held on average, no burst after a pause, limits changed at runtime."""

from __future__ import annotations

from mongoferry.pipeline.throttle import Throttle


def test_no_limit_never_waits() -> None:
    t = Throttle()
    assert not t.active
    assert t.delay(10_000, 10**9, now=1.0) == 0.0


def test_the_documents_rate_holds_on_average() -> None:
    t = Throttle(max_docs_per_s=100)
    t._last = 0.0
    now, waited = 0.0, 0.0
    for _ in range(50):  # 50 batches of 10 documents: 500 documents take 5 s at 100/s
        pause = t.delay(10, 0, now)
        waited += pause
        now += pause
    assert 4.8 <= now <= 5.0


def test_a_pause_is_not_followed_by_a_burst() -> None:
    t = Throttle(max_docs_per_s=100)
    t._last = 0.0
    assert t.delay(100, 0, now=1000.0) == 0.0  # one second of budget at most, however long the pause
    assert t.delay(100, 0, now=1000.0) == 1.0


def test_the_bytes_limit_applies_too_and_the_stricter_wins() -> None:
    t = Throttle(max_docs_per_s=1000, max_bytes_per_s=1000)
    t._last = 0.0
    assert t.delay(1, 3000, now=0.0) == 3.0


def test_limits_change_while_running() -> None:
    t = Throttle(max_docs_per_s=10)
    t._last = 0.0
    t.set_limits(None, None)
    assert not t.active
    t.set_limits(1000, None)
    assert t.delay(500, 0, now=0.0) == 0.5
