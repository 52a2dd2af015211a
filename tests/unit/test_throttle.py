"""The throttle's arithmetic: a rate held on average, no burst after a pause, limits changed at runtime."""

from __future__ import annotations

import threading

import pytest
from bson import Int64

from mongoferry.core.pacing import mean_op_latency_ms
from mongoferry.pipeline.throttle import Throttle, source_verdict


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


def _op_latencies(read_us: int, reads: int, write_us: int, writes: int) -> dict[str, object]:
    """serverStatus's opLatencies as MongoDB writes it (running totals: microseconds and operations)."""
    return {"opLatencies": {"reads": {"latency": Int64(read_us), "ops": Int64(reads),
                                      "queryableEncryptionLatencyMicros": Int64(0)},
                            "writes": {"latency": Int64(write_us), "ops": Int64(writes)},
                            "commands": {"latency": Int64(9_000_000), "ops": Int64(10)},
                            "transactions": {"latency": Int64(0), "ops": Int64(0)}}}


def test_the_source_latency_is_the_mean_of_its_reads_and_writes_between_two_samples() -> None:
    before = _op_latencies(1_000_000, 1000, 2_000_000, 500)
    after = _op_latencies(1_300_000, 1100, 2_900_000, 600)  # 200 ops took 1.2 s: 6 ms each
    assert mean_op_latency_ms(before, after) == pytest.approx(6.0)
    assert mean_op_latency_ms(before, before) is None  # nothing ran
    assert mean_op_latency_ms(after, before) is None  # restarted: its totals went down
    assert mean_op_latency_ms({}, {"ok": 1}) is None  # a server without opLatencies


def test_the_source_verdict_names_the_limit_passed() -> None:
    assert source_verdict(20.0, None, 35.0, None) == "source-latency"
    assert source_verdict(20.0, None, 5.0, None) is None
    assert source_verdict(None, 10.0, 99.0, 12.0) == "replication-lag"
    assert source_verdict(20.0, 10.0, None, None) is None  # not known: nothing held
    assert source_verdict(None, None, 1e9, 1e9) is None  # not asked


class _Health:
    """How a source looks, as a fixed answer (the sampling against a server is tested in integration)."""

    def __init__(self, latency_ms: float | None) -> None:
        self.latency_ms: float | None = latency_ms
        self.lag_s: float | None = None
        self.samples = 0

    def sample(self, latency: bool, lag: bool) -> None:
        self.samples += 1
        if self.samples >= 3:
            self.latency_ms = 1.0  # the source recovers


def test_a_batch_waits_while_the_source_is_slow_and_the_time_is_counted_by_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mongoferry.pipeline.throttle.HOLD_STEP_S", 0.01)
    health = _Health(latency_ms=50.0)
    t = Throttle(max_source_latency_ms=10.0, health=health)
    assert t.active and t.watching
    t.wait(100, 0, threading.Event())
    assert health.samples == 3
    assert t.waited_s["source-latency"] == pytest.approx(0.02)
    assert t.describe()["throttledSecondsBy"]["source-latency"] == pytest.approx(0.02)
    assert t.describe()["holdingFor"] is None
    t.set_source_limits(None, None)
    assert not t.active


def test_an_unreadable_source_measure_is_said_once_and_blames_the_role_only_when_denied(
        caplog: pytest.LogCaptureFixture) -> None:
    from typing import Any, cast

    from pymongo.errors import NetworkTimeout, OperationFailure

    from mongoferry.pipeline.source_health import SourceHealth

    health = SourceHealth()

    def slow(i: int, client: Any) -> float:
        raise NetworkTimeout("timed out reading from db.example:27017")

    def denied(i: int, client: Any) -> float:
        raise OperationFailure("not authorized on admin to execute command { serverStatus: 1 }", code=13)

    with caplog.at_level("WARNING", logger="mongoferry"):
        assert health._measure("latency", slow, 0, cast(Any, None)) is None
        assert health._measure("latency", slow, 0, cast(Any, None)) is None
        assert health._measure("lag", denied, 0, cast(Any, None)) is None
    first, second = (r.getMessage() for r in caplog.records)
    assert "timed out reading from db.example:27017" in first and "clusterMonitor" not in first
    assert "not authorized" in second and "the user needs the clusterMonitor role" in second
