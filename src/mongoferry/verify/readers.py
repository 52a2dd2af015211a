"""The verifier's change readers: one change stream per side, every touched ``_id`` queued for
a recheck in the next generation, the resume token saved after the queue entries it covers."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol, cast

from bson import Binary, Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from mongoferry.core.errors import HistoryLostError
from mongoferry.core.events import Position
from mongoferry.core.model import utc_now
from mongoferry.infra.clients import Client, connect
from mongoferry.infra.config import VerifySettings
from mongoferry.source.capture import current_time, next_change, open_change_stream
from mongoferry.verify.compare import id_key_from_raw_document

log = logging.getLogger("mongoferry.verify")

READER_FLUSH_S: Final = 0.5
READER_BATCH: Final = 500
EVENT_KINDS: Final = ("insert", "update", "replace", "delete", "create", "modify", "createIndexes",
                      "dropIndexes", "shardCollection", "reshardCollection", "refineCollectionShardKey")
CRUD: Final = frozenset({"insert", "update", "replace", "delete"})


def writes_off_time(client: Client) -> Timestamp:
    """A cluster time after every write acknowledged so far. MongoDB: the time of an oplog note
    written now (``appendOplogNote``), so no user event can share it; where that command is not
    available (or not allowed), the latest cluster time."""
    try:
        reply = client.admin.command("appendOplogNote", data={"mongoferry": "verify writesOff"})
    except OperationFailure:
        return current_time(client)
    ts = reply.get("operationTime")
    return ts if isinstance(ts, Timestamp) else current_time(client)


def token_timestamp(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time of a MongoDB resume token: its KeyString ``_data`` starts with the
    Timestamp type byte 0x82 and the time and increment as big-endian 32-bit numbers. None for
    other servers' (opaque) tokens."""
    data = token.get("_data") if token is not None else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


class ReaderHost(Protocol):
    """What a change reader needs of the verifier: its settings and state collection, the
    recheck queue, and the writes-off target it drains to."""

    s: VerifySettings
    states: Collection[dict[str, Any]]
    gen_lock: threading.Lock
    generation: int

    def enqueue(self, entries: list[tuple[int, str, str, Any, dt.datetime | None]],
                changed: dt.datetime | None = None) -> None: ...
    def adopt(self, side: str, ns: str) -> None: ...
    def dst_of(self, src_ns: str) -> str: ...
    def fail(self, error: str) -> None: ...
    def writes_off_target(self, side: str) -> tuple[Timestamp, float] | None: ...


class ChangeReader:
    """Tails one side's change stream and queues every touched ``_id`` for a recheck."""

    def __init__(self, verifier: ReaderHost, side: str, uri: str, mapping: dict[str, str]) -> None:
        self.verifier = verifier
        self.side = side  # "src" | "dst"
        self.uri = uri
        self.mapping = mapping  # this side's namespace -> source namespace
        self.doc_id = f"reader:{side}"
        self.client: Client | None = None
        self.stream: Any = None
        self.counts: dict[str, int] = dict.fromkeys((*EVENT_KINDS, "other"), 0)
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.drained = threading.Event()
        self.last_ts: Timestamp | None = None
        self.lag_s: float | None = None  # behind the server at the last read (None: not read yet)
        self.empty_after_off = 0  # consecutive empty reads after the writes-off moment
        self.last_event_at = time.monotonic()
        # Events per second of the last minute, as [second, count] buckets (read by the HTTP thread).
        self.window: collections.deque[list[int]] = collections.deque()
        self.window_lock = threading.Lock()
        self.pending: dict[tuple[str, Any], None] = {}

    # -- opening ------------------------------------------------------------------------

    def _connect(self) -> Client:
        if self.client is None:
            self.client = connect(self.uri, f"{'source' if self.side == 'src' else 'destination'} change stream",
                                  self.verifier.s.connect_timeout, document_class=RawBSONDocument)
        return self.client

    def _watch(self, start: Position) -> Any:
        excluded = ["admin", "config", "local", self.verifier.s.meta_db]
        return open_change_stream(self._connect(), start, pipeline=[{"$match": {"ns.db": {"$nin": excluded}}}],
                                  await_ms=250, batch_size=READER_BATCH)

    def open_fresh(self) -> None:
        """Open at the current time and save the position at once (before any comparison)."""
        start = current_time(self._connect())
        self.stream = self._watch(Position(start))
        token = self.stream.resume_token
        self.verifier.states.replace_one({"_id": self.doc_id}, {
            "_id": self.doc_id, "ts": start, "token": dict(token) if token is not None else None,
            "counts": self.counts, "saved": utc_now()}, upsert=True)
        self.last_ts = start

    def open_saved(self) -> None:
        saved = self.verifier.states.find_one({"_id": self.doc_id})
        if saved is None:
            self.open_fresh()
            return
        self.counts.update(saved.get("counts") or {})
        self.last_ts = saved.get("ts")
        try:
            self.stream = self._watch(Position(saved["ts"], token=saved.get("token") or None))
        except HistoryLostError:
            raise RuntimeError(f"the {self.side} no longer holds the saved change stream position; "
                               "start a new check (POST /api/v1/check after --clean)") from None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"verify-reader-{self.side}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.stream is not None:
                self.stream.close()
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- reading ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            if self.stopping.is_set():  # closed under us while shutting down: the saved token stands
                log.debug("change reader stopped", extra={"side": self.side, "error": str(exc)})
                return
            log.exception("change reader failed", extra={"side": self.side})
            self.verifier.fail(f"{self.side} change reader: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        last_flush = time.monotonic()
        while not self.stopping.is_set():
            target = self.verifier.writes_off_target(self.side)
            poll_started = time.time()
            event = next_change(self.stream, self.last_ts)
            if event is None:
                self.lag_s = 0.0  # an empty read: caught up with the server
                if target is not None and self._passed_on_empty_read(target[0], poll_started >= target[1]):
                    self._flush()
                    self.drained.set()
                    return
            else:
                self.empty_after_off = 0
                self._handle(event)
                # Strictly past: the events of one transaction share its commit time, which can be
                # the writes-off time itself; the rest of it is still to come.
                if target is not None and self.last_ts is not None and self.last_ts > target[0]:
                    self._flush()
                    self.drained.set()
                    return
            if len(self.pending) >= READER_BATCH or time.monotonic() - last_flush >= READER_FLUSH_S:
                self._flush()
                last_flush = time.monotonic()
        self._flush()

    def _passed_on_empty_read(self, target: Timestamp, after_wall_time: bool) -> bool:
        """Has an empty read shown that every event up to ``target`` was delivered? MongoDB says
        so with the post-batch resume token's time; where tokens are opaque, two consecutive
        empty reads that started after the writes-off moment do."""
        token_ts = token_timestamp(self.stream.resume_token)
        if token_ts is not None:
            return token_ts >= target
        if not after_wall_time:
            return False
        self.empty_after_off += 1
        return self.empty_after_off >= 2

    def _handle(self, event: Mapping[str, Any]) -> None:
        op = str(event.get("operationType"))
        ts = event.get("clusterTime")
        if isinstance(ts, Timestamp):
            self.last_ts = ts
            self.lag_s = max(0.0, time.time() - ts.time)  # seconds-resolution cluster time
        ns_doc = event.get("ns") or {}
        db, coll = ns_doc.get("db"), ns_doc.get("coll")
        if coll is not None and f"{db}.{coll}" not in self.mapping:
            self.verifier.adopt(self.side, f"{db}.{coll}")
        if op in CRUD:
            src_ns = self.mapping.get(f"{db}.{coll}")
            key_doc = event.get("documentKey")
            if src_ns is None or key_doc is None:
                return  # outside the selection: neither queued nor counted
            self._count(op)
            self.pending[(src_ns, Binary(id_key_from_raw_document(cast(RawBSONDocument, key_doc).raw)))] = None
            return
        # DDL: recheck the metadata of every pair it may touch.
        touched = [f"{db}.{coll}"]
        to = event.get("to")
        if to is not None:
            touched.append(f"{to.get('db')}.{to.get('coll')}")
        if op == "dropDatabase" or coll is None:
            touched = [ns for ns in list(self.mapping) if ns.partition(".")[0] == db]  # adopt() may add
        counted = False
        for ns in touched:
            if ns not in self.mapping and not ns.endswith(".None"):
                self.verifier.adopt(self.side, ns)
            src_ns = self.mapping.get(ns)
            if src_ns is not None:
                self.pending[(src_ns, "meta")] = None
                if not counted:
                    self._count(op)
                    counted = True

    def _count(self, op: str) -> None:
        self.counts[op if op in self.counts else "other"] += 1
        second = int(time.monotonic())
        with self.window_lock:
            if self.window and self.window[-1][0] == second:
                self.window[-1][1] += 1
            else:
                self.window.append([second, 1])
                while self.window[0][0] <= second - 60:
                    self.window.popleft()
        self.last_event_at = time.monotonic()

    def _flush(self) -> None:
        """Queue the pending rechecks for the next generation, then save the position."""
        token = self.stream.resume_token if self.stream is not None else None
        pending, self.pending = list(self.pending), {}
        with self.verifier.gen_lock:
            generation = self.verifier.generation + 1
            if pending:
                self.verifier.enqueue([(generation, ns, self.verifier.dst_of(ns), k, None) for ns, k in pending],
                                      changed=utc_now())
        self.verifier.states.update_one({"_id": self.doc_id}, {"$set": {
            "token": dict(token) if token is not None else None, "ts": self.last_ts, "counts": self.counts,
            "saved": utc_now()}}, upsert=True)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.window_lock:
            recent = [n for t, n in self.window if now - t <= 60]
        return {"eventsPerSecond": round(sum(recent) / 60, 3) if recent else None,
                "lagSecs": None if self.lag_s is None else int(self.lag_s),
                "bufferSaturation": round(min(1.0, len(self.pending) / READER_BATCH), 3),
                "eventCounts": dict(self.counts)}
