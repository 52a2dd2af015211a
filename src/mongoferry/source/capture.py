"""Change capture: the only code that opens change streams, tails local.oplog.rs or reads oplog files.

The openers (`open_change_stream`, `open_oplog`) are used by every reader of changes (sync's
captures, publish-redis's readers, the verifier's change readers), so history that the source no
longer holds is told one way (`HistoryLostError`) everywhere. The captures yield `Batch`es of apply
units (one event, or every event of one transaction) in source order, plus the position to save
once the batch is applied. `verify_history` tells, before resuming, whether the source still holds
the last change a sink applied (after a rollback or a restart that lost writes, it does not).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import bson
from bson import Binary, Timestamp
from bson.errors import BSONError
from pymongo.change_stream import ChangeStream, ClusterChangeStream
from pymongo.cursor import Cursor, CursorType
from pymongo.errors import OperationFailure

from mongoferry.core.errors import HistoryLostError
from mongoferry.core.events import Batch, ChangeEvent, Position, TxnId, Unit
from mongoferry.core.oplog import TransactionAssembler, create_command, entry_to_events
from mongoferry.infra.clients import DECODED, Client, is_history_lost

log = logging.getLogger("mongoferry.capture")

# A batch closes this long after its first event even if more keep coming: under a steady trickle
# the stream is never idle, and waiting for a full batch would add seconds of lag.
MAX_BATCH_WAIT_S = 0.2
RAW_UPDATES_UNSUPPORTED = (40415,)  # IDLUnknownField: showRawUpdateDescription before MongoDB 6.0


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


def newest_oplog_time(client: Client) -> Timestamp:
    """The newest entry of the oplog: everything a read made after this call returned reflects
    the writes up to it (the time mongodump --oplog records as the end of its dump)."""
    newest = client.local["oplog.rs"].find_one({}, sort=[("$natural", -1)], projection={"ts": 1})
    return newest["ts"] if newest is not None else current_time(client)


def lag_seconds(wall: Any) -> float:
    if not isinstance(wall, dt.datetime):
        return 0.0
    when = wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - when).total_seconds())


def history_lost(ts: Timestamp | None, detail: str) -> HistoryLostError:
    behind = f"{max(0, int(time.time()) - ts.time)}s behind, " if ts is not None else ""
    return HistoryLostError(
        f"the source no longer holds the saved position ({behind}{detail})",
        "the oplog rolled over while mongoferry was stopped or too slow; enlarge the oplog and start a new "
        "sync with --drop-dst (a resync), or drop the job's metadata to start over",
    )


# ------------------------------------------------------------------ openers
def open_change_stream(client: Client, start: Position | None, *, pipeline: list[dict[str, Any]],
                       expanded: bool = True, raw_updates: bool = False, await_ms: int = 500,
                       batch_size: int = 1000) -> ChangeStream[Any]:
    """A deployment-wide change stream (works through mongos) from `start`: after its resume token,
    else at its time (inclusive); from now without one. `raw_updates` asks for each update's oplog
    diff (`showRawUpdateDescription`, MongoDB 6.0+; `raw_updates_unsupported` tells the refusal)."""
    kwargs: dict[str, Any] = {"max_await_time_ms": await_ms, "batch_size": batch_size}
    if expanded:
        kwargs["show_expanded_events"] = True
    if start is not None and start.token is not None:
        kwargs["start_after"] = start.token
    elif start is not None:
        kwargs["start_at_operation_time"] = start.ts
    try:
        if raw_updates:
            return _watch_with_raw_updates(client, pipeline, kwargs)
        return client.watch(pipeline, **kwargs)
    except OperationFailure as exc:
        if is_history_lost(exc):
            raise history_lost(start.ts if start else None, f"code {exc.code}") from None
        raise


def raw_updates_unsupported(exc: OperationFailure) -> bool:
    return exc.code in RAW_UPDATES_UNSUPPORTED


def _watch_with_raw_updates(client: Client, pipeline: list[dict[str, Any]],
                            kwargs: dict[str, Any]) -> ChangeStream[Any]:
    """`client.watch` with `showRawUpdateDescription`: PyMongo has no parameter for it, so this adds
    it to the `$changeStream` stage, the one thing `ClusterChangeStream` builds."""

    class RawUpdateChangeStream(ClusterChangeStream[Any]):
        def _change_stream_options(self) -> dict[str, Any]:
            options = super()._change_stream_options()
            options["showRawUpdateDescription"] = True
            return options

    stream = RawUpdateChangeStream(
        client.admin, pipeline, None, None, kwargs.get("max_await_time_ms"), kwargs.get("batch_size"), None,
        kwargs.get("start_at_operation_time"), None, kwargs.get("start_after"), None, None,
        show_expanded_events=kwargs.get("show_expanded_events"))
    stream._initialize_cursor()
    return stream


def next_change(stream: ChangeStream[Any], since: Timestamp | None) -> Any:
    """The stream's next change or None (nothing yet); lost history as HistoryLostError."""
    try:
        return stream.try_next()
    except OperationFailure as exc:
        if is_history_lost(exc):
            raise history_lost(since, f"code {exc.code}") from None
        raise


def open_oplog(client: Client, after: Timestamp | None, *, inclusive: bool = False,
               await_ms: int = 500) -> Cursor[Any]:
    """A tailable cursor on local.oplog.rs from after `after` (at it, with `inclusive`), or from the
    newest entry on without one. History lost when the oldest entry is younger than `after`."""
    oplog = client.local["oplog.rs"]
    if after is None:
        newest = oplog.find_one({}, sort=[("$natural", -1)], projection={"ts": 1})
        query: dict[str, Any] = {"ts": {"$gt": newest["ts"]}} if newest else {}
    else:
        oldest = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
        if oldest is None or oldest["ts"] > after:
            raise history_lost(after, f"oldest oplog entry is {oldest['ts'] if oldest else 'missing'}")
        query = {"ts": {"$gte" if inclusive else "$gt": after}}
    return oplog.find(query, cursor_type=CursorType.TAILABLE_AWAIT, oplog_replay=False).max_await_time_ms(await_ms)


def next_entry(cursor: Cursor[Any], since: Timestamp | None) -> Any:
    """The cursor's next entry or None (nothing yet); lost history as HistoryLostError."""
    try:
        return next(cursor)  # a tailable cursor stops iterating when it has nothing yet
    except StopIteration:
        return None
    except OperationFailure as exc:
        if is_history_lost(exc):
            raise history_lost(since, f"code {exc.code}") from None
        raise


# ------------------------------------------------------------------ continuity after a restart
def fingerprint(event: ChangeEvent) -> dict[str, Any]:
    """What identifies the last change a sink applied, to find it again in the source's oplog."""
    out: dict[str, Any] = {"ts": event.position.ts, "ns": event.ns, "op": event.op}
    if event.has_id:
        out["id"] = Binary(bson.encode({"_id": event.doc_id}))
    return out


def verify_history(client: Client, last: Mapping[str, Any] | None) -> None:
    """Refuse to resume past a change the source no longer holds.

    After a failover with w:1 writes (a rollback), or a restart of a server that lost unflushed
    writes, the last change the destination applied may be gone from the source, and new writes may
    take its place in time: resuming would skip them and keep what the source lost. The oplog then
    holds no entry at that change's time, or only other documents' entries. Where the oplog cannot
    be read (mongos, no privilege) this is left to the server's own resume check."""
    if not last or not isinstance(last.get("ts"), Timestamp):
        return
    ts: Timestamp = last["ts"]
    oplog = client.local.get_collection("oplog.rs", codec_options=DECODED)
    try:
        oldest = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
        entries = list(oplog.find({"ts": ts})) if oldest is not None else []
    except OperationFailure:
        return
    if oldest is None or oldest["ts"] > ts:
        return  # rolled over: the opener reports lost history with the details
    if entries and not _names_other_documents(entries, last):
        return
    raise HistoryLostError(
        f"the source no longer holds the last change already applied ({_describe_change(last)} at "
        f"{ts.time}:{ts.inc}): the destination holds writes the source lost (a rollback after a failover, "
        "or a restart that lost unflushed writes), and changes after that point may be missing",
        "the destination is ahead of the source: compare them with `mongoferry verify --check-only`, then "
        "start a new sync with --drop-dst (a resync); mongoferry will not resume past lost history")


def _describe_change(last: Mapping[str, Any]) -> str:
    what = f"{last.get('op')} on {last.get('ns')}"
    if isinstance(last.get("id"), bytes):
        with contextlib.suppress(Exception):
            what += f" _id {bson.decode(last['id'])['_id']!r}"
    return what


def _names_other_documents(entries: list[dict[str, Any]], last: Mapping[str, Any]) -> bool:
    """True when every entry at the time is a plain write of another document than `last`."""
    if "id" not in last or any(e.get("op") not in ("i", "u", "d") for e in entries):
        return False  # transactions and commands: their time is proof enough
    for entry in entries:
        try:
            events = entry_to_events(entry)
        except Exception:
            return False
        for e in events:
            if e.ns == last.get("ns") and e.has_id and bson.encode({"_id": e.doc_id}) == bytes(last["id"]):
                return False
    return True


# ------------------------------------------------------------------ prefetching
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
            if batch.exhausted:
                return

    def _put(self, item: Batch | BaseException) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next_batch(self, max_events: int, timeout: float | None = None) -> Batch:
        """The next batch; an empty idle one when none came within `timeout` (the source is slow)."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return Batch(idle=False)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, wait_s: float = 3.0) -> None:
        """Stop reading. A read blocked on an unreachable server is left to its daemon thread after
        `wait_s`: a shutdown never waits for a server selection timeout."""
        self.stop.set()
        self.thread.join(timeout=wait_s)
        if not self.thread.is_alive():
            self.inner.close()
        else:
            log.info("not waiting for a read blocked on the source (it does not answer)",
                     extra={"waitedSeconds": wait_s})
            threading.Thread(target=self.inner.close, daemon=True).start()


# ------------------------------------------------------------------ change streams
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
        ddl = create_command({"create": coll, **desc})
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
        self.stream = open_change_stream(client, start, pipeline=[{"$match": {"ns.db": {"$nin": excluded_dbs}}}],
                                         await_ms=await_ms)
        self._carry: dict[str, Any] | None = None
        self.last_ts = start.ts

    def _next(self) -> dict[str, Any] | None:
        if self._carry is not None:
            change, self._carry = self._carry, None
            return change
        following: dict[str, Any] | None = next_change(self.stream, self.last_ts)
        return following

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
        token = self.stream.resume_token
        if batch.units:
            last = batch.units[-1][-1].position
            batch.position = last if not batch.idle or token is None else Position(last.ts, last.index, dict(token))
        elif batch.idle and token is not None:
            batch.position = Position(self.last_ts, 0, dict(token))
        return batch

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------ oplog tailing
def _oplog_batch_position(assembler: TransactionAssembler, last_ts: Timestamp) -> Timestamp:
    """Never checkpoint past a transaction still being assembled."""
    pending = assembler.oldest_pending_ts
    if pending is None:
        return last_ts
    return Timestamp(pending.time, pending.inc - 1) if pending.inc else Timestamp(pending.time - 1, 0)


# An entry read this soon after it was written may have neighbours still being committed, which
# appear in the oplog after the cursor passed their place (a hole): such entries wait, and where
# their timestamps leave room for a missing entry (an ordinal skipped, or a new second begun) their
# time range is read again and that read is what the capture hands on. (MongoDB's oplog visibility
# rules prevent holes for tailable cursors; SecantusDB shows them, a few entries per thousand, just
# as a cursor catches up with the writes; they appear within milliseconds. A re-read scans the whole
# oplog there, so while the writes go on it happens at most once per REREAD_EVERY_S, and no more
# often than one REREAD_COST_SHARE of the time: a re-read that took 1 s waits 10 s for the next
# (never more than REREAD_AT_MOST_S: one slow read during a failover must not hold entries long).
# On MongoDB a time-range read of the oplog is a seek, so the pace stays at once a second.)
SETTLE_S = 0.25
REREAD_EVERY_S = 1.0
REREAD_COST_SHARE = 0.1
REREAD_AT_MOST_S = 15.0


def next_reread_after(took_s: float) -> float:
    """Seconds from the end of a re-read to the earliest next one while writes go on."""
    return min(REREAD_AT_MOST_S, max(REREAD_EVERY_S, took_s / REREAD_COST_SHARE))


def merge_reread(held: list[dict[str, Any]], reread: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The re-read, plus any held entry it lacks (an oplog truncated meanwhile, or a server's
    quirk), in ts order: a re-read fills holes, it never drops what the tail already saw."""
    seen = {e["ts"] for e in reread}
    missing = [e for e in held if e["ts"] not in seen]
    if not missing:
        return reread
    log.warning("a re-read of the oplog lacked entries the tail had read; keeping them",
                extra={"entries": len(missing)})
    return sorted([*reread, *missing], key=lambda e: e["ts"])  # stable: equal ts keep their order


def leaves_room(before: Timestamp | None, entries: list[dict[str, Any]]) -> bool:
    """Whether an entry could be missing between `before` (the last entry handed on, None when
    unknown) and these entries, judging by the entries alone: a skipped ordinal, a new second (whose
    predecessor's last ordinal is unknown), or a transaction's entry (the others of its commit
    share its ts or follow it, and how many there are is not written on any of them)."""
    prev = before
    for entry in entries:
        ts = entry["ts"]
        if prev is None or ts.time != prev.time or ts.inc != prev.inc + 1 or _in_transaction(entry):
            return True
        prev = ts
    return False


def _in_transaction(entry: Mapping[str, Any]) -> bool:
    return "txnNumber" in entry or "lsid" in entry or (entry.get("op") == "c" and "applyOps" in entry.get("o", {}))


class OplogCapture:
    """Tails local.oplog.rs of a replica-set member: exact oplog entries, in order (kept on the batch)."""

    def __init__(self, client: Client, start: Position, await_ms: int = 500) -> None:
        self.client = client
        self.start = start
        self.await_ms = await_ms
        self.assembler = TransactionAssembler()
        self.cursor = open_oplog(client, start.ts, await_ms=await_ms)
        self.last_ts = start.ts  # the newest entry read from the cursor
        self.emitted_ts = start.ts  # the newest entry handed on
        self.held: list[tuple[dict[str, Any], float, bool]] = []  # entry, when it may go, fresh when read
        self._reread_due = 0.0  # while more entries are held, no re-read before this (monotonic)
        self._last_entry: Timestamp | None = None  # the last entry handed on (not a quiet time)
        self._probe: tuple[Timestamp, float] | None = None  # the cluster time, and when it was read

    def next_batch(self, max_events: int) -> Batch:
        batch = Batch()
        deadline = time.monotonic() + MAX_BATCH_WAIT_S
        drained = False
        while len(self.held) < max_events and time.monotonic() < deadline:
            if not self.cursor.alive:
                self.cursor = open_oplog(self.client, self.last_ts, await_ms=self.await_ms)
            entry = next_entry(self.cursor, self.last_ts)
            if entry is None:
                drained = True
                break
            self.last_ts = entry["ts"]
            now = time.monotonic()
            fresh = _is_fresh(entry)
            self.held.append((entry, now + SETTLE_S if fresh else now, fresh))
        for entry in self._settled(max_events):
            self._emit(batch, entry)
        quiet_until = None
        if drained and not self.held:
            batch.idle = True
            quiet_until = self._quiet_until()
            if quiet_until is not None:
                missed = self._unseen_until(quiet_until)
                if missed is None:
                    quiet_until = None  # not read again yet: no quiet time without it
                for entry in missed or ():
                    self._emit(batch, entry)
            batch.units.extend(self.assembler.flush())
        if batch.units or batch.idle:
            safe = _oplog_batch_position(self.assembler, self.emitted_ts)
            if quiet_until is not None and not self.assembler.pending() and quiet_until > safe:
                safe = self.emitted_ts = self.last_ts = quiet_until
            batch.position = Position(safe) if safe > self.start.ts or batch.units else None
        return batch

    def _emit(self, batch: Batch, entry: dict[str, Any]) -> None:
        self.emitted_ts = entry["ts"]
        batch.entries.append(entry)
        batch.units.extend(self.assembler.feed(entry))

    def _unseen_until(self, upto: Timestamp) -> list[dict[str, Any]] | None:
        """The oplog's entries after the last one handed on, up to a quiet time, that the tail did not
        return (None: not read, a re-read ran too recently). A tail can miss an entry written just
        before an idle spell, and with nothing after it no hole shows: without this read the quiet
        time would pass it, and it would be lost (seen on SecantusDB)."""
        now = time.monotonic()
        if now < self._reread_due:
            return None
        found = self._reread(upto, now)
        if found:
            log.info("oplog entries the tail had not returned; read again before the quiet time",
                     extra={"entries": len(found), "upTo": f"{upto.time}:{upto.inc}"})
            self.last_ts = found[-1]["ts"]
            self.cursor.close()  # reopened after them: the tail must not return them a second time
            self.cursor = open_oplog(self.client, self.last_ts, await_ms=self.await_ms)
        return self._handed(found)

    def _reread(self, upto: Timestamp, began: float) -> list[dict[str, Any]]:
        """The oplog after the last entry handed on, up to `upto`, read again; the next re-read is
        paced by what this one cost (see next_reread_after)."""
        found = list(self.client.local["oplog.rs"].find(
            {"ts": {"$gt": self.emitted_ts, "$lte": upto}}).sort("$natural", 1))
        done = time.monotonic()
        self._reread_due = done + next_reread_after(done - began)
        return found

    def _quiet_until(self) -> Timestamp | None:
        """An idle source: a cluster time read at least SETTLE_S before this empty read, up to which
        the oplog holds nothing more (so an idle member's position keeps up with the others' in a
        cluster; MongoDB's periodic no-op entries do the same every 10 s)."""
        now = time.monotonic()
        probe = self._probe
        if probe is None or now - probe[1] >= SETTLE_S:
            self._probe = (current_time(self.client), now)
        if probe is not None and now - probe[1] >= SETTLE_S and probe[0] > self.emitted_ts:
            return probe[0]
        return None

    def _settled(self, limit: int) -> list[dict[str, Any]]:
        """The held entries that may go now, in order; a run that was fresh when read is replaced by
        a second read of its time range (holes filled)."""
        now = time.monotonic()
        ready = 0
        while ready < len(self.held) and ready < limit and self.held[ready][1] <= now:
            ready += 1
        if ready == 0:
            return []
        run = [e for e, _, _ in self.held[:ready]]
        if not any(fresh for _, _, fresh in self.held[:ready]) or not leaves_room(self._last_entry, run):
            del self.held[:ready]
            return self._handed(run)
        if now < self._reread_due and ready < len(self.held):
            return []
        upto = run[-1]["ts"]
        reread = self._reread(upto, now)
        if len(reread) > ready:
            log.info("oplog entries appeared behind the cursor; read again",
                     extra={"entries": len(reread) - ready, "upTo": f"{upto.time}:{upto.inc}"})
        del self.held[:ready]
        return self._handed(merge_reread(run, reread))

    def _handed(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if entries:
            self._last_entry = entries[-1]["ts"]
        return entries

    def close(self) -> None:
        self.cursor.close()


def _is_fresh(entry: Mapping[str, Any]) -> bool:
    wall = entry.get("wall")
    if not isinstance(wall, dt.datetime):
        return True
    when = wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - when).total_seconds() < 1.0


# ------------------------------------------------------------------ oplog files
MAX_BSON_FILE_DOCUMENT = 64 * 1024 * 1024  # documents are 16 MiB at most; room for the server's overhead


class BadBsonFile(ValueError):
    """Where a BSON file stops making sense: the byte offset and how many documents came before."""

    def __init__(self, why: str, offset: int, documents: int) -> None:
        super().__init__(why)
        self.why, self.offset, self.documents = why, offset, documents


def read_oplog_file(path: Path) -> Iterator[dict[str, Any]]:
    """The documents of a BSON file, one at a time; a cut-off or corrupt one raises BadBsonFile."""
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = documents = 0
        while header := f.read(4):
            length = int.from_bytes(header, "little", signed=True) if len(header) == 4 else 0
            if len(header) < 4:
                raise BadBsonFile("it is truncated: a document header is cut off", offset, documents)
            if not 5 <= length <= MAX_BSON_FILE_DOCUMENT:
                raise BadBsonFile(f"it is not a BSON file of oplog entries (a document claims {length} bytes)",
                                  offset, documents)
            if offset + length > size:
                raise BadBsonFile(f"it is truncated: a {length}-byte document starts with only "
                                  f"{size - offset} bytes left", offset, documents)
            data = header + f.read(length - 4)
            try:
                yield bson.decode(data, DECODED)
            except BSONError as exc:
                raise BadBsonFile(f"a document is not valid BSON ({exc})", offset, documents) from None
            offset += length
            documents += 1


def _ts_key(entry: dict[str, Any]) -> tuple[int, int]:
    ts = entry.get("ts")
    return (ts.time, ts.inc) if isinstance(ts, Timestamp) else (-1, -1)


class OplogFileCapture:
    """BSON files of oplog entries (mongodump's oplog.bson, dumps of local.oplog.rs) merged in ts
    order, up to `limit` (exclusive, as mongorestore's --oplogLimit): a finite source."""

    def __init__(self, paths: list[Path], start: Position | None = None, limit: Timestamp | None = None) -> None:
        self.entries = heapq.merge(*(read_oplog_file(p) for p in paths), key=_ts_key)
        self.after = start.ts if start is not None and start.ts != Timestamp(0, 0) else None
        self.limit = limit
        self.assembler = TransactionAssembler()
        self.stopped_at_limit = 0
        self.events_read = 0
        self.last_ts = Timestamp(0, 0)

    def next_batch(self, max_events: int) -> Batch:
        batch = Batch()
        for entry in self.entries:
            if self.after is not None and entry["ts"] <= self.after:
                continue
            if self.limit is not None and entry["ts"] >= self.limit:
                self.stopped_at_limit += 1
                continue  # counted: every later entry is past the limit too
            self.last_ts = entry["ts"]
            batch.entries.append(entry)
            units = self.assembler.feed(entry)
            self.events_read += sum(len(u) for u in units)
            batch.units.extend(units)
            if batch.events >= max_events:
                batch.position = Position(_oplog_batch_position(self.assembler, self.last_ts))
                return batch
        rest = self.assembler.flush()
        self.events_read += sum(len(u) for u in rest)
        batch.units.extend(rest)
        batch.idle = batch.exhausted = True
        batch.position = Position(self.last_ts) if self.last_ts != Timestamp(0, 0) else None
        return batch

    def unfinished_transaction(self) -> bool:
        return self.assembler.pending()

    def close(self) -> None:
        pass


def check_capture(client: Client, kind: str, what: str = "the source") -> None:
    """Prove the capture can be opened before anything is written (UsageError otherwise)."""
    from mongoferry.core.errors import UsageError

    if kind == "oplog":
        if client.local["oplog.rs"].find_one({}, projection={"ts": 1}) is None:
            raise UsageError("--capture oplog needs a replica-set member with an oplog",
                             "connect to a replica-set member, or use the default change streams")
        return
    try:
        open_change_stream(client, None, pipeline=[], expanded=False, await_ms=10).close()
    except OperationFailure as exc:
        raise UsageError(f"{what} cannot open a change stream: {(exc.details or {}).get('errmsg', exc)}",
                         "change streams need a replica set or a sharded cluster (MongoDB 4.0+)") from None
