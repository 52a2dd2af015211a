"""One Redis server as a pipeline sink: formatted publications go to its publisher's queue, and what
Redis accepted is the sink's position (the publisher also stores it in Redis, as OTR does)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bson import json_util

from mongoferry.core.events import Batch, Position
from mongoferry.sinks.base import SinkStats
from mongoferry.sinks.redis.format import Publication
from mongoferry.sinks.redis.publisher import Outgoing, RedisPublisher


@dataclass(frozen=True)
class Formatted:
    """What one source document becomes, formatted once for every Redis (an event's `raw`)."""

    publications: list[Publication]
    written_at: float  # epoch seconds of the MongoDB write
    resume_token: str | None  # extended JSON, when a restart may resume right after this event


class RedisSink:
    def __init__(self, publisher: RedisPublisher, stop: threading.Event) -> None:
        self.publisher = publisher
        self.stop = stop
        self.name = f"redis{publisher.target.index}"
        self.stats = SinkStats()

    def apply(self, batch: Batch) -> None:
        for unit in batch.units:
            for event in unit:
                formatted: Formatted = event.raw
                for p in formatted.publications:
                    if not self.publisher.put(Outgoing(p, formatted.written_at, formatted.resume_token), self.stop):
                        return  # stopping, or the publisher died (the job notices)
                self.stats.events["published"] += len(formatted.publications)

    def applied(self, handed: Position | None) -> Position | None:
        accepted = self.publisher.accepted
        if accepted is None:
            return None
        ts, index, token = accepted
        return Position(ts, index, dict(json_util.loads(token)) if token else None)

    def close(self) -> None:
        pass
