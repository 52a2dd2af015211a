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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from bson.timestamp import Timestamp

if TYPE_CHECKING:
    from pymongo.change_stream import ChangeStream
    from pymongo.cursor import Cursor

    from mongoferry.infra.clients import Client

log = logging.getLogger("mongoferry.publish_redis")

__all__ = [
    "ChangeStreamReader",
    "HistoryLost",
    "OplogReader",
    "StartPoint",
    "TxIndexer",
]

PUBLISHED_TYPES: Final = ("insert", "update", "replace", "delete")
AWAIT_MS: Final = 500
UNKNOWN_FIELD_CODES: Final = (40415,)  # IDLUnknownField: showRawUpdateDescription before MongoDB 6.0

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


class HistoryLost(Exception):
    """The source no longer holds the start position."""


def _watch_with_raw_updates(client: Client, pipeline: list[dict[str, Any]],
                            kwargs: dict[str, Any]) -> ChangeStream[Any]:
    """``client.watch(pipeline, **kwargs)`` that also asks for ``showRawUpdateDescription``.

    MongoDB 6.0+ then sends each update's oplog diff (``rawUpdateDescription``), from which
    the changed fields are exactly OTR's, in OTR's order. PyMongo has no parameter for it, so
    this adds it to the ``$changeStream`` stage, the one thing ``ClusterChangeStream`` builds.
    """
    from pymongo.change_stream import ClusterChangeStream

    class RawUpdateChangeStream(ClusterChangeStream[Any]):
        def _change_stream_options(self) -> dict[str, Any]:
            options = super()._change_stream_options()
            options["showRawUpdateDescription"] = True
            return options

    stream = RawUpdateChangeStream(
        client.admin, pipeline, None, None, kwargs.get("max_await_time_ms"), None, None,
        kwargs.get("start_at_operation_time"), None, kwargs.get("start_after"), None, None,
        show_expanded_events=kwargs.get("show_expanded_events"))
    stream._initialize_cursor()
    return stream


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

        from mongoferry.source.capture import HISTORY_LOST_CODES

        kwargs: dict[str, Any] = {"show_expanded_events": True, "max_await_time_ms": AWAIT_MS}
        if start.token is not None:
            kwargs["start_after"] = start.token
        elif start.ts is not None:
            kwargs["start_at_operation_time"] = start.ts
            self.indexer.reset()  # the whole transaction at ts is read again, from its first event
        pipeline = [{"$match": {"operationType": {"$in": list(PUBLISHED_TYPES)}}}]
        try:
            if self.raw_updates is not False:
                try:
                    self.stream = _watch_with_raw_updates(self.client, pipeline, kwargs)
                    self.raw_updates = True
                    return
                except OperationFailure as exc:
                    if exc.code not in UNKNOWN_FIELD_CODES and "showRawUpdateDescription" not in str(exc):
                        raise
                    log.info("MongoDB has no raw update descriptions (6.0+): changed fields come from "
                             "updateDescription")
                    self.raw_updates = False
            self.stream = self.client.watch(pipeline, **kwargs)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise HistoryLost(f"code {exc.code}") from None
            raise

    def next(self) -> Mapping[str, Any] | None:
        from pymongo.errors import OperationFailure

        from mongoferry.source.capture import HISTORY_LOST_CODES

        assert self.stream is not None
        try:
            change = _decoded(self.stream.try_next())
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise HistoryLost(f"code {exc.code}") from None
            raise
        if change is not None and isinstance(change.get("clusterTime"), Timestamp):
            self.last_ts = change["clusterTime"]
        return change

    def resume_point(self, current: StartPoint) -> StartPoint:
        """Where to reopen after an error: right after what was read (the stream's latest token)."""
        token = self.stream.resume_token if self.stream is not None else None
        return StartPoint(ts=self.last_ts, token=token) if token is not None else current

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
        from pymongo.cursor import CursorType

        oplog = self.client.local["oplog.rs"]
        self._skip = 0
        if start.continuing:
            # After an error: continue exactly after the last entry handled.
            op = "$gte" if self._group_seen else "$gt"
            self._skip = self._group_seen
            query: dict[str, Any] = {"ts": {op: start.ts}} if start.ts is not None else {}
        elif start.ts is None:
            newest = oplog.find_one({}, sort=[("$natural", -1)], projection={"ts": 1})
            self.last_ts = newest["ts"] if newest else None
            self._group_ts, self._group_next, self._group_seen = None, 0, 0
            query = {"ts": {"$gt": self.last_ts}} if self.last_ts is not None else {}
        else:
            oldest = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
            if oldest is None or oldest["ts"] > start.ts:
                raise HistoryLost(f"the oldest oplog entry is {oldest['ts'] if oldest else 'missing'}")
            self.last_ts = start.ts
            self._group_ts, self._group_next, self._group_seen = None, 0, 0
            query = {"ts": {"$gte": start.ts}}  # a transaction split by a batch is read again whole
        self.cursor = oplog.find(query, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(AWAIT_MS)

    def next(self) -> Mapping[str, Any] | None:
        from pymongo.errors import OperationFailure

        from mongoferry.source.capture import HISTORY_LOST_CODES

        while True:
            if self.cursor is None or not self.cursor.alive:
                self.open(StartPoint(ts=self.last_ts, continuing=True))
            assert self.cursor is not None
            try:
                entry = next(self.cursor)
            except StopIteration:
                return None
            except OperationFailure as exc:
                if exc.code in HISTORY_LOST_CODES:
                    raise HistoryLost(f"code {exc.code}") from None
                raise
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

    def resume_point(self, current: StartPoint) -> StartPoint:
        return StartPoint(ts=self.last_ts, continuing=True) if self.last_ts is not None else current

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None
