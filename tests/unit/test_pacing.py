"""Windows, replication lag and latency backoff of background jobs (pure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from bson import json_util

from mongoferry.core.errors import UsageError
from mongoferry.core.pacing import (
    LatencyGuard,
    delayed_members,
    parse_window,
    replication_lag,
    seconds_until_open,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "replset"


def at(hh: int, mm: int, ss: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, 6, hh, mm, ss, tzinfo=dt.UTC)


def test_inside_a_window_runs_at_once() -> None:
    assert seconds_until_open([parse_window("01:00-05:00")], at(3, 0)) == 0.0
    assert seconds_until_open([], at(12, 0)) == 0.0, "no window: any time"


def test_outside_waits_for_the_next_opening() -> None:
    assert seconds_until_open([parse_window("01:00-05:00")], at(0, 30)) == 30 * 60
    assert seconds_until_open([parse_window("01:00-05:00")], at(5, 0)) == 20 * 3600, "the end is exclusive"
    both = [parse_window("01:00-02:00"), parse_window("13:00-14:00")]
    assert seconds_until_open(both, at(3, 0, 30)) == 10 * 3600 - 30


def test_window_across_midnight() -> None:
    w = [parse_window("22:00-06:00")]
    assert seconds_until_open(w, at(23, 59)) == 0.0
    assert seconds_until_open(w, at(5, 59)) == 0.0
    assert seconds_until_open(w, at(6, 0)) == 16 * 3600
    assert str(w[0]) == "22:00-06:00"


@pytest.mark.parametrize("text", ["22-06", "25:00-01:00", "10:61-11:00", "10:00-10:00", "", "10:00"])
def test_bad_windows_are_one_clear_problem(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_window(text)
    assert err.value.one_line().startswith(f"--window {text!r}")


def test_lag_is_the_slowest_healthy_secondary() -> None:
    status = json_util.loads((FIXTURES / "status_three_members.json").read_text())
    # db2 is 35 s behind; db3 is down (not replicating) and the arbiter holds no data
    assert replication_lag(status) == 35.0


def test_a_member_delayed_on_purpose_is_not_waited_for() -> None:
    status = json_util.loads((FIXTURES / "status_three_members.json").read_text())
    config = json_util.loads((FIXTURES / "config_delayed_member.json").read_text())  # db2: secondaryDelaySecs 3600
    assert delayed_members(config) == {2}
    assert replication_lag(status, delayed_members(config)) == 2.0  # db1 is 2 s behind
    assert delayed_members({"config": {"members": [{"_id": 0, "slaveDelay": 60}]}}) == {0}  # before 5.0


def test_no_secondaries_no_lag() -> None:
    now = dt.datetime(2026, 1, 1)
    assert replication_lag({"members": [{"state": 1, "health": 1, "optimeDate": now}]}) == 0.0
    assert replication_lag({}) == 0.0
    assert replication_lag({"members": [{"state": 2, "health": 1, "optimeDate": now}]}) == 0.0, "no primary"


def test_latency_guard_backs_off_while_latency_stays_high() -> None:
    g = LatencyGuard(factor=4.0, floor_s=0.05, max_pause_s=8.0)
    for _ in range(10):
        assert g.observe(0.02) == 0.0
    assert g.observe(0.03) == 0.0, "a little slower is normal"
    assert g.observe(0.06) == 0.0, "4x the baseline is 0.08"
    assert [g.observe(0.5) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert g.observe(0.02) == 0.0
    assert g.observe(0.5) == 1.0, "a new rise starts again at 1 s"


def test_latency_guard_ignores_rises_below_the_floor() -> None:
    g = LatencyGuard(factor=4.0, floor_s=0.05)
    g.observe(0.001)
    assert g.observe(0.04) == 0.0, "40x, but a 40 ms read hurts nobody"
