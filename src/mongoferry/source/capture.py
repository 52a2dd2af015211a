"""Change capture: the only code that opens change streams or tails local.oplog.rs.

Both captures yield `Batch`es of apply units (a unit is one event, or every
event of one transaction) in source order, plus the position to checkpoint once
the batch is applied. History that the source no longer holds is an error,
never a silent skip.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import bson
from bson import Timestamp
from pymongo.errors import OperationFailure

from mongoferry.core.errors import HistoryLostError
from mongoferry.core.events import ChangeEvent, Position, TxnId
from mongoferry.core.oplog import TransactionAssembler
from mongoferry.infra.clients import Client

log = logging.getLogger("mongoferry.capture")

HISTORY_LOST_CODES = {286, 280, 136}  # ChangeStreamHistoryLost, ChangeStreamFatalError, CappedPositionLost
Unit = list[ChangeEvent]
# A batch closes this long after its first event even if more keep coming: under a steady trickle
# the stream is never idle, and waiting for a full batch would add seconds of lag.
MAX_BATCH_WAIT_S = 0.2


@dataclass
class Batch:
    units: list[Unit] = field(default_factory=list)
    idle: bool = False  # the source had nothing more when this batch ended
    position: Position | None = None  # checkpoint this once every unit is applied

    @property
    def events(self) -> int:
        return sum(len(u) for u in self.units)


class Capture(Protocol):
    def next_batch(self, max_events: int) -> Batch: ...
    def close(self) -> None: ...


def current_time(client: Client) -> Timestamp:
    """The deployment's latest cluster time: a position before anything written from now on."""
    reply = client.admin.command("ping")
    ts = reply.get("operationTime") or reply.get("$clusterTime", {}).get("clusterTime")
    if not isinstance(ts, Timestamp):
        hello = client.admin.command("hello")
        ts = hello["lastWrite"]["opTime"]["ts"]
    assert isinstance(ts, Timestamp)
    return ts


def history_lost(position: Position, client: Client, detail: str) -> HistoryLostError:
    behind = max(0, int(time.time()) - position.ts.time)
    return HistoryLostError(
        f"the source no longer holds the saved position ({behind}s behind, {detail})",
        "the oplog rolled over while mongoferry was stopped or too slow; enlarge the oplog and start a new "
        "sync with --drop-dst (a resync), or drop the metadata database to start over",
    )


class Prefetching:
    """Reads the next batch in a thread while the caller applies the current one."""

    def __init__(self, inner: Capture, max_events: int, depth: int = 2) -> None:
        self.inner = inner
        self.max_events = max_events
        self.queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                batch = self.inner.next_batch(self.max_events)
            except BaseException as exc:  # handed to the caller, which decides
                self._put(exc)
                return
            self._put(batch)

    def _put(self, item: Batch | BaseException) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next_batch(self, max_events: int) -> Batch:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.inner.close()


# ------------------------------------------------------------------ change streams
DDL_TYPES = {"create", "drop", "rename", "dropDatabase", "createIndexes", "dropIndexes", "modify"}
IGNORED_DDL = {"shardCollection", "reshardCollection", "refineCollectionShardKey", "invalidate"}


def change_event_to_event(change: Mapping[str, Any]) -> ChangeEvent:
    """One change stream event as the internal event (DDL in oplog command form)."""
    op = change["operationType"]
    ns_doc = change.get("ns") or {}
    db, coll = ns_doc.get("db", ""), ns_doc.get("coll")
    ns = f"{db}.{coll}" if coll is not None else f"{db}.$cmd"
    pos = Position(ts=change["clusterTime"], token=change["_id"])
    txn = None
    if "lsid" in change and "txnNumber" in change:
        txn = TxnId(lsid=bson.encode(change["lsid"]), txn_number=int(change["txnNumber"]))
    common: dict[str, Any] = {"position": pos, "txn": txn, "wall": change.get("wallTime")}
    key = change.get("documentKey") or {}
    if op in ("insert", "replace"):
        return ChangeEvent(op=op, ns=ns, doc_id=key.get("_id"), has_id="_id" in key,
                           document=change.get("fullDocument"), **common)
    if op == "delete":
        return ChangeEvent(op="delete", ns=ns, doc_id=key.get("_id"), has_id="_id" in key, **common)
    if op == "update":
        update = dict(change.get("rawUpdateDescription") or change.get("updateDescription") or {})
        kind: Literal["oplog", "description"] = "oplog" if "rawUpdateDescription" in change else "description"
        return ChangeEvent(op="update", ns=ns, doc_id=key.get("_id"), has_id="_id" in key, update=update,
                           update_kind=kind, **common)
    desc = dict(change.get("operationDescription") or {})
    ddl: dict[str, Any]
    if op == "create":
        ddl = {"create": coll, **desc}
    elif op == "drop":
        ddl = {"drop": coll}
    elif op == "rename":
        to = change.get("to") or desc.get("to") or {}
        ddl = {"renameCollection": ns, "to": f"{to.get('db')}.{to.get('coll')}",
               "dropTarget": bool(desc.get("dropTarget"))}
    elif op == "dropDatabase":
        ddl = {"dropDatabase": 1}
    elif op == "createIndexes":
        ddl = {"createIndexes": coll, "indexes": desc.get("indexes", [])}
    elif op == "dropIndexes":
        ddl = {"dropIndexes": coll, "index": [ix.get("name") for ix in desc.get("indexes", [])]}
    elif op == "modify":
        ddl = {"collMod": coll, **desc}
    else:
        ddl = {"unsupported": op, **desc}
    return ChangeEvent(op="ddl", ns=ns, ddl=ddl, **common)


class ChangeStreamCapture:
    """A deployment-wide change stream (works through mongos) with expanded (DDL) events."""

    def __init__(self, client: Client, start: Position, excluded_dbs: list[str], await_ms: int = 500) -> None:
        self.client = client
        self.start = start
        pipeline = [{"$match": {"ns.db": {"$nin": excluded_dbs}}}]
        kwargs: dict[str, Any] = {"show_expanded_events": True, "max_await_time_ms": await_ms,
                                  "batch_size": 1000}
        if start.token is not None:
            kwargs["start_after"] = start.token
        else:
            kwargs["start_at_operation_time"] = start.ts
        try:
            self.stream = client.watch(pipeline, **kwargs)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise history_lost(start, client, f"code {exc.code}") from None
            raise
        self._carry: dict[str, Any] | None = None
        self.last_ts = start.ts

    def _next(self) -> dict[str, Any] | None:
        if self._carry is not None:
            change, self._carry = self._carry, None
            return change
        try:
            return self.stream.try_next()
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise history_lost(Position(self.last_ts), self.client, f"code {exc.code}") from None
            raise

    def next_batch(self, max_events: int) -> Batch:
        batch = Batch()
        unit: Unit = []
        deadline: float | None = None
        while True:
            change = self._next()
            if change is None:
                batch.idle = True
                break
            event = change_event_to_event(change)
            self.last_ts = event.position.ts
            deadline = deadline or time.monotonic() + MAX_BATCH_WAIT_S
            if unit and (event.txn is None or event.txn != unit[0].txn):
                batch.units.append(unit)
                unit = []
                if batch.events >= max_events or time.monotonic() > deadline:
                    self._carry = change
                    break
            unit.append(event)
            if event.txn is None:
                batch.units.append(unit)
                unit = []
                if batch.events >= max_events or time.monotonic() > deadline:
                    break
        if unit:  # a transaction ends when the stream has nothing more or another event follows
            batch.units.append(unit)
        if batch.units:
            last = batch.units[-1][-1].position
            token = self.stream.resume_token
            batch.position = last if not batch.idle or token is None else Position(last.ts, last.index, dict(token))
        elif batch.idle and self.stream.resume_token is not None:
            batch.position = Position(self.last_ts, 0, dict(self.stream.resume_token))
        return batch

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------ oplog tailing
class OplogCapture:
    """Tails local.oplog.rs of a replica-set member: exact oplog entries, in order."""

    def __init__(self, client: Client, start: Position, await_ms: int = 500) -> None:
        self.client = client
        self.start = start
        self.await_ms = await_ms
        self.assembler = TransactionAssembler()
        oplog = client.local["oplog.rs"]
        first = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
        if first is None or first["ts"] > start.ts:
            raise history_lost(start, client, f"oldest oplog entry is {first['ts'] if first else 'missing'}")
        self.cursor = oplog.find({"ts": {"$gt": start.ts}}, cursor_type=_tailable_await(),
                                 oplog_replay=False).max_await_time_ms(await_ms)
        self.last_ts = start.ts

    def next_batch(self, max_events: int) -> Batch:
        batch = Batch()
        deadline = time.monotonic() + MAX_BATCH_WAIT_S
        while batch.events < max_events and (not batch.units or time.monotonic() < deadline):
            if not self.cursor.alive:
                self.cursor = self.client.local["oplog.rs"].find(
                    {"ts": {"$gt": self.last_ts}}, cursor_type=_tailable_await()).max_await_time_ms(self.await_ms)
            try:
                entry = next(self.cursor)  # a tailable cursor stops iterating when it has nothing yet
            except StopIteration:
                entry = None
            except OperationFailure as exc:
                if exc.code in HISTORY_LOST_CODES:
                    raise history_lost(Position(self.last_ts), self.client, f"code {exc.code}") from None
                raise
            if entry is None:
                batch.idle = True
                batch.units.extend(self.assembler.flush())
                break
            self.last_ts = entry["ts"]
            batch.units.extend(self.assembler.feed(entry))
        if batch.units or batch.idle:
            safe = self.last_ts
            pending = self.assembler.oldest_pending_ts
            if pending is not None:
                # Never checkpoint past a transaction still being assembled.
                safe = Timestamp(pending.time, pending.inc - 1) if pending.inc else Timestamp(pending.time - 1, 0)
            batch.position = Position(safe) if safe > self.start.ts or batch.units else None
        return batch

    def close(self) -> None:
        self.cursor.close()


def _tailable_await() -> Any:
    from pymongo.cursor import CursorType

    return CursorType.TAILABLE_AWAIT


def lag_seconds(wall: Any) -> float:
    if not isinstance(wall, dt.datetime):
        return 0.0
    when = wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - when).total_seconds())


