"""What every sink is to the pipeline: it applies batches, says how far it has applied, and counts.

A sink applies what the pipeline hands it, in order. A synchronous sink (MongoDB) has applied a
batch when `apply` returns; an asynchronous one (Redis: a queue per server) acknowledges later,
and `applied` says up to where. The pipeline saves, per sink, the position it has applied, and
resumes the capture from the lowest of them (invariant 3); every sink replays idempotently.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bson.raw_bson import RawBSONDocument

from mongoferry.core.events import Batch, Position
from mongoferry.core.model import CollectionSpec


@dataclass
class SinkStats:
    """Per-sink counters for /api/v1/progress and /metrics."""

    events: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    last_error: str | None = None
    lag_s: float = 0.0
    position: Position | None = None
    applied_at: float | None = None  # monotonic time of the last applied batch
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note_applied(self, position: Position | None, lag_s: float) -> None:
        with self.lock:
            if position is not None:
                self.position = position
            self.lag_s = lag_s
            self.applied_at = time.monotonic()

    def note_error(self, error: str) -> None:
        with self.lock:
            self.errors += 1
            self.last_error = error

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            pos = self.position
            return {"events": int(sum(self.events.values())), "byType": dict(self.events),
                    "lagSeconds": round(self.lag_s, 3), "errors": self.errors, "lastError": self.last_error,
                    "position": f"{pos.ts.time}:{pos.ts.inc}" if pos is not None else None}


class Sink(Protocol):
    name: str

    @property
    def stats(self) -> SinkStats: ...

    def apply(self, batch: Batch) -> None: ...

    def applied(self, handed: Position | None) -> Position | None:
        """How far this sink has applied, given that everything up to `handed` was handed to it."""
        ...

    def close(self) -> None: ...


class CopySink(Protocol):
    """Where a copy writes (`pipeline/copier.py`): a MongoDB destination (`sinks/mongo.MongoWriter`)
    today, an archive next. Each call is idempotent, so a resumed copy may repeat any of them."""

    def create(self, dst_ns: str, spec: CollectionSpec, view_on: str | None = None) -> None:
        """Prepare a namespace: the collection with its options (or a view); an existing one is kept."""

    def drop(self, dst_ns: str) -> None:
        """Forget a namespace (a copy started again, or --drop-dst)."""

    def insert_copied(self, dst_ns: str, docs: list[RawBSONDocument]) -> None:
        """Write one raw batch as read; a document already written (a resumed range) ends as this one."""

    def create_indexes(self, dst_ns: str, specs: Sequence[dict[str, Any]]) -> None:
        """Finish a namespace: its secondary indexes, once its documents are written."""
