"""The one loop every following job runs: capture → route → sinks → a position per sink.

Invariant 3 (checkpoint after apply): a sink's position is saved only once it has applied every
change before it, and the capture resumes from the lowest position of all sinks; what a sink had
applied after its position is replayed, harmlessly (invariant 2). Transient errors (the one
classifier, `infra.clients.is_transient`) reopen the capture from there after a pause that grows;
lost history stops the job (or, where the job says so, restarts it elsewhere). Before every
(re)open the source is asked whether it still holds the last change applied (`verify_history`).
While the source does not answer, the status says `sourceUnreachable`, lag grows from the last
change applied, and a warning is logged every few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mongoferry.core.errors import HistoryLostError, MongoferryError
from mongoferry.core.events import Batch, Position
from mongoferry.infra.clients import is_transient
from mongoferry.infra.redact import redact
from mongoferry.pipeline.checkpoint import PositionStore, lowest
from mongoferry.pipeline.throttle import Throttle
from mongoferry.sinks.base import Sink
from mongoferry.source.capture import Capture, Prefetching, fingerprint, lag_seconds
from mongoferry.state.status import JobStatus

log = logging.getLogger("mongoferry.pipeline")

GIVE_UP_AFTER_S = 1800.0
READ_WAIT_S = 1.0  # a step returns after this long without a batch, so the caller stays responsive
STALLED_AFTER_S = 5.0  # no batch at all for this long: the source does not answer
WARN_EVERY_S = 5.0

Router = Callable[[Batch], dict[str, Batch]]


@dataclass
class Pipeline:
    open_capture: Callable[[Position], Capture]
    sinks: list[Sink]
    start: Position
    status: JobStatus
    stop: threading.Event
    store: PositionStore | None = None  # None: the sinks keep their own positions (Redis)
    route: Router | None = None  # None: every sink gets every batch
    verify_history: Callable[[dict[str, Any] | None], None] | None = None
    on_history_lost: Callable[[HistoryLostError], Position] | None = None  # None: stop the job
    max_batch: int = 1000
    throttle: Throttle | None = None  # the job's limit on events per second (None: no limit)
    positions: dict[str, Position | None] = field(default_factory=dict)
    last_event: dict[str, Any] | None = None
    capture: Prefetching | None = None
    _failing_since: float | None = None
    _last_batch_at: float = field(default_factory=time.monotonic)
    _last_warning: float = 0.0
    _last_event_wall: Any = None
    _lag_at_last_batch: float = 0.0

    def __post_init__(self) -> None:
        for sink in self.sinks:
            saved = self.store.load_position(sink.name) if self.store is not None else None
            self.positions.setdefault(sink.name, saved.position if saved else None)
            if saved is not None and saved.last_event is not None and (
                    self.last_event is None or saved.last_event["ts"] > self.last_event["ts"]):
                self.last_event = saved.last_event  # the newest change any sink applied
        resume = self.position.ts
        if resume.time > 0:  # until the first batch, as far behind as the position it resumes from
            self._last_event_wall = resume.as_datetime()
            self._lag_at_last_batch = lag_seconds(self._last_event_wall)
            with self.status.lock:
                self.status.lag = self._lag_at_last_batch

    @property
    def position(self) -> Position:
        """Where the capture resumes: the lowest position every sink has applied."""
        return lowest(self.positions.values(), self.start)

    # ------------------------------------------------------------------ one step
    def step(self) -> Batch:
        """Read and apply one batch (or wait up to READ_WAIT_S for one). Transient failures reopen
        the capture from the lowest applied position."""
        try:
            if self.capture is None:
                if self.verify_history is not None:
                    self.verify_history(self.last_event)
                self.capture = Prefetching(self.open_capture(self.position), self.max_batch)
            batch = self.capture.next_batch(self.max_batch, timeout=READ_WAIT_S)
            if not batch.units and not batch.idle and batch.position is None and not batch.exhausted:
                self._waiting()
                return batch
            self._apply(batch)
            self._recovered()
            return batch
        except HistoryLostError as exc:
            self.close()
            if self.on_history_lost is None:
                raise
            self.start = self.on_history_lost(exc)
            self.positions = dict.fromkeys(self.positions)
            self.last_event = None
            return Batch()
        except MongoferryError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._transient(exc)
            return Batch()

    def _apply(self, batch: Batch) -> None:
        if self.throttle is not None and (batch.units or batch.entries):
            # change events count as documents; bytes are only measured for the copy's raw batches
            self.throttle.wait(batch.events or len(batch.entries), 0, self.stop)
        routed = self.route(batch) if self.route is not None else {s.name: batch for s in self.sinks}
        for sink in self.sinks:
            part = routed.get(sink.name)
            if part is not None and (part.units or part.entries):
                sink.apply(part)
            done = sink.applied(batch.position)
            if done is not None and done != self.positions.get(sink.name):
                self.positions[sink.name] = done
                if self.store is not None:
                    self.store.save_position(sink.name, done, self._fingerprint(batch))
            sink.stats.note_applied(done, 0.0 if batch.idle else lag_seconds(self._event_wall(batch)))
        if batch.last_event is not None:
            self.last_event = fingerprint(batch.last_event)
        self._last_batch_at = time.monotonic()
        self._update_lag(batch)

    def _fingerprint(self, batch: Batch) -> dict[str, Any] | None:
        return fingerprint(batch.last_event) if batch.last_event is not None else self.last_event

    def _event_wall(self, batch: Batch) -> Any:
        event = batch.last_event
        if event is not None:  # the oplog's wall time; its cluster time where the server gives none
            self._last_event_wall = event.wall if event.wall is not None else event.position.ts.as_datetime()
        return self._last_event_wall

    def _update_lag(self, batch: Batch) -> None:
        lag = 0.0 if batch.idle else lag_seconds(self._last_event_wall)
        self._lag_at_last_batch = lag
        with self.status.lock:
            self.status.lag = lag
            self.status.sinks = {s.name: s.stats.snapshot() for s in self.sinks}

    # ------------------------------------------------------------------ the source not answering
    def _waiting(self) -> None:
        """No batch within READ_WAIT_S: the source may be slow, or gone (a read blocked on it)."""
        stalled = time.monotonic() - self._last_batch_at
        if stalled >= STALLED_AFTER_S:
            self._unreachable(f"no answer from the source for {stalled:.0f}s")

    def _transient(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        error = redact(f"{type(exc).__name__}: {exc}")
        self.status.set(errors=self.status.errors + 1, last_error=error)
        for sink in self.sinks:
            sink.stats.note_error(error)
        if now - self._failing_since > GIVE_UP_AFTER_S:
            raise exc
        self._unreachable(error)
        self.close()
        self.stop.wait(min(5.0, 0.5 + (now - self._failing_since) / 4))

    def _unreachable(self, why: str) -> None:
        """Lag keeps growing from where it stood at the last batch: the destination is that far
        behind the source's last known state, plus the time the source has not answered."""
        now = time.monotonic()
        since = self._failing_since or self._last_batch_at
        with self.status.lock:
            self.status.source_unreachable = True
            self.status.lag = self._lag_at_last_batch
            self.status.lag_growing_since = self._last_batch_at
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("the source is not answering; retrying from the last checkpoint",
                        extra={"for": round(now - since, 1), "reason": why[:300]})

    def _recovered(self) -> None:
        if self.status.source_unreachable:
            log.warning("the source answers again; replaying from the last checkpoint")
            self.status.set(source_unreachable=False, lag_growing_since=None)
        self._failing_since = None

    # ------------------------------------------------------------------ draining and closing
    def drain(self) -> None:
        """Apply everything the source has written up to now (used at commit). The capture is reopened
        from the checkpoint first, so no batch read ahead before this call can stand for 'caught up'."""
        self.close()
        while not self.stop.is_set():
            batch = self.step()
            if batch.idle or batch.exhausted:
                return

    def run_to_end(self) -> None:
        """For a finite source (oplog files): step until it is exhausted."""
        while not self.stop.is_set():
            if self.step().exhausted:
                return

    def close(self) -> None:
        if self.capture is not None:
            with contextlib.suppress(Exception):  # the connection may already be broken
                self.capture.close()
            self.capture = None

