"""Invariant 3 on the Pipeline itself, without servers: a position per sink, resume from the lowest.

The capture here is an in-memory list of events (the pipeline's input, not a stand-in for a server);
the sinks record what they were handed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from bson.timestamp import Timestamp
from pymongo.errors import AutoReconnect

from mongoferry.core.events import Batch, ChangeEvent, Position
from mongoferry.pipeline.loop import Pipeline
from mongoferry.sinks.base import SinkStats
from mongoferry.state.status import JobStatus


def pos(i: int) -> Position:
    return Position(Timestamp(1_700_000_000 + i, 1))


def event(i: int) -> ChangeEvent:
    return ChangeEvent(op="insert", ns="app.c", position=pos(i), doc_id=i, has_id=True, document={"_id": i})


@dataclass
class ListCapture:
    """Events 1..n after `start`, two per batch; can fail once after a number of batches."""

    start: Position
    n: int
    fail_after: int | None = None
    batches: int = 0

    def next_batch(self, max_events: int) -> Batch:
        if self.fail_after is not None and self.batches == self.fail_after:
            self.fail_after = None
            raise AutoReconnect("connection reset")
        self.batches += 1
        after = [i for i in range(1, self.n + 1) if pos(i) > self.start][:2]
        if not after:
            return Batch(idle=True, position=self.start)
        self.start = pos(after[-1])
        return Batch(units=[[event(i)] for i in after], position=self.start)

    def close(self) -> None:
        pass


@dataclass
class RecordingSink:
    name: str
    ack_up_to: int | None = None  # None: everything handed is applied (a synchronous sink)
    seen: list[int] = field(default_factory=list)
    _stats: SinkStats = field(default_factory=SinkStats)

    @property
    def stats(self) -> SinkStats:
        return self._stats

    def apply(self, batch: Batch) -> None:
        self.seen.extend(e.doc_id for unit in batch.units for e in unit)

    def applied(self, handed: Position | None) -> Position | None:
        if self.ack_up_to is None or handed is None:
            return handed
        return min(handed, pos(self.ack_up_to))

    def close(self) -> None:
        pass


def run(sinks: list[RecordingSink], n: int, positions: dict[str, Position | None] | None = None,
        fail_after: int | None = None) -> tuple[Pipeline, list[Position]]:
    opened: list[Position] = []
    fail = [fail_after]

    def open_capture(start: Position) -> ListCapture:
        opened.append(start)
        capture = ListCapture(start, n, fail[0])
        fail[0] = None
        return capture

    pipeline = Pipeline(open_capture=open_capture, sinks=list(sinks), start=pos(0), status=JobStatus(),
                        stop=threading.Event(), positions=dict(positions or {}))
    for _ in range(50):
        if pipeline.step().idle:
            break
    pipeline.close()
    return pipeline, opened


def test_each_sink_keeps_its_own_position_and_the_capture_resumes_from_the_lowest() -> None:
    fast, slow = RecordingSink("fast"), RecordingSink("slow", ack_up_to=3)
    pipeline, opened = run([fast, slow], n=6)
    assert fast.seen == slow.seen == [1, 2, 3, 4, 5, 6]
    assert pipeline.positions == {"fast": pos(6), "slow": pos(3)}
    assert pipeline.position == pos(3), "the lowest position every sink has applied"
    assert opened == [pos(0)]


def test_a_restart_replays_from_the_lowest_so_a_sink_that_was_behind_misses_nothing() -> None:
    fast, slow = RecordingSink("fast"), RecordingSink("slow")
    pipeline, opened = run([fast, slow], n=6, positions={"fast": pos(5), "slow": pos(2)})
    assert opened == [pos(2)]
    assert slow.seen == [3, 4, 5, 6], "everything after its own position"
    assert fast.seen == [3, 4, 5, 6], "replayed from the lowest: harmless to an idempotent sink"
    assert pipeline.positions == {"fast": pos(6), "slow": pos(6)}


def test_a_new_sink_starts_from_the_start_position() -> None:
    old, new = RecordingSink("old"), RecordingSink("new")
    _, opened = run([old, new], n=3, positions={"old": pos(3)})
    assert opened == [pos(0)] and new.seen == [1, 2, 3]


def test_a_transient_failure_reopens_the_capture_from_the_lowest_applied_position() -> None:
    fast, slow = RecordingSink("fast"), RecordingSink("slow", ack_up_to=1)
    pipeline, opened = run([fast, slow], n=4, fail_after=1)
    assert opened == [pos(0), pos(1)], "reopened where the slow sink had got to"
    assert slow.seen == [1, 2, 2, 3, 4]
    assert pipeline.status.errors == 1 and "AutoReconnect" in (pipeline.status.last_error or "")
    assert fast.stats.snapshot()["errors"] == 1


def test_a_route_hands_each_sink_only_its_part_and_every_position_still_advances() -> None:
    even, odd = RecordingSink("even"), RecordingSink("odd")

    def route(batch: Batch) -> dict[str, Batch]:
        parts = {"even": Batch(position=batch.position), "odd": Batch(position=batch.position)}
        for unit in batch.units:
            parts["even" if unit[0].doc_id % 2 == 0 else "odd"].units.append(unit)
        return parts

    pipeline = Pipeline(open_capture=lambda start: ListCapture(start, 5), sinks=[even, odd], start=pos(0),
                        status=JobStatus(), stop=threading.Event(), route=route)
    while not pipeline.step().idle:
        pass
    assert even.seen == [2, 4] and odd.seen == [1, 3, 5]
    assert pipeline.positions == {"even": pos(5), "odd": pos(5)}


@pytest.mark.parametrize("lag_before", [0.0, 7.5])
def test_lag_grows_while_the_source_does_not_answer_even_if_nothing_updates_it(lag_before: float) -> None:
    status = JobStatus()
    status.set(lag=lag_before, source_unreachable=True, lag_growing_since=0.0)
    first = status.snapshot()["lagTimeSeconds"]
    assert first > lag_before and status.can_commit() is False
    status.set(source_unreachable=False, lag_growing_since=None)
    assert status.snapshot()["lagTimeSeconds"] == lag_before


def test_before_its_first_batch_a_resumed_pipeline_is_as_far_behind_as_its_position() -> None:
    """A restart long after the last checkpoint must not show lag 0 (and so canCommit) until the
    first batch is applied."""
    status = JobStatus()
    status.set(copy_done=True, state="CATCHING_UP")
    an_hour_ago = Timestamp(int(time.time()) - 3600, 1)
    Pipeline(open_capture=lambda start: ListCapture(start, 5), sinks=[], start=Position(an_hour_ago),
             status=status, stop=threading.Event())
    assert 3590 < status.current_lag() < 3700
    assert not status.can_commit()
