"""The archive as a pipeline sink: the oplog, stored in chunks.

It keeps the raw entries the oplog capture read (`Batch.entries`) and cuts a chunk when the oldest
kept entry is `chunk_s` old or the chunk holds `chunk_bytes`, or when asked to reach a time (a
snapshot's end). A chunk holds the entries up to the position the pipeline handed it, never an
entry of a transaction still being assembled after it (those wait for the next chunk), so a
restart from the chunk's end reads every later entry again and none twice. The chunk is stored,
then listed in the manifest: that is this sink's checkpoint (the pipeline keeps none for it).
"""

from __future__ import annotations

import hashlib
import logging
import time

from bson import Timestamp

from mongoferry.core.events import Batch, Position
from mongoferry.infra.storage import Storage
from mongoferry.sinks.archive.layout import Compression, chunk_key, compress, encode_entry
from mongoferry.sinks.archive.manifest import COVER_EVERY_S, Chunk, Manifest
from mongoferry.sinks.base import SinkStats

log = logging.getLogger("mongoferry.backup")



class OplogArchiveSink:
    name = "archive"

    def __init__(self, storage: Storage, manifest: Manifest, compression: Compression,
                 chunk_s: float, chunk_bytes: int) -> None:
        self.storage = storage
        self.manifest = manifest
        self.compression = compression
        self.chunk_s = chunk_s
        self.chunk_bytes = chunk_bytes
        self.pending: list[tuple[Timestamp, bytes]] = []
        self.pending_bytes = 0
        self.oldest_at: float | None = None  # monotonic time the oldest pending entry arrived
        self.reach: Timestamp | None = None  # cut as soon as the handed position reaches this
        self._at_newest: set[bytes] = set()  # the entries kept at the newest pending time
        self.handed: Timestamp | None = None  # the last position the pipeline handed (never inside a txn)
        self._stats = SinkStats()
        self._last_cover = time.monotonic()
        self.chunks_written = 0
        self.bytes_written = 0

    @property
    def stats(self) -> SinkStats:
        return self._stats

    @property
    def saved(self) -> Timestamp:
        position = self.manifest.position
        assert position is not None, "a backup's manifest has its start before the capture opens"
        return position

    def apply(self, batch: Batch) -> None:
        saved = self.saved
        for entry in batch.entries:
            ts = entry["ts"]
            newest = self.pending[-1][0] if self.pending else saved
            if ts < newest or ts <= saved:
                continue  # read again after a reopen: already kept or stored
            data = encode_entry(entry)
            if ts == newest and data in self._at_newest:
                continue  # (some servers write several entries at one time: one per operation of a transaction)
            if ts != newest:
                self._at_newest = set()
            self._at_newest.add(data)
            self.pending.append((ts, data))
            self.pending_bytes += len(data)
            if self.oldest_at is None:
                self.oldest_at = time.monotonic()
        for unit in batch.units:
            for e in unit:
                self._stats.events[e.op] += 1

    def applied(self, handed: Position | None) -> Position | None:
        if handed is None or handed.ts <= self.saved:
            return Position(self.saved)
        self.handed = handed.ts
        due = (self.oldest_at is not None and time.monotonic() - self.oldest_at >= self.chunk_s) \
            or self.pending_bytes >= self.chunk_bytes or (self.reach is not None and handed.ts >= self.reach)
        if due and any(ts <= handed.ts for ts, _ in self.pending):
            self.cut(handed.ts)
        elif (not self.pending and time.monotonic() - self._last_cover >= COVER_EVERY_S) or (
                not self.pending and self.reach is not None and handed.ts >= self.reach):
            self.cover(handed.ts)
        elif time.monotonic() - self._last_cover >= COVER_EVERY_S:
            self.manifest.save(self.storage)  # entries pending, no chunk due yet: a heartbeat (retention waits)
            self._last_cover = time.monotonic()
        return Position(self.saved)

    def cut(self, until: Timestamp) -> None:
        """Store the pending entries up to `until` as one chunk, then list it."""
        entries = [(ts, data) for ts, data in self.pending if ts <= until]
        rest = [(ts, data) for ts, data in self.pending if ts > until]
        body = b"".join(data for _, data in entries)
        stored = compress(body, self.compression)
        key = chunk_key(entries[0][0], entries[-1][0], self.compression)
        self.storage.put(key, stored)
        chunk = Chunk(key=key, after=self.saved, until=until, first=entries[0][0], last=entries[-1][0],
                      entries=len(entries), bytes=len(stored), sha256=hashlib.sha256(stored).hexdigest())
        self.manifest.add_chunk(chunk)
        self.manifest.save(self.storage)
        self.pending = rest
        self.pending_bytes = sum(len(d) for _, d in rest)
        self.oldest_at = time.monotonic() if rest else None
        self.chunks_written += 1
        self.bytes_written += len(stored)
        self._last_cover = time.monotonic()
        log.debug("oplog chunk stored", extra={"key": key, "entries": len(entries), "bytes": len(stored)})

    def flush(self) -> None:
        """Store every pending entry up to the last handed position (a stop, or --once)."""
        if self.handed is not None and any(ts <= self.handed for ts, _ in self.pending):
            self.cut(self.handed)
        elif self.handed is not None and not self.pending:
            self.cover(self.handed)

    def cover(self, until: Timestamp) -> None:
        """Nothing was written up to `until`: say so in the manifest, as an empty span extended while
        the source stays idle (it keeps the chunk list contiguous, and an idle source restorable)."""
        with self.manifest.lock:
            last = self.manifest.chunks[-1] if self.manifest.chunks else None
            if until <= (last.until if last is not None else self.saved):
                return
            if last is not None and last.entries == 0:
                last.until = until
            else:
                self.manifest.chunks.append(Chunk(key="", after=self.saved, until=until, first=until, last=until,
                                                  entries=0, bytes=0, sha256=""))
            self.manifest.covered = until
        self.manifest.save(self.storage)
        self._last_cover = time.monotonic()

    def close(self) -> None:
        pass
