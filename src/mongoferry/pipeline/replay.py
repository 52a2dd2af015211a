"""The replay loop: read → map → apply → checkpoint, until committed or stopped.

Invariant (checkpoint after apply): a position is saved only once every event
before it has been applied, so a restart from it loses nothing; replaying what
was applied after it is harmless (idempotent apply).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo.errors import ConnectionFailure, OperationFailure

from mongoferry.core.errors import MongoferryError
from mongoferry.core.events import Position
from mongoferry.sinks.mongo_apply import Applier
from mongoferry.source.capture import Batch, Capture, Prefetching, lag_seconds
from mongoferry.state.meta import MetaStore
from mongoferry.state.status import SyncStatus

log = logging.getLogger("mongoferry.replay")

TRANSIENT_CODES = {91, 189, 10107, 11600, 11602, 13435, 13436, 262}  # shutdowns, stepdowns, not primary
GIVE_UP_AFTER_S = 1800.0


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailure):
        return True
    return isinstance(exc, OperationFailure) and (
        exc.code in TRANSIENT_CODES or exc.has_error_label("ResumableChangeStreamError")
        or exc.has_error_label("RetryableWriteError"))


class Replayer:
    def __init__(self, open_capture: Callable[[Position], Capture], applier: Applier, meta: MetaStore,
                 status: SyncStatus, stop: threading.Event, start: Position, checkpoint_id: str = "dst",
                 max_batch: int = 1000) -> None:
        self.open_capture = open_capture
        self.applier = applier
        self.meta = meta
        self.status = status
        self.stop = stop
        self.position = start
        self.checkpoint_id = checkpoint_id
        self.max_batch = max_batch
        self.capture: Capture | None = None
        self._failing_since: float | None = None
        self._last_event_wall: Any = None

    def step(self) -> Batch:
        """Read and apply one batch; checkpoint after it. Transient failures reopen from the checkpoint."""
        try:
            if self.capture is None:
                self.capture = Prefetching(self.open_capture(self.position), self.max_batch)
            batch = self.capture.next_batch(self.max_batch)
            if batch.units:
                self.applier.apply(batch.units)
            if batch.position is not None:
                self.meta.save_position(self.checkpoint_id, batch.position)
                self.position = batch.position
            self._failing_since = None
            self._update_lag(batch)
            return batch
        except MongoferryError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._transient(exc)
            return Batch()

    def _transient(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        self.status.set(errors=self.status.errors + 1, last_error=f"{type(exc).__name__}: {exc}")
        if now - self._failing_since > GIVE_UP_AFTER_S:
            raise exc
        log.warning("connection problem; resuming from the last checkpoint",
                    extra={"error": type(exc).__name__, "retryingFor": round(now - self._failing_since, 1)})
        if self.capture is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self.capture.close()
        self.capture = None
        self.stop.wait(min(5.0, 0.5 + (now - self._failing_since) / 4))

    def _update_lag(self, batch: Batch) -> None:
        if batch.units:
            self._last_event_wall = batch.units[-1][-1].wall
        lag = 0.0 if batch.idle else lag_seconds(self._last_event_wall)
        with self.status.lock:
            self.status.lag = lag
            self.status.events = self.applier.stats.counts.copy()

    def drain(self) -> None:
        """Apply everything the source has written up to now (used at commit). The capture is reopened
        from the checkpoint first, so no batch read ahead before this call can stand for 'caught up'."""
        self.close()
        while not self.stop.is_set():
            if self.step().idle:
                return

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
            self.capture = None
