"""What ``publish-redis`` reads: a change stream or the oplog, with OTR's transaction indexes.

A change stream on the whole deployment (the default; it works through mongos) or, with
``--capture oplog``, tailing ``local.oplog.rs`` of a replica-set member as OTR does.
Change events carry no transaction index, so :class:`TxIndexer` counts it as OTR counts
it in an ``applyOps`` entry. Documents arrive raw and are decoded here with
``surrogateescape``, so invalid UTF-8 reaches :mod:`mongoferry.sinks.redis.format` as OTR sees it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from mongoferry.core.events import Batch, ChangeEvent, Position
from mongoferry.source.capture import (
    MAX_BATCH_WAIT_S,
    next_change,
    next_entry,
    open_change_stream,
    open_oplog,
    raw_updates_unsupported,
)

if TYPE_CHECKING:
    from pymongo.change_stream import ChangeStream
    from pymongo.cursor import Cursor

    from mongoferry.infra.clients import Client

log = logging.getLogger("mongoferry.publish_redis")

__all__ = [
    "ChangeStreamReader",
    "OplogReader",
    "OtrCapture",
    "StartPoint",
    "TxIndexer",
]

PUBLISHED_TYPES: Final = ("insert", "update", "replace", "delete")
AWAIT_MS: Final = 500
INVALID_TOKEN_CODES: Final = (9, 260)  # FailedToParse, InvalidResumeToken

# --------------------------------------------------------------------------- transaction index


class TxIndexer:
    """OTR's txIdx for change events: 0 outside transactions; 0, 1, 2, ... along consecutive
    events of one transaction (same lsid, txnNumber and clusterTime)."""

    def __init__(self) -> None:
        self._key: tuple[bytes, int, Any] | None = None
        self._next = 0

    def reset(self) -> None:
        self._key = None
        self._next = 0

    def index(self, change: Mapping[str, Any]) -> int:
        import bson

        lsid, txn = change.get("lsid"), change.get("txnNumber")
        if not isinstance(lsid, Mapping) or txn is None:
            self.reset()
            return 0
        key = (bson.encode(lsid), int(txn), change.get("clusterTime"))
        index = self._next if key == self._key else 0
        self._key, self._next = key, index + 1
        return index


def _oplog_ops(entry: Mapping[str, Any]) -> int:
    """How many transaction indexes one oplog entry uses (its i/u/d operations, depth first)."""
    op = entry.get("op")
    if op in ("i", "u", "d"):
        return 1
    o = entry.get("o")
    if op == "c" and entry.get("ns") == "admin.$cmd" and isinstance(o, Mapping):
        ops = o.get("applyOps")
        if isinstance(ops, list):
            return sum(_oplog_ops(e) for e in ops if isinstance(e, Mapping))
    return 0


# --------------------------------------------------------------------------- capture


def _decoded(doc: Any) -> dict[str, Any] | None:
    """A raw document decoded as redis_format expects it (invalid UTF-8 kept as surrogates)."""
    if doc is None:
        return None
    import bson

    decoded: dict[str, Any] = bson.decode(doc.raw, codec_options=_decode_options())
    return decoded


@functools.cache
def _decode_options() -> Any:
    from bson.codec_options import CodecOptions, DatetimeConversion

    return CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO,
                        unicode_decode_error_handler="surrogateescape")


@dataclass(frozen=True)
class StartPoint:
    """Where reading starts: the end, right after ``token``, or at ``ts`` (inclusive)."""

    ts: Timestamp | None = None
    token: Mapping[str, Any] | None = None
    continuing: bool = False  # reopening after an error: right after what was read (oplog)

    @property
    def at_end(self) -> bool:
        return self.ts is None and self.token is None and not self.continuing

    def describe(self) -> str:
        if self.token is not None:
            return "after the stored resume token"
        return f"at {self.ts.time}:{self.ts.inc}" if self.ts is not None else "at the end"



class ChangeStreamReader:
    """A deployment-wide change stream (works through mongos)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.stream: ChangeStream[dict[str, Any]] | None = None
        self.indexer = TxIndexer()
        self.last_ts: Timestamp | None = None
        self.raw_updates: bool | None = None  # None: not known yet whether the server offers them

    def open(self, start: StartPoint) -> None:
        from pymongo.errors import OperationFailure

        position = None
        if start.token is not None:
            position = Position(start.ts or Timestamp(0, 0), token=dict(start.token))
        elif start.ts is not None:
            position = Position(start.ts)
            self.indexer.reset()  # the whole transaction at ts is read again, from its first event
        pipeline = [{"$match": {"operationType": {"$in": list(PUBLISHED_TYPES)}}}]
        if self.raw_updates is not False:
            try:
                self.stream = open_change_stream(self.client, position, pipeline=pipeline, raw_updates=True,
                                                 await_ms=AWAIT_MS)
                self.raw_updates = True
                return
            except OperationFailure as exc:
                if not raw_updates_unsupported(exc):
                    raise
                log.info("MongoDB has no raw update descriptions (6.0+): changed fields come from "
                         "updateDescription")
                self.raw_updates = False
        self.stream = open_change_stream(self.client, position, pipeline=pipeline, await_ms=AWAIT_MS)

    def next(self) -> Mapping[str, Any] | None:
        assert self.stream is not None
        change = _decoded(next_change(self.stream, self.last_ts))
        if change is not None and isinstance(change.get("clusterTime"), Timestamp):
            self.last_ts = change["clusterTime"]
        return change

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class OplogReader:
    """Tails local.oplog.rs as OTR does; entries sharing a ts continue one another's indexes."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cursor: Cursor[dict[str, Any]] | None = None
        self.last_ts: Timestamp | None = None
        self._group_ts: Timestamp | None = None  # ts of the entries last read ...
        self._group_next = 0  # ... the transaction index the next one at that ts continues from
        self._group_seen = 0  # ... and how many of them were read
        self._skip = 0  # entries at _group_ts to pass over after reopening (already handled)

    def open(self, start: StartPoint) -> None:
        self._skip = 0
        if start.continuing:
            # After an error: continue exactly after the last entry handled.
            self._skip = self._group_seen
            self.cursor = open_oplog(self.client, start.ts, inclusive=bool(self._group_seen), await_ms=AWAIT_MS) \
                if start.ts is not None else open_oplog(self.client, None, await_ms=AWAIT_MS)
            return
        self._group_ts, self._group_next, self._group_seen = None, 0, 0
        self.last_ts = start.ts
        # At ts, inclusive: a transaction split by a batch is read again whole.
        self.cursor = open_oplog(self.client, start.ts, inclusive=True, await_ms=AWAIT_MS)

    def next(self) -> Mapping[str, Any] | None:
        while True:
            if self.cursor is None or not self.cursor.alive:
                self.open(StartPoint(ts=self.last_ts, continuing=True))
            assert self.cursor is not None
            entry = next_entry(self.cursor, self.last_ts)
            if entry is None:
                return None
            decoded = _decoded(entry)
            assert decoded is not None
            ts = decoded.get("ts")
            if self._skip and ts == self._group_ts:
                self._skip -= 1
                continue
            self._skip = 0
            self.last_ts = ts if isinstance(ts, Timestamp) else self.last_ts
            return decoded

    def tx_offset(self, entry: Mapping[str, Any]) -> int:
        """Real MongoDB gives every entry its own ts; some servers write each operation of a
        transaction as its own entry with the transaction's ts. Count on across those."""
        ts = entry.get("ts")
        if ts == self._group_ts:
            offset, self._group_seen = self._group_next, self._group_seen + 1
        else:
            offset, self._group_seen = 0, 1
        self._group_ts = ts if isinstance(ts, Timestamp) else None
        self._group_next = offset + _oplog_ops(entry)
        return offset

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None


class OtrCapture:
    """publish-redis's capture, as OTR reads: each document read is one event of op "raw" (the
    decoded change event or oplog entry), its position's index OTR's transaction index. A position
    inside a transaction (index > 0) or without a token resumes at its time, inclusive, so the
    transaction's indexes are counted again from its first event; the dedupe keys absorb the rest."""

    def __init__(self, client: Client, capture: Literal["change-stream", "oplog"], start: Position) -> None:
        self.reader: ChangeStreamReader | OplogReader = (
            OplogReader(client) if capture == "oplog" else ChangeStreamReader(client))
        token = start.token if start.index == 0 else None
        try:
            self.reader.open(StartPoint(ts=start.ts, token=token))
        except OperationFailure as exc:
            if token is None or exc.code not in INVALID_TOKEN_CODES:
                raise
            log.warning("cannot resume after the stored token (%s); resuming from its timestamp",
                        (exc.details or {}).get("errmsg", exc.code))
            self.reader.close()
            self.reader.open(StartPoint(ts=start.ts))

    def next_batch(self, max_events: int) -> Batch:
        batch = Batch()
        deadline = time.monotonic() + MAX_BATCH_WAIT_S
        while batch.events < max_events and time.monotonic() < deadline:
            doc = self.reader.next()
            if doc is None:
                batch.idle = True
                break
            batch.units.append([self._event(doc)])
        if batch.units:
            batch.position = batch.units[-1][-1].position
        return batch

    def _event(self, doc: Mapping[str, Any]) -> ChangeEvent:
        if isinstance(self.reader, ChangeStreamReader):
            index = self.reader.indexer.index(doc)
            ts, wall = doc.get("clusterTime"), doc.get("wallTime")
            token = dict(doc["_id"]) if "lsid" not in doc and isinstance(doc.get("_id"), Mapping) else None
            ns_doc = doc.get("ns") or {}
            ns = f"{ns_doc.get('db')}.{ns_doc.get('coll')}"
        else:
            index = self.reader.tx_offset(doc)
            ts, wall, token, ns = doc.get("ts"), doc.get("wall"), None, str(doc.get("ns", ""))
        position = Position(ts if isinstance(ts, Timestamp) else Timestamp(0, 0), index, token)
        return ChangeEvent(op="raw", ns=ns, position=position, wall=wall, raw=doc)

    def close(self) -> None:
        self.reader.close()
