"""`mongoferry publish-redis`: what tulip/oplogtoredis does, byte for byte, through mongos too.

Every insert, update, replace and delete (also inside transactions) is published to
``<db>.<coll>`` and then ``<db>.<coll>::<id>`` in redis-oplog's format (built by
:mod:`mongoferry.redis_format`), through one atomic Lua script per batch that publishes
only what no other instance published before (:mod:`mongoferry.redis_sink`).

Capture: a change stream on the whole deployment (the default; it works through
mongos) or, with ``--capture oplog``, tailing ``local.oplog.rs`` of a replica-set member
as OTR does. Change events carry no transaction index, so it is counted as OTR counts it
in an ``applyOps`` entry: 0 outside transactions; within a transaction, consecutive
events with the same ``lsid`` + ``txnNumber`` + ``clusterTime`` get 0, 1, 2, ...

Resume: after publishing, the position of the last accepted publication is stored in
Redis as OTR stores it (``<prefix>lastProcessedEntry.0`` = ``(T<<32)|I``), plus the
change stream resume token under ``<prefix>resumeToken``. At start, a position younger
than the max catch-up is resumed from (right after the token; from the timestamp itself
when the last publication was inside a transaction, whose indexes must be counted from
its first event, or when there is no token: the dedupe keys absorb what is sent again).
An older position, or none, starts at the end; a skipped span is logged and exported.

Configuration layers: flags > MONGOFERRY_* > OTR_* (oplogtoredis's own variables) >
config file > defaults.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import click
from bson import json_util
from bson.dbref import DBRef
from bson.timestamp import Timestamp
from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from mongoferry.config import LogFormat, Settings, StrList, load_settings, split_list
from mongoferry.errors import EXIT_OK, ConnectError, MongoferryError, UsageError
from mongoferry.redact import redact
from mongoferry.redis_format import (
    DEFAULT_DEDUPE_TTL_SECONDS,
    DEFAULT_METADATA_PREFIX,
    PROBLEM_UNPROCESSABLE_FIELD,
    Publication,
    dedupe_key,
    last_processed_key,
    parse_resume_value,
    publications_from_change_event,
    publications_from_oplog_entry,
    resume_value,
)

if TYPE_CHECKING:
    from pymongo.change_stream import ChangeStream
    from pymongo.cursor import Cursor
    from starlette.applications import Starlette

    from mongoferry.clients import Client
    from mongoferry.redis_sink import Outgoing, PublishMetrics, RedisClient, RedisPublisher

log = logging.getLogger("mongoferry.publish_redis")

__all__ = [
    "OTR_VARIABLES",
    "PublishRedisSettings",
    "TxIndexer",
    "parse_go_duration",
    "publish_redis_command",
    "run_publish_redis",
]

PUBLISHED_TYPES: Final = ("insert", "update", "replace", "delete")
AWAIT_MS: Final = 500
DRAIN_TIMEOUT_S: Final = 15.0
RECONNECT_MAX_S: Final = 5.0
HEALTH_TIMEOUT_S: Final = 2.0
INVALID_TOKEN_CODES: Final = (9, 260)  # FailedToParse, InvalidResumeToken
UNKNOWN_FIELD_CODES: Final = (40415,)  # IDLUnknownField: showRawUpdateDescription before MongoDB 6.0

# --------------------------------------------------------------------------- configuration

_GO_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                    "h": 3600.0}
_GO_PART: Final = re.compile("([0-9]*(?:\\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string: ``"1s"``, ``"500ms"``, ``"2m"``, ``"1h30m"``, ``"0"``."""
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as 1s, 500ms, 2m or 1h30m)")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _seconds(value: Any) -> Any:
    """Durations may be given as seconds (``120``, ``0.5``) or in Go syntax (``2m``, ``500ms``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return parse_go_duration(value)
    return value


def _whole_seconds(value: Any) -> Any:
    value = _seconds(value)
    if isinstance(value, float) and math.isfinite(value):
        return int(value)  # as OTR: int(d.Seconds())
    return value




_GO_BOOLS: Final = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
                    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _otr_text(name: str, value: str) -> Any:
    return value


def _otr_duration(name: str, value: str) -> Any:
    try:
        return parse_go_duration(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a Go duration",
                         f"for example {name}=120s, 2m or 500ms") from None


def _otr_bool(name: str, value: str) -> Any:
    if value not in _GO_BOOLS:
        raise UsageError(f"{name}={value!r} is not a boolean", f"use {name}=true or {name}=false")
    return _GO_BOOLS[value]


def _otr_int(name: str, value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not an integer", f"for example {name}=1") from None


def _otr_http(name: str, value: str) -> Any:
    return "0.0.0.0" + value if value.startswith(":") else value  # Go's ":9000" listens on every interface


# OTR variable -> (settings field, converter). Earlier entries win when two name one field.
OTR_VARIABLES: Final[dict[str, tuple[str, Callable[[str, str], Any]]]] = {
    "OTR_MONGO_URL": ("mongo_url", _otr_text),
    "OTR_REDIS_URL": ("redis_url", _otr_text),
    "OTR_HTTP_SERVER_ADDR": ("http", _otr_http),
    "OTR_MAX_CATCH_UP": ("max_catch_up_s", _otr_duration),
    "OTR_REDIS_DEDUPE_EXPIRATION": ("dedupe_ttl_s", _otr_duration),
    "OTR_DEDUPE_EXPIRATION": ("dedupe_ttl_s", _otr_duration),
    "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES": ("deep_fields", _otr_bool),
    "OTR_REDIS_METADATA_PREFIX": ("metadata_prefix", _otr_text),
    "OTR_TIMESTAMP_FLUSH_INTERVAL": ("flush_interval_s", _otr_duration),
    "OTR_REDIS_BATCH_SIZE": ("batch_size", _otr_int),
    "OTR_MONGO_CONNECT_TIMEOUT": ("connect_timeout", _otr_duration),
    "OTR_LOG_DEBUG": ("log_level", lambda name, value: "debug"),  # any non-empty value, as OTR
    "OTR_LOG_QUIET": ("quiet", lambda name, value: True),  # any non-empty value, as OTR
}


class _OtrEnvSource(PydanticBaseSettingsSource):
    """oplogtoredis's own variables, so a deployment switches by changing only the command."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (field_name, convert) in OTR_VARIABLES.items():
            value = os.environ.get(name)
            if value and field_name not in out:
                out[field_name] = convert(name, value)
        return out


class _SrcAlias(PydanticBaseSettingsSource):
    """``src`` (as in the other commands) is another name for ``mongo_url`` within one layer."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = dict(self.inner())
        src = data.pop("src", None)
        if src is not None and data.get("mongo_url") is None:
            data["mongo_url"] = src
        return data


class PublishRedisSettings(Settings):
    log_format: LogFormat = "json"
    quiet: bool = Field(False, description="log nothing (OTR_LOG_QUIET)")
    mongo_url: str | None = Field(None, description="MongoDB connection string (mongos or replica set)")
    src: str | None = Field(None, description="another name for mongo_url")
    redis_url: StrList = Field(default_factory=list, description="Redis URLs; every one gets every message")
    http: str = Field("127.0.0.1:9000", description="HOST:PORT of /healthz and /metrics, or 'off'")
    max_catch_up_s: float = Field(120.0, ge=0, description="resume only from a position younger than this")
    dedupe_ttl_s: int = Field(DEFAULT_DEDUPE_TTL_SECONDS, ge=1, description="lifetime of the dedupe keys")
    metadata_prefix: str = Field(DEFAULT_METADATA_PREFIX, description="prefix of the keys mongoferry sets")
    deep_fields: bool = Field(False, description="dotted changed paths (OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES)")
    meteor_ids: bool = Field(False, description="per-document channels named by Meteor's MongoID.idStringify")
    capture: Literal["change-stream", "oplog"] = "change-stream"
    flush_interval_s: float = Field(1.0, gt=0, description="how often the position is stored")
    batch_size: int = Field(100, ge=1, le=10_000, description="most publications per script call")
    connect_timeout: float = Field(10.0, gt=0)

    _split = field_validator("redis_url", mode="before")(split_list)
    _durations = field_validator("max_catch_up_s", "flush_interval_s", "connect_timeout", mode="before")(_seconds)
    _ttl = field_validator("dedupe_ttl_s", mode="before")(_whole_seconds)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init, env, file = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings)
        return (_SrcAlias(settings_cls, init), _SrcAlias(settings_cls, env), _OtrEnvSource(settings_cls),
                _SrcAlias(settings_cls, file))


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


def _epoch(wall: Any, ts: Timestamp) -> float:
    import datetime as dt

    if isinstance(wall, dt.datetime):
        return (wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)).timestamp()
    return float(ts.time)


def _flattened_update(change: Mapping[str, Any]) -> Mapping[str, Any]:
    """In deep mode, the leaf paths of document values in ``updatedFields``, as OTR lists them.

    OTR's deep converter walks each new value (``flatKeys``): ``$set {n: {a: {b: 1}}}`` gives
    ``n.a.b``, not ``n``. A change event without ``rawUpdateDescription`` (MongoDB before 6.0,
    or servers that do not offer it) only has ``updatedFields``, so its document values are
    flattened the same way before the fields are read from it. Arrays and empty documents stay.
    """
    desc = change.get("updateDescription")
    if change.get("operationType") != "update" or "rawUpdateDescription" in change or not isinstance(desc, Mapping):
        return change
    updated = desc.get("updatedFields")
    if not isinstance(updated, Mapping) or not any(_nonempty_doc(v) for v in updated.values()):
        return change
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        doc = value.as_doc() if isinstance(value, DBRef) else value
        if isinstance(doc, Mapping) and doc:
            for k, v in doc.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for key, value in updated.items():
        walk(str(key), value)
    return {**change, "updateDescription": {**desc, "updatedFields": flat}}


def _nonempty_doc(value: Any) -> bool:
    return isinstance(value, DBRef) or (isinstance(value, Mapping) and bool(value))


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
        return f"at {resume_value(self.ts)}" if self.ts is not None else "at the end"


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


class _ChangeStreamReader:
    """A deployment-wide change stream (works through mongos)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.stream: ChangeStream[dict[str, Any]] | None = None
        self.indexer = TxIndexer()
        self.last_ts: Timestamp | None = None
        self.raw_updates: bool | None = None  # None: not known yet whether the server offers them

    def open(self, start: StartPoint) -> None:
        from pymongo.errors import OperationFailure

        from mongoferry.capture import HISTORY_LOST_CODES

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

        from mongoferry.capture import HISTORY_LOST_CODES

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


class _OplogReader:
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

        from mongoferry.capture import HISTORY_LOST_CODES

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


# --------------------------------------------------------------------------- the job


class PublishJob:
    def __init__(self, settings: PublishRedisSettings, mongo: Client, publishers: list[RedisPublisher],
                 metrics: PublishMetrics, stop: threading.Event) -> None:
        self.s = settings
        self.mongo = mongo
        self.publishers = publishers
        self.metrics = metrics
        self.stop = stop
        self.reader: _ChangeStreamReader | _OplogReader = (
            _OplogReader(mongo) if settings.capture == "oplog" else _ChangeStreamReader(mongo))

    # ------------------------------------------------------------ start position
    def initial_start(self) -> StartPoint:
        """OTR's rule: resume from the stored position if younger than the max catch-up, else the end."""
        from redis.exceptions import RedisError

        from mongoferry.redis_sink import read_position

        first = self.publishers[0]
        key = last_processed_key(0, self.s.metadata_prefix)
        for attempt in range(5):
            try:
                stored = read_position(first.client, self.s.metadata_prefix)
                break
            except RedisError as exc:
                if attempt == 4:
                    raise ConnectError(f"cannot read {key} from Redis {first.target.shown}: {redact(str(exc))}",
                                       "check the Redis server; rerun the same command") from None
                time.sleep(0.5 * (attempt + 1))
        if stored.raw is None:
            log.info("no stored position: starting at the end", extra={"key": key})
            return StartPoint()
        try:
            ts = parse_resume_value(stored.raw)
        except ValueError as exc:
            log.error("the stored position is unusable, starting at the end: %s", exc, extra={"key": key})
            return StartPoint()
        age = time.time() - ts.time
        if age > self.s.max_catch_up_s:
            self.report_skip(ts, f"the stored position is {age:.1f}s old, more than the max catch-up of "
                                 f"{self.s.max_catch_up_s:g}s")
            return StartPoint()
        if self.s.capture == "change-stream" and stored.token:
            try:
                token = json_util.loads(stored.token)
                if isinstance(token, Mapping):
                    return StartPoint(ts=ts, token=token)
            except ValueError:
                log.warning("the stored resume token is unusable; resuming from the stored timestamp")
        return StartPoint(ts=ts)

    def report_skip(self, since: Timestamp | None, why: str) -> None:
        span = max(0.0, time.time() - since.time) if since is not None else 0.0
        log.warning("starting at the end, skipping %.1fs of changes: %s", span, why,
                    extra={"skippedSeconds": round(span, 3),
                           "skippedFrom": resume_value(since) if since is not None else None})
        self.metrics.catch_up_skipped.set(span)
        self.metrics.catch_up_skips.inc()

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        from pymongo.errors import OperationFailure, PyMongoError

        start = self.initial_start()
        announced = False
        pause = 0.2
        failing_since: float | None = None
        last_log = 0.0
        while not self.stop.is_set():
            opened = False
            try:
                self.open(start)
                opened = True
                if not announced:
                    announced = True
                    log.info("publishing to Redis %s", start.describe(),
                             extra={"capture": self.s.capture, "redis": [p.target.shown for p in self.publishers],
                                    "start": resume_value(start.ts) if start.ts is not None else None})
                if failing_since is not None:
                    log.warning("MongoDB is back: reading again after %.1fs", time.time() - failing_since)
                    failing_since, pause = None, 0.2
                self.pump()
            except HistoryLost as exc:
                self.report_skip(self.reader.last_ts or start.ts, f"MongoDB no longer holds the position ({exc})")
                self.reader.close()
                start = StartPoint()
            except PyMongoError as exc:
                if (not opened and isinstance(exc, OperationFailure) and start.token is not None
                        and start.ts is not None and exc.code in INVALID_TOKEN_CODES):
                    log.warning("cannot resume after the stored token (%s); resuming from its timestamp",
                                redact(str((exc.details or {}).get("errmsg", exc))))
                    start = StartPoint(ts=start.ts)
                    continue
                start = self.reader.resume_point(start)
                self.reader.close()
                now = time.time()
                if failing_since is None:
                    failing_since = last_log = now
                    log.warning("lost MongoDB, retrying: %s", redact(str(exc)))
                elif now - last_log >= 30:
                    last_log = now
                    log.warning("still cannot read from MongoDB after %.0fs: %s", now - failing_since,
                                redact(str(exc)))
                self.stop.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)
        self.reader.close()
        return EXIT_OK

    def open(self, start: StartPoint) -> None:
        self.reader.close()
        self.reader.open(start)

    def pump(self) -> None:
        """Read and queue until stopped; errors propagate to :meth:`run`."""
        while not self.stop.is_set():
            doc = self.reader.next()
            if doc is None:
                self.check_publishers()
                continue
            self.handle(doc)

    def check_publishers(self) -> None:
        for p in self.publishers:
            if not p.thread.is_alive():
                raise MongoferryError(f"the publisher for Redis {p.target.shown} stopped",
                                      "see the log above; rerun the same command to resume")

    def handle(self, doc: Mapping[str, Any]) -> None:
        from mongoferry.redis_sink import Outgoing

        self.metrics.events_received.inc()
        token: str | None = None
        if isinstance(self.reader, _ChangeStreamReader):
            tx_index = self.reader.indexer.index(doc)
            if self.s.deep_fields:
                doc = _flattened_update(doc)
            pubs, problems = publications_from_change_event(
                doc, tx_index=tx_index, deep_fields=self.s.deep_fields, meteor_ids=self.s.meteor_ids,
                metadata_prefix=self.s.metadata_prefix)
            ts, wall = doc.get("clusterTime"), doc.get("wallTime")
            if "lsid" not in doc and isinstance(doc.get("_id"), Mapping):
                token = json_util.dumps(doc["_id"])
        else:
            offset = self.reader.tx_offset(doc)
            pubs, problems = publications_from_oplog_entry(
                doc, deep_fields=self.s.deep_fields, meteor_ids=self.s.meteor_ids,
                metadata_prefix=self.s.metadata_prefix)
            if offset:
                pubs = [_shifted(p, offset, self.s.metadata_prefix) for p in pubs]
            ts, wall = doc.get("ts"), doc.get("wall")
        if isinstance(ts, Timestamp):
            written_at = _epoch(wall, ts)
            self.metrics.last_received_staleness.set(max(0.0, time.time() - written_at))
        self.report(problems)
        for p in pubs:
            item: Outgoing = Outgoing(p, _epoch(wall, p.ts), token)
            for publisher in self.publishers:
                if not publisher.put(item, self.stop):
                    if not self.stop.is_set():
                        self.check_publishers()
                    return

    def report(self, problems: list[str]) -> None:
        for problem in problems:
            category = problem.partition(":")[0]
            if category == PROBLEM_UNPROCESSABLE_FIELD:
                self.metrics.unprocessable_fields.inc()
                log.warning("published without a changed field: %s", problem, extra={"problem": category})
            else:
                self.metrics.unpublishable.labels(category).inc()
                self.metrics.processed.labels("skipped").inc()
                log.error("not published: %s", problem, extra={"problem": category})


def _shifted(p: Publication, offset: int, prefix: str) -> Publication:
    index = p.tx_index + offset
    return replace(p, tx_index=index, dedupe_key=dedupe_key(p.ts, index, prefix))


# --------------------------------------------------------------------------- HTTP


def http_app(mongo: Client, health_clients: list[RedisClient], metrics: PublishMetrics) -> Starlette:
    """``/healthz`` (any method) and ``/metrics``, as OTR serves them."""
    import pymongo
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from redis.exceptions import RedisError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def mongo_ok() -> bool:
        try:
            with pymongo.timeout(HEALTH_TIMEOUT_S):
                mongo.admin.command("ping")
            return True
        except Exception:
            return False

    def redis_ok() -> bool:
        try:
            return all(bool(c.ping()) for c in health_clients)
        except (RedisError, OSError):
            return False

    def healthz(request: Request) -> Response:  # sync: starlette runs it in a worker thread
        state = {"mongoOK": mongo_ok(), "redisOK": redis_ok()}
        body = json.dumps(state, sort_keys=True, separators=(",", ":")) + "\n"
        return Response(body, status_code=200 if all(state.values()) else 500, media_type="application/json")

    def metrics_page(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    any_method = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return Starlette(routes=[Route("/healthz", healthz, methods=any_method),
                             Route("/metrics", metrics_page, methods=["GET", "HEAD"])])


# --------------------------------------------------------------------------- entry point


def run_publish_redis(settings: PublishRedisSettings) -> int:
    """Validate, connect, publish until SIGTERM/SIGINT. Exit 2 on bad input, 3 when unreachable."""
    from mongoferry.clients import connect, validate_uri
    from mongoferry.redact import redact_uri
    from mongoferry.redis_sink import (
        PublishMetrics,
        RedisPublisher,
        check_redis,
        open_redis,
        parse_redis_urls,
    )
    from mongoferry.runtime import stop_on_signals
    from mongoferry.server import HttpServer, parse_bind

    # 1. Everything that can be checked without a server.
    targets = parse_redis_urls(settings.redis_url)
    mongo_uri = validate_uri(settings.mongo_url, "--mongo-url")
    http_text = settings.http
    bind = parse_bind("0.0.0.0" + http_text if http_text.startswith(":") else http_text, "--http")
    timeout = settings.connect_timeout
    redis_timeout = min(timeout, 5.0)
    clients = [open_redis(t, redis_timeout) for t in targets]
    health = [open_redis(t, HEALTH_TIMEOUT_S) for t in targets]  # one quick retry: a restart breaks pooled sockets

    # 2. The servers.
    from bson.raw_bson import RawBSONDocument

    # Raw documents, decoded here with surrogateescape: invalid UTF-8 then reaches the channel
    # names and messages as OTR writes it, instead of failing the decoding.
    mongo = connect(mongo_uri, "MongoDB server", timeout, document_class=RawBSONDocument)
    http: HttpServer | None = None
    publishers: list[RedisPublisher] = []
    try:
        for target, client in zip(targets, clients, strict=True):
            check_redis(client, target, redis_timeout)
        _check_capture(mongo, settings)
        metrics = PublishMetrics()
        publishers = [RedisPublisher(t, c, metrics, ttl_s=settings.dedupe_ttl_s,
                                     metadata_prefix=settings.metadata_prefix,
                                     max_catch_up_s=settings.max_catch_up_s,
                                     flush_interval_s=settings.flush_interval_s, batch_size=settings.batch_size)
                      for t, c in zip(targets, clients, strict=True)]
        if bind is not None:
            http = HttpServer(http_app(mongo, health, metrics), *bind).start()
        for p in publishers:
            p.start()
        log.info("publish-redis started", extra={"mongo": redact_uri(mongo_uri),
                                                 "redis": [t.shown for t in targets],
                                                 "http": f"{bind[0]}:{bind[1]}" if bind else "off"})
        with stop_on_signals() as stop:
            job = PublishJob(settings, mongo, publishers, metrics, stop)
            try:
                code = job.run()
            finally:
                stop.set()
                complete = all([p.finish(DRAIN_TIMEOUT_S) for p in publishers])
                if not complete:
                    log.warning("stopped before Redis took every message; a restart publishes them")
        log.info("publish-redis stopped; run the same command to continue")
        return code
    finally:
        if http is not None:
            http.stop()
        mongo.close()
        for c in clients + health:
            c.close()


def _check_capture(mongo: Client, settings: PublishRedisSettings) -> None:
    from pymongo.errors import OperationFailure

    from mongoferry.clients import driver_errors

    with driver_errors("opening the change capture"):
        if settings.capture == "oplog":
            if mongo.local["oplog.rs"].find_one({}, projection={"ts": 1}) is None:
                raise UsageError("--capture oplog needs a replica-set member with an oplog",
                                 "connect to a replica-set member, or use the default change streams")
            return
        try:
            mongo.watch(max_await_time_ms=10).close()
        except OperationFailure as exc:
            raise UsageError(f"MongoDB cannot open a change stream: {(exc.details or {}).get('errmsg', exc)}",
                             "change streams need a replica set or a sharded cluster (MongoDB 4.0+)") from None


def configure_logging(settings: PublishRedisSettings) -> None:
    from mongoferry.logs import resolve_format, setup_logging

    fmt = resolve_format(settings.log_format)
    setup_logging("json" if fmt == "json" else "text", "critical" if settings.quiet else settings.log_level)


def _env(text: str, name: str, otr: str | None = None) -> str:
    return f"{text} [env: MONGOFERRY_{name.upper()}" + (f", {otr}]" if otr else "]")


@click.command("publish-redis", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--mongo-url", "--src", "mongo_url", metavar="URI",
              help=_env("MongoDB connection string (mongos or replica set).", "mongo_url", "OTR_MONGO_URL"))
@click.option("--redis-url", metavar="URL[,URL...]",
              help=_env("Redis URL(s), comma-separated; each gets every message. redis://, rediss:// or "
                        "redis-sentinel://.", "redis_url", "OTR_REDIS_URL"))
@click.option("--http", metavar="HOST:PORT",
              help=_env("Serve /healthz and /metrics here, or 'off' (default 127.0.0.1:9000).", "http",
                        "OTR_HTTP_SERVER_ADDR"))
@click.option("--capture", type=click.Choice(["change-stream", "oplog"]),
              help=_env("Change streams (default; works through mongos) or tailing local.oplog.rs.", "capture"))
@click.option("--max-catch-up", "max_catch_up_s", metavar="DURATION",
              help=_env("Resume only from a stored position younger than this (default 120s; seconds or Go "
                        "duration).", "max_catch_up_s", "OTR_MAX_CATCH_UP"))
@click.option("--dedupe-ttl", "dedupe_ttl_s", metavar="DURATION",
              help=_env("Lifetime of the dedupe keys (default 150s).", "dedupe_ttl_s", "OTR_REDIS_DEDUPE_EXPIRATION"))
@click.option("--metadata-prefix", help=_env("Prefix of the dedupe and position keys (default oplogtoredis::).",
                                             "metadata_prefix", "OTR_REDIS_METADATA_PREFIX"))
@click.option("--deep-fields/--no-deep-fields", default=None,
              help=_env("List dotted changed paths, not top-level names.", "deep_fields",
                        "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES"))
@click.option("--meteor-ids/--no-meteor-ids", default=None,
              help=_env("Name per-document channels with Meteor's MongoID.idStringify (and publish numeric ids).",
                        "meteor_ids"))
@click.option("--flush-interval", "flush_interval_s", metavar="DURATION",
              help=_env("How often the position is stored (default 1s).", "flush_interval_s",
                        "OTR_TIMESTAMP_FLUSH_INTERVAL"))
@click.option("--batch-size", type=int,
              help=_env("Most publications per script call (default 100).", "batch_size", "OTR_REDIS_BATCH_SIZE"))
@click.option("--connect-timeout", metavar="SECONDS",
              help=_env("Seconds to wait for each server (default 10).", "connect_timeout",
                        "OTR_MONGO_CONNECT_TIMEOUT"))
@click.option("--config", type=click.Path(dir_okay=False), help="YAML file of options (lowest precedence).")
@click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text"]),
              help=_env("Log style (default json).", "log_format"))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help=_env("Log level (default info).", "log_level", "OTR_LOG_DEBUG"))
@click.option("--quiet", is_flag=True, default=None, help=_env("Log nothing.", "quiet", "OTR_LOG_QUIET"))
@click.pass_context
def publish_redis_command(ctx: click.Context, /, **values: Any) -> None:
    """Publish every insert, update, replace and delete to Redis for Meteor's redis-oplog,
    byte-compatible with tulip/oplogtoredis (a drop-in: it also reads its OTR_* variables).

    Run two or three instances for high availability: a Lua script publishes each
    message once. Stops on SIGTERM/Ctrl-C after storing its position; the same
    command resumes. GET /healthz and /metrics on --http.
    """
    from mongoferry.cli import given, run_guarded

    def job() -> int:
        config = values.get("config")
        settings = load_settings(PublishRedisSettings, given(ctx, **values), Path(config) if config else None)
        configure_logging(settings)
        return run_publish_redis(settings)

    run_guarded(job)


if __name__ == "__main__":  # before it is wired into the CLI: python -m mongoferry.publish_redis …
    publish_redis_command()
