"""The manifest: what a backup holds, and the times it can restore to (pure, apart from load/save).

Invariants (tested in tests/unit/test_backup_manifest.py):
- a chunk or snapshot file is listed only after it is completely stored (put first, list after);
- chunk i covers the oplog from after `after` to `until`, both inclusive of nothing outside:
  (after, until]; chunk i+1 starts where chunk i ends (`after == until` of the one before), so a
  gap is a pair of neighbours whose bounds do not meet, and is reported with its bounds;
- an idle source's span is an empty chunk (no key, no entries), extended while it stays idle;
- a snapshot is restorable once its copy ended (`end`) and the oplog is covered past `end`; it
  restores any time from `end` to the end of the contiguous coverage that starts at or before `start`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp

from mongoferry.infra.storage import Storage
from mongoferry.sinks.archive.layout import MANIFEST, Compression, dumps, loads, ts_text

FORMAT = "mongoferry-backup/1"
COVER_EVERY_S = 5.0  # a running backup saves the manifest at least this often (sinks/archive/oplog.py)


@dataclass
class Chunk:
    key: str
    after: Timestamp
    until: Timestamp
    first: Timestamp
    last: Timestamp
    entries: int
    bytes: int
    sha256: str

    def to_doc(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Chunk:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass
class Snapshot:
    id: str
    start: Timestamp
    state: str = "copying"  # copying → complete, or abandoned
    end: Timestamp | None = None  # when the copy finished; restorable from here once covered
    namespaces: int = 0
    documents: int = 0
    bytes: int = 0
    reason: str | None = None  # why it was abandoned
    started: float | None = None  # when the backup began it (Unix time; absent in older manifests)

    def to_doc(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Snapshot:
        fields: dict[str, Any] = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)


@dataclass
class Range:
    """Times a restore can reach from one snapshot: `start`..`end`, both inclusive."""

    snapshot: Snapshot
    start: Timestamp
    end: Timestamp
    chunks: list[Chunk]

    def describe(self) -> str:
        return f"{ts_text(self.start)} to {ts_text(self.end)}"


@dataclass
class Gap:
    after: Timestamp
    until: Timestamp

    def describe(self) -> str:
        return f"between {ts_text(self.after)} and {ts_text(self.until)}"


@dataclass
class Manifest:
    source: dict[str, Any]
    compression: Compression
    selection: dict[str, Any] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    start: Timestamp | None = None  # where the oplog archive begins: the first snapshot's start
    covered: Timestamp | None = None  # the oplog is archived up to here
    chunk_s: float = 60.0  # the writing backup's --chunk: it saves at least this often while running
    heartbeat: float | None = None  # wall time of the last save by a running backup
    stopped_at: float | None = None  # wall time of a clean stop (None while running, or after a kill)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _saving: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # ------------------------------------------------------------------ storage
    def to_doc(self) -> dict[str, Any]:
        return {"format": FORMAT, "source": self.source, "compression": self.compression,
                "selection": self.selection, "start": self.start, "covered": self.covered,
                "chunkSeconds": self.chunk_s, "heartbeat": self.heartbeat, "stoppedAt": self.stopped_at,
                "snapshots": [s.to_doc() for s in self.snapshots], "chunks": [c.to_doc() for c in self.chunks]}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Manifest:
        return cls(source=d.get("source", {}), compression=d.get("compression", "gzip"),
                   selection=d.get("selection", {}), start=d.get("start"), covered=d.get("covered"),
                   chunk_s=float(d.get("chunkSeconds", 60.0)), heartbeat=d.get("heartbeat"),
                   stopped_at=d.get("stoppedAt"),
                   snapshots=[Snapshot.from_doc(s) for s in d.get("snapshots", [])],
                   chunks=[Chunk.from_doc(c) for c in d.get("chunks", [])])

    @classmethod
    def load(cls, storage: Storage) -> Manifest | None:
        data = storage.get(MANIFEST)
        if data is None:
            return None
        doc = loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"{MANIFEST} is not a mongoferry backup manifest (format {doc.get('format')!r})")
        return cls.from_doc(doc)

    def save(self, storage: Storage, running: bool | None = True) -> None:
        """Store it: by the running backup (a heartbeat), at its clean stop (`running=False`: no
        heartbeat, so retention need not wait), or by another command (`None`: both left as they are).
        Saves land in the order they were made (one at a time, serialized and stored together)."""
        with self._saving:
            with self.lock:
                now = time.time()
                if running is not None:
                    self.heartbeat, self.stopped_at = (now, None) if running else (None, now)
                data = dumps(self.to_doc())
            storage.put(MANIFEST, data)

    def busy_for(self) -> float:
        """How long after its last save a running backup may go before it saves again."""
        return max(3 * min(self.chunk_s, COVER_EVERY_S * 2), 30.0)

    # ------------------------------------------------------------------ changes
    def add_chunk(self, chunk: Chunk) -> None:
        with self.lock:
            self.chunks.append(chunk)
            if self.covered is None or chunk.until > self.covered:
                self.covered = chunk.until

    def snapshot(self, snapshot_id: str) -> Snapshot | None:
        return next((s for s in self.snapshots if s.id == snapshot_id), None)

    @property
    def position(self) -> Timestamp | None:
        """Where the oplog archive resumes: after the last chunk (entries after it are not stored)."""
        if self.chunks:
            return self.chunks[-1].until
        return self.start

    # ------------------------------------------------------------------ what can be restored
    def gaps(self) -> list[Gap]:
        out = []
        for before, after in zip(self.chunks, self.chunks[1:], strict=False):
            if after.after != before.until:
                out.append(Gap(before.until, after.after))
        return out

    def ranges(self) -> list[Range]:
        """One range per complete snapshot the archived oplog covers past its end."""
        out = []
        for snap in self.snapshots:
            if snap.state != "complete" or snap.end is None:
                continue
            run = self._coverage_from(snap.start)
            if run is None:
                continue
            chunks, until = run
            if until >= snap.end:
                out.append(Range(snap, snap.end, until, chunks))
        return out

    def _coverage_from(self, start: Timestamp) -> tuple[list[Chunk], Timestamp] | None:
        """The chunks covering the oplog contiguously from `start` on, and how far they reach."""
        tail = self.chunks[-1].until if self.chunks else self.start
        if tail is not None and start >= tail:  # after the last chunk: covered while the source was idle
            return ([], self.covered) if self.covered is not None and self.covered >= start else None
        first = next((i for i, c in enumerate(self.chunks) if c.after <= start < c.until), None)
        if first is None:
            return None
        run = [self.chunks[first]]
        for chunk in self.chunks[first + 1:]:
            if chunk.after != run[-1].until:
                break
            run.append(chunk)
        until = run[-1].until
        if run[-1] is self.chunks[-1] and self.covered is not None and self.covered > until:
            until = self.covered  # idle since the last chunk
        return run, until

    def plan(self, target: Timestamp | None) -> Range:
        """The range a restore to `target` (None: the latest time) uses; ValueError says why none does."""
        ranges = self.ranges()
        if not ranges:
            raise ValueError("the backup holds no restorable snapshot yet (the first snapshot is not complete, "
                             "or its oplog is not archived past its end)")
        if target is None:  # the latest time archived; a gap before it is refused, not skipped quietly
            target = self.covered or max(r.end for r in ranges)
        usable = [r for r in ranges if r.start <= target <= r.end]
        if usable:
            return max(usable, key=lambda r: r.start)  # the newest snapshot: the least to replay
        gaps = [g for g in self.gaps() if any(r.end <= g.after for r in ranges) and g.after < target]
        if gaps:  # a snapshot before the gap would need the oplog across it
            raise ValueError(f"restoring to {ts_text(target)} would cross a gap in the oplog archive "
                             f"{gaps[-1].describe()}")
        spans = "; ".join(r.describe() for r in sorted(ranges, key=lambda r: r.start))
        raise ValueError(f"{ts_text(target)} is outside the restorable range ({spans})")
