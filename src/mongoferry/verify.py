"""`mongoferry verify`: prove that the destination holds what the source holds.

Two modes share one comparison engine:

* ``--check-only``: one full pass, a report, exit 0 (identical) or 4 (differences).
* server mode (default): a migration-verifier compatible HTTP API with change tracking and
  recheck generations (see :mod:`mongoferry.verify_server`).

What is compared, per selected namespace pair (source -> destination):

* the collection spec (type, options, views' ``viewOn``/``pipeline``, ``readOnly``) with
  :func:`compare.compare_collection_specs`; a namespace present on one side only is a finding
  and its data is not compared;
* the indexes with :func:`compare.compare_index_specs` (collections only);
* the documents, paired *type-exactly* by ``_id`` (:func:`compare.id_key_from_raw_document`),
  both sides read as raw BSON and compared with :func:`compare.compare_raw_documents`.

Bounded memory: the merge join
------------------------------
Each ``_id`` range (one per namespace, or several from :func:`partition.plan` for big
collections; ranges run in parallel on ``--workers`` threads) is read on both sides with a
cursor sorted by ``_id`` and hinted to the ``_id`` index, in raw batches, each side prefetched
by its own thread (a few batches ahead). The two sorted streams are merge-joined:

1. equal pairing keys at the heads of both streams are a pair: compare, advance both;
2. otherwise the head whose ``_id`` sorts first (by :func:`id_sort_key`, a re-implementation of
   the server's BSON sort order: type brackets, numbers by value across types, strings by
   bytes, ...) is on its side only *so far*: it goes into a small "suspects" buffer and that
   side advances. Two keys in the same sort position but of different types (int32 ``1`` vs
   int64 ``1``) are both suspects.
3. Suspects are settled in batches (at most :data:`SUSPECT_BATCH` documents): a key suspected
   on both sides is a pair; the others are looked up by ``_id`` on the other side (a batched
   ``$in`` with the exact BSON values). Only a document the lookup does not find is reported
   missing or extra. A document found by lookup (our sort order disagreed with the server's,
   e.g. a collection with a collation, or a concurrent write) is compared at once and its key
   is remembered so that the other stream skips it when it arrives.

So memory holds a few raw batches per side and worker, the suspects buffer and the findings
kept for display; never a whole collection. Correctness does not depend on our sort order
matching the server's: a disagreement costs a lookup, not a false finding.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import queue
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar, cast

import bson
import click
from bson import json_util
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.raw_bson import RawBSONDocument
from pydantic import Field, field_validator
from pymongo.errors import ExecutionTimeout

from mongoferry import catalog, partition
from mongoferry.clients import DECODED, RAW, Client, driver_errors
from mongoferry.compare import (
    CompareMode,
    FieldDiff,
    compare_collection_specs,
    compare_index_specs,
    compare_raw_documents,
    id_key_from_raw_document,
    mismatch_detail,
)
from mongoferry.config import ConnectionSettings, StrList, split_list
from mongoferry.errors import EXIT_INCONSISTENT, EXIT_OK, MongoferryError, UsageError
from mongoferry.namespaces import NamespaceMap, split_ns
from mongoferry.state import Partition

log = logging.getLogger("mongoferry.verify")

F = TypeVar("F", bound=Callable[..., Any])

#: Documents per read batch.
BATCH_SIZE: Final = 1000
#: Suspected missing/extra documents settled by one lookup round.
SUSPECT_BATCH: Final = 256
#: Bytes of suspected documents held before they are settled.
SUSPECT_BYTES: Final = 16 * 1024 * 1024
#: Field differences kept per document.
MAX_DIFFS: Final = 25
#: Raw batches a reader thread may hold ahead of the merge.
PREFETCH_BATCHES: Final = 3
#: Smallest range a big collection is cut into.
MIN_PARTITION_DOCS: Final = 10_000
#: Longest display text of a value (relaxed extended JSON) before it is cut.
MAX_VALUE_TEXT: Final = 512

FindingType = Literal["missingOnDst", "extraOnDst", "content"]
_INT32: Final = struct.Struct("<i")
_INT64: Final = struct.Struct("<q")
_UINT64: Final = struct.Struct("<Q")
_DOUBLE: Final = struct.Struct("<d")


# ======================================================================================
# Settings
# ======================================================================================




class VerifySettings(ConnectionSettings):
    """Settings of ``mongoferry verify`` (flags, MONGOFERRY_* env, YAML file)."""

    port: int = Field(27020, ge=0, le=65535, description="HTTP API port on 127.0.0.1 (0 = any free port)")
    check_only: bool = Field(False, description="one full pass, a report and an exit code; no server")
    compare: CompareMode = "ignore-order"
    failure_display_size: int = Field(20, ge=1, description="findings shown; the rest are counted")
    workers: int = Field(4, ge=1, le=64)
    partition_docs: int = Field(50_000, ge=100, description="target documents per _id range")
    src_namespace: StrList = Field(default_factory=list)
    dst_namespace: StrList = Field(default_factory=list)
    start: bool = Field(False, description="server mode: start checking at once, without POST /api/v1/check")
    clean: bool = Field(False, description="server mode: forget the saved verification state first")

    _split_ns = field_validator("src_namespace", "dst_namespace", mode="before")(split_list)


# ======================================================================================
# BSON: pairing keys, sort order, raw filters
# ======================================================================================

_FIXED: Final[Mapping[int, int]] = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4,
                                    0x11: 8, 0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}
# The server's canonical type order (BSON "type brackets").
_CANON: Final[Mapping[int, int]] = {0xFF: -1, 0x06: 0, 0x0A: 5, 0x01: 10, 0x10: 10, 0x12: 10, 0x13: 10,
                                    0x02: 15, 0x0E: 15, 0x03: 20, 0x04: 25, 0x05: 30, 0x07: 35, 0x08: 40,
                                    0x09: 45, 0x11: 47, 0x0B: 50, 0x0C: 55, 0x0D: 60, 0x0F: 65, 0x7F: 127}


def _value_end(data: bytes, btype: int, pos: int) -> int:
    size = _FIXED.get(btype)
    if size is not None:
        return pos + size
    length = int(_INT32.unpack_from(data, pos)[0]) if btype != 0x0B else 0
    if btype in (0x02, 0x0D, 0x0E):
        return pos + 4 + length
    if btype in (0x03, 0x04, 0x0F):
        return pos + length
    if btype == 0x05:
        return pos + 5 + length
    if btype == 0x0B:
        return data.index(b"\x00", data.index(b"\x00", pos) + 1) + 1
    if btype == 0x0C:
        return pos + 4 + length + 12
    raise ValueError(f"unknown BSON type 0x{btype:02x}")


def _elements(data: bytes, off: int) -> Iterator[tuple[int, bytes, int, int]]:
    """(type, name, value start, value end) of the (sub)document whose length sits at off."""
    stop = off + _INT32.unpack_from(data, off)[0] - 1
    pos = off + 4
    while pos < stop:
        btype = data[pos]
        nul = data.index(b"\x00", pos + 1)
        end = _value_end(data, btype, nul + 1)
        yield btype, data[pos + 1: nul], nul + 1, end
        pos = end


def fast_id_key(raw: bytes) -> bytes:
    """:func:`compare.id_key_from_raw_document`, without a walk when ``_id`` comes first."""
    if raw[5:9] == b"_id\x00":
        btype = raw[4]
        size = _FIXED.get(btype)
        if size is not None:
            return raw[4:5] + raw[9: 9 + size]
        if btype == 0x02:
            return raw[4:5] + raw[9: 13 + _INT32.unpack_from(raw, 9)[0]]
    return id_key_from_raw_document(raw)


def _number_key(btype: int, data: bytes, start: int) -> tuple[Any, ...]:
    if btype == 0x10:
        return (1, Decimal(_INT32.unpack_from(data, start)[0]))
    if btype == 0x12:
        return (1, Decimal(_INT64.unpack_from(data, start)[0]))
    if btype == 0x01:
        value = _DOUBLE.unpack_from(data, start)[0]
        return (0,) if value != value else (1, Decimal(value))
    dec = Decimal128.from_bid(data[start: start + 16]).to_decimal()
    return (0,) if dec.is_nan() else (1, dec)


def _value_sort_key(btype: int, data: bytes, start: int, end: int) -> Any:
    canon = _CANON.get(btype)
    if canon == 10:
        return _number_key(btype, data, start)
    if canon == 15 or btype == 0x0D:
        return data[start + 4: end - 1]
    if btype in (0x03, 0x04):
        return tuple((_CANON.get(t, 200), name, _value_sort_key(t, data, s, e))
                     for t, name, s, e in _elements(data, start))
    if btype == 0x05:
        return (_INT32.unpack_from(data, start)[0], data[start + 4], data[start + 5: end])
    if btype == 0x08:
        return data[start]
    if btype == 0x09:
        return _INT64.unpack_from(data, start)[0]
    if btype == 0x11:
        return _UINT64.unpack_from(data, start)[0]
    if btype == 0x0B:
        mid = data.index(b"\x00", start)
        return (data[start:mid], data[mid + 1: end - 1])
    return data[start:end]  # objectId, dbPointer, code with scope, null, min/max key


def id_sort_key(key: bytes) -> tuple[Any, ...]:
    """A sort key ordering pairing keys (type byte + raw value) as the server sorts ``_id``."""
    btype = key[0]
    return (_CANON.get(btype, 200), _value_sort_key(btype, key, 1, len(key)))


def _element(key: bytes, name: bytes) -> bytes:
    return key[:1] + name + b"\x00" + key[1:]


def _document(body: bytes) -> bytes:
    return _INT32.pack(len(body) + 5) + body + b"\x00"


def raw_id_in_filter(keys: Sequence[bytes]) -> RawBSONDocument:
    """``{_id: {$in: [...]}}`` holding the exact BSON values of the pairing keys."""
    array = _document(b"".join(_element(k, str(i).encode()) for i, k in enumerate(keys)))
    inner = _document(b"\x04$in\x00" + array)
    return RawBSONDocument(_document(b"\x03_id\x00" + inner), RAW)


def id_value(key: bytes) -> Any:
    """The ``_id`` value of a pairing key, decoded for display."""
    try:
        return bson.decode(_document(_element(key, b"_id")), codec_options=_DISPLAY)["_id"]
    except Exception:  # an odd value must not stop a report
        return {"$binary": key.hex()}


_DISPLAY: Final[CodecOptions[dict[str, Any]]] = DECODED.with_options(tz_aware=True,
                                                                     unicode_decode_error_handler="replace")


def to_json_value(value: Any, limit: int = MAX_VALUE_TEXT) -> Any:
    """A BSON value as relaxed extended JSON (a JSON-compatible value); long ones become text."""
    try:
        text = json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS)
    except Exception:
        text = json.dumps(repr(value))
    if len(text) > limit:
        return text[:limit] + "…"
    return json.loads(text)


def _split_batch(batch: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos, end = 0, len(batch)
    unpack = _INT32.unpack_from
    while pos < end:
        size: int = unpack(batch, pos)[0]
        out.append(batch[pos: pos + size])
        pos += size
    return out


# ======================================================================================
# Findings
# ======================================================================================


@dataclass(frozen=True)
class Pair:
    """A source namespace and the destination namespace it must equal."""

    src_ns: str
    dst_ns: str

    def src_coll(self, client: Client, codec: CodecOptions[Any] = RAW) -> Any:
        db, coll = split_ns(self.src_ns)
        return client[db].get_collection(coll, codec_options=codec)

    def dst_coll(self, client: Client, codec: CodecOptions[Any] = RAW) -> Any:
        db, coll = split_ns(self.dst_ns)
        return client[db].get_collection(coll, codec_options=codec)


@dataclass
class DocFinding:
    """A document missing on the destination, extra on it, or with different content."""

    type: FindingType
    ns: str
    dst_ns: str
    key: bytes
    diffs: list[FieldDiff] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": "document", "type": self.type, "namespace": self.ns,
                               "dstNamespace": self.dst_ns, "_id": to_json_value(id_value(self.key))}
        if self.type == "content":
            out["diffs"] = [diff_to_json(d) for d in self.diffs]
        return out


@dataclass
class NsFinding:
    """A difference of a namespace's existence, type, options or indexes."""

    type: FindingType
    ns: str
    dst_ns: str
    aspect: str  # exist | type | spec | readOnly | index
    component: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": "namespace", "type": self.type, "namespace": self.ns,
                               "dstNamespace": self.dst_ns, "aspect": self.aspect}
        if self.component is not None:
            out["component"] = self.component
        if self.detail is not None:
            out["detail"] = self.detail
        return out


Finding = DocFinding | NsFinding

_KIND_NAMES: Final = {"missing_on_dst": "missingOnDst", "missing_on_src": "missingOnSrc", "value": "value",
                      "type": "type", "order": "order"}


def diff_to_json(d: FieldDiff) -> dict[str, Any]:
    return {"path": d.path, "field": d.top_field, "kind": _KIND_NAMES.get(d.kind, d.kind),
            "srcType": d.src_type, "dstType": d.dst_type,
            "src": to_json_value(d.src_value), "dst": to_json_value(d.dst_value),
            "detail": mismatch_detail(d)}


def _short(value: Any, limit: int = 60) -> str:
    text = json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS) if value is not None else "null"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_diff(d: FieldDiff) -> str:
    where = d.path or "(document)"
    if d.kind == "missing_on_dst":
        return f"{where}: missing on destination (source {_short(d.src_value)}, {d.src_type})"
    if d.kind == "missing_on_src":
        return f"{where}: extra on destination ({_short(d.dst_value)}, {d.dst_type})"
    if d.kind == "order":
        return f"{where}: field order differs: source {d.src_value} vs destination {d.dst_value}"
    return (f"{where}: source {_short(d.src_value)} ({d.src_type}) != destination "
            f"{_short(d.dst_value)} ({d.dst_type})")


def describe_finding(f: Finding) -> list[str]:
    """A finding as report lines (the first line names it, the next ones give details)."""
    if isinstance(f, NsFinding):
        ns = f.ns if f.ns == f.dst_ns else f"{f.ns} -> {f.dst_ns}"
        if f.aspect == "exist":
            where = "missing on destination" if f.type == "missingOnDst" else "only on destination"
            return [f"{ns}: namespace {where}"]
        what = {"type": "collection type", "readOnly": "readOnly", "spec": "collection spec",
                "index": "index"}.get(f.aspect, f.aspect)
        comp = f" {f.component}" if f.component else ""
        if f.type == "missingOnDst":
            return [f"{ns}: {what}{comp} missing on destination"]
        if f.type == "extraOnDst":
            return [f"{ns}: {what}{comp} only on destination"]
        lines = [f"{ns}: {what}{comp} differs"]
        lines += [f"    {line}" for line in (f.detail or "").splitlines()]
        return lines
    ident = _short(id_value(f.key), 80)
    if f.type == "missingOnDst":
        return [f"{f.ns}: document _id {ident} missing on destination"]
    if f.type == "extraOnDst":
        return [f"{f.dst_ns}: document _id {ident} only on destination"]
    return [f"{f.ns}: document _id {ident} differs", *(f"    {describe_diff(d)}" for d in f.diffs)]


class Sink:
    """Where the engine reports findings and progress (thread-safe implementations)."""

    def doc(self, finding: DocFinding) -> None:
        raise NotImplementedError

    def namespace(self, finding: NsFinding) -> None:
        raise NotImplementedError

    def progress(self, pair: Pair, src_docs: int, dst_docs: int, src_bytes: int, dst_bytes: int) -> None:
        """Called after every merged batch with the increments since the last call."""


# ======================================================================================
# The comparison engine
# ======================================================================================


@dataclass
class Engine:
    """Reads and compares; shared by the one-shot check and the server's workers."""

    src: Client
    dst: Client
    mode: CompareMode
    stop: threading.Event = field(default_factory=threading.Event)
    #: Can the source read an `_id` range through the index? Probed once per run (None: not yet).
    ranges_cheap: bool | None = None

    # ------------------------------------------------------------------ documents
    def compare_pair(self, pair: Pair, key: bytes, s_raw: bytes, d_raw: bytes, sink: Sink) -> bool:
        """Compare one pair; report and return False when it differs."""
        if s_raw == d_raw:
            return True
        diffs = compare_raw_documents(s_raw, d_raw, self.mode, max_diffs=MAX_DIFFS)
        if not diffs:
            return True
        sink.doc(DocFinding("content", pair.src_ns, pair.dst_ns, key, diffs))
        return False

    def fetch(self, client: Client, ns: str, keys: Sequence[bytes], filt: Mapping[str, Any] | None
              ) -> dict[bytes, bytes]:
        """The documents of ``keys`` (type-exact), by pairing key; absent ones are left out."""
        db, coll = split_ns(ns)
        handle = client[db].get_collection(coll, codec_options=RAW)
        wanted = set(keys)
        found: dict[bytes, bytes] = {}
        for i in range(0, len(keys), BATCH_SIZE):
            chunk = keys[i: i + BATCH_SIZE]
            query: Mapping[str, Any] = raw_id_in_filter(chunk)
            if filt:
                query = {"$and": [query, filt]}
            for batch in handle.find_raw_batches(query, batch_size=BATCH_SIZE):
                for raw in _split_batch(cast(bytes, batch)):
                    key = fast_id_key(raw)
                    if key in wanted:  # `$in` matches numerically equal values of other types too
                        found[key] = raw
        return found

    def compare_keys(self, pair: Pair, keys: Sequence[bytes], filt: Mapping[str, Any] | None,
                     sink: Sink) -> tuple[int, int]:
        """Recheck explicit documents; returns (documents found on the source, their bytes)."""
        src_docs = self.fetch(self.src, pair.src_ns, keys, filt)
        dst_docs = self.fetch(self.dst, pair.dst_ns, keys, filt)
        for key in dict.fromkeys(keys):
            s, d = src_docs.get(key), dst_docs.get(key)
            if s is not None and d is not None:
                self.compare_pair(pair, key, s, d, sink)
            elif s is not None:
                sink.doc(DocFinding("missingOnDst", pair.src_ns, pair.dst_ns, key))
            elif d is not None:
                sink.doc(DocFinding("extraOnDst", pair.src_ns, pair.dst_ns, key))
        sbytes = sum(len(v) for v in src_docs.values())
        sink.progress(pair, len(src_docs), len(dst_docs), sbytes, sum(len(v) for v in dst_docs.values()))
        return len(src_docs), sbytes

    def _stream(self, client: Client, ns: str, rng: Partition | None, filt: Mapping[str, Any] | None,
                hint: bool) -> Iterator[list[bytes]]:
        db, coll = split_ns(ns)
        handle = client[db].get_collection(coll, codec_options=RAW)
        cursor = handle.find_raw_batches(dict(filt or {}), sort=[("_id", 1)], batch_size=BATCH_SIZE,
                                         allow_disk_use=None if hint else True)
        if hint:
            cursor = cursor.hint([("_id", 1)])
            if rng is not None and rng.has_lower:
                cursor = cursor.min([("_id", rng.lower)])
            if rng is not None and rng.has_upper:
                cursor = cursor.max([("_id", rng.upper)])
        try:
            for batch in cursor:
                yield _split_batch(cast(bytes, batch))
                if self.stop.is_set():
                    return
        finally:
            cursor.close()

    def compare_range(self, pair: Pair, rng: Partition | None, filt: Mapping[str, Any] | None,
                      sink: Sink, hint: bool = True, confirm: bool = False) -> tuple[int, int]:
        """Merge-join one ``_id`` range of both sides; returns (source documents, their bytes).

        ``confirm``: look every suspected missing/extra document up before reporting it (for
        collections whose ``_id`` order is not plain BSON order, e.g. with a collation).
        """
        merger = _Merge(self, pair, filt, sink, confirm)
        with _Prefetch(self._stream(self.src, pair.src_ns, rng, filt, hint), self.stop) as src_batches, \
                _Prefetch(self._stream(self.dst, pair.dst_ns, rng, filt, hint), self.stop) as dst_batches:
            merger.run(src_batches, dst_batches)
        return merger.src_total, merger.src_bytes_total


class _Prefetch:
    """Runs a batch generator in its own thread, a few batches ahead of the consumer."""

    _END: Final = object()

    def __init__(self, source: Iterator[list[bytes]], stop: threading.Event) -> None:
        self.source = source
        self.stop = stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_BATCHES)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="verify-read", daemon=True)

    def __enter__(self) -> Iterator[list[bytes]]:
        self.thread.start()
        return self._iter()

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.05)
        self.thread.join()

    def _put(self, item: Any) -> bool:
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self.source:
                if not self._put(batch):
                    break
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
        finally:
            with contextlib.suppress(Exception):
                self.source.close()  # type: ignore[attr-defined]

    def _iter(self) -> Iterator[list[bytes]]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Merge:
    """The merge join of two ``_id``-sorted raw streams (see the module docstring)."""

    def __init__(self, engine: Engine, pair: Pair, filt: Mapping[str, Any] | None, sink: Sink,
                 confirm: bool) -> None:
        self.engine = engine
        self.pair = pair
        self.filt = filt
        self.sink = sink
        # Confirm suspects by lookup: our sort order may not be the server's (collation) or was
        # seen to disagree with it.
        self.confirm = confirm
        self.src_only: dict[bytes, bytes] = {}
        self.dst_only: dict[bytes, bytes] = {}
        self.suspect_bytes = 0
        self.skip_src: set[bytes] = set()  # found by lookup; the stream has not delivered them yet
        self.skip_dst: set[bytes] = set()
        self.last_sort: list[tuple[Any, ...] | None] = [None, None]
        self.src_total = self.dst_total = self.src_bytes_total = 0
        self._src_n = self._dst_n = self._src_b = self._dst_b = 0

    def _report(self) -> None:
        if self._src_n or self._dst_n:
            self.sink.progress(self.pair, self._src_n, self._dst_n, self._src_b, self._dst_b)
            self.src_total += self._src_n
            self.dst_total += self._dst_n
            self.src_bytes_total += self._src_b
            self._src_n = self._dst_n = self._src_b = self._dst_b = 0

    def _sort_key(self, side: int, key: bytes) -> tuple[Any, ...]:
        """The sort key of a stream head; checks that the stream is sorted in our order."""
        sk = id_sort_key(key)
        last = self.last_sort[side]
        if last is not None and sk < last and not self.confirm:
            log.warning("the server's _id order differs from ours; confirming missing/extra documents by "
                        "lookup", extra={"ns": self.pair.src_ns})
            self.confirm = True
        self.last_sort[side] = sk
        return sk

    def run(self, src_batches: Iterator[list[bytes]], dst_batches: Iterator[list[bytes]]) -> None:
        src_it = self._docs(src_batches, True)
        dst_it = self._docs(dst_batches, False)
        s = next(src_it, None)
        d = next(dst_it, None)
        s_sort: tuple[Any, ...] | None = None
        d_sort: tuple[Any, ...] | None = None
        engine, pair, sink = self.engine, self.pair, self.sink
        while s is not None and d is not None:
            if s[0] == d[0]:
                engine.compare_pair(pair, s[0], s[1], d[1], sink)
                s = next(src_it, None)
                d = next(dst_it, None)
                s_sort = d_sort = None
                continue
            if s_sort is None:
                s_sort = self._sort_key(0, s[0])
            if d_sort is None:
                d_sort = self._sort_key(1, d[0])
            advance_src, advance_dst = s_sort <= d_sort, d_sort <= s_sort  # both: same place, other types
            if advance_src:
                self._suspect(self.src_only, s)
                s, s_sort = next(src_it, None), None
            if advance_dst:
                self._suspect(self.dst_only, d)
                d, d_sort = next(dst_it, None), None
        while s is not None:
            self._suspect(self.src_only, s)
            s = next(src_it, None)
        while d is not None:
            self._suspect(self.dst_only, d)
            d = next(dst_it, None)
        self._settle()
        self._report()

    def _docs(self, batches: Iterator[list[bytes]], is_src: bool) -> Iterator[tuple[bytes, bytes]]:
        skip = self.skip_src if is_src else self.skip_dst
        for batch in batches:
            nbytes = 0
            for raw in batch:
                nbytes += len(raw)
            if is_src:
                self._src_n += len(batch)
                self._src_b += nbytes
            else:
                self._dst_n += len(batch)
                self._dst_b += nbytes
            for raw in batch:
                try:
                    key = fast_id_key(raw)
                except KeyError:
                    ns = self.pair.src_ns if is_src else self.pair.dst_ns
                    raise MongoferryError(f"a document of {ns} has no _id, so it cannot be paired",
                                          "verify compares documents by _id; exclude this namespace") from None
                if skip and key in skip:
                    skip.discard(key)
                    continue
                yield key, raw
            self._report()

    def _suspect(self, where: dict[bytes, bytes], doc: tuple[bytes, bytes]) -> None:
        where[doc[0]] = doc[1]
        self.suspect_bytes += len(doc[1])
        if len(self.src_only) + len(self.dst_only) >= SUSPECT_BATCH or self.suspect_bytes >= SUSPECT_BYTES:
            self._settle()

    def _settle(self) -> None:
        engine, pair, sink = self.engine, self.pair, self.sink
        for key in [k for k in self.src_only if k in self.dst_only]:
            engine.compare_pair(pair, key, self.src_only.pop(key), self.dst_only.pop(key), sink)
        found_dst = engine.fetch(engine.dst, pair.dst_ns, list(self.src_only), self.filt) \
            if self.confirm and self.src_only else {}
        for key, raw in self.src_only.items():
            other = found_dst.get(key)
            if other is None:
                sink.doc(DocFinding("missingOnDst", pair.src_ns, pair.dst_ns, key))
            else:
                self.skip_dst.add(key)
                engine.compare_pair(pair, key, raw, other, sink)
        found_src = engine.fetch(engine.src, pair.src_ns, list(self.dst_only), self.filt) \
            if self.confirm and self.dst_only else {}
        for key, raw in self.dst_only.items():
            other = found_src.get(key)
            if other is None:
                sink.doc(DocFinding("extraOnDst", pair.src_ns, pair.dst_ns, key))
            else:
                self.skip_src.add(key)
                engine.compare_pair(pair, key, other, raw, sink)
        self.src_only.clear()
        self.dst_only.clear()
        self.suspect_bytes = 0


# ======================================================================================
# Namespaces and metadata
# ======================================================================================


def _check_namespace(value: str, flag: str) -> None:
    db, dot, coll = value.partition(".")
    if not db or not dot or not coll or re.search(r'[/\\ "$\x00]', db):
        raise UsageError(f"{flag} {value!r} is not a namespace", "write DATABASE.COLLECTION")


def all_namespaces(client: Client, nsmap: NamespaceMap) -> list[str]:
    """Every non-system namespace on a server (the metadata database excluded), sorted."""
    out: list[str] = []
    for db in sorted(client.list_database_names()):
        if nsmap.is_system(f"{db}.x"):
            continue
        out.extend(f"{db}.{name}" for name in client[db].list_collection_names()
                   if not nsmap.is_system(f"{db}.{name}"))
    return sorted(out)


def resolve_pairs(s: VerifySettings, src: Client, dst: Client, nsmap: NamespaceMap) -> list[Pair]:
    """The namespace pairs to verify: explicit --src-namespace/--dst-namespace pairs, or every
    selected source namespace (--include/--exclude/--rename) plus the destination namespaces
    that a selected source namespace would have become but which the source does not hold."""
    if s.src_namespace or s.dst_namespace:
        if s.include or s.exclude or s.rename:
            raise UsageError("--src-namespace/--dst-namespace cannot be combined with --include, --exclude "
                             "or --rename", "use one way of choosing namespaces")
        if not s.src_namespace:
            raise UsageError("--dst-namespace needs --src-namespace", "give the source namespaces, in the same order")
        dsts = s.dst_namespace or s.src_namespace
        if len(dsts) != len(s.src_namespace):
            raise UsageError(f"{len(s.src_namespace)} --src-namespace but {len(dsts)} --dst-namespace values",
                             "give one destination per source, in the same order (or none: same names)")
        for value in s.src_namespace:
            _check_namespace(value, "--src-namespace")
        for value in dsts:
            _check_namespace(value, "--dst-namespace")
        for name, values in (("--src-namespace", s.src_namespace), ("--dst-namespace", dsts)):
            if len(set(values)) != len(values):
                raise UsageError(f"{name} names a namespace twice", "give each namespace once")
        return [Pair(a, b) for a, b in zip(s.src_namespace, dsts, strict=True)]
    with driver_errors("listing namespaces"):
        src_names = all_namespaces(src, nsmap)
        dst_names = all_namespaces(dst, nsmap)
    mapping = {ns: nsmap.target(ns) for ns in src_names if nsmap.selected(ns)}
    inverse_coll = {v: k for k, v in nsmap.coll_renames.items()}
    inverse_db = {v: k for k, v in nsmap.db_renames.items()}
    for ns in dst_names:
        db, coll = split_ns(ns)
        origin = inverse_coll.get(ns) or f"{inverse_db.get(db, db)}.{coll}"
        if origin not in mapping and nsmap.selected(origin) and nsmap.target(origin) == ns:
            mapping[origin] = ns
    for pattern in nsmap.include:
        if not any(ns == pattern or split_ns(ns)[0] == pattern for ns in mapping):
            raise UsageError(f"--include {pattern!r} matches no namespace on the source or the destination",
                             "check the spelling")
    owners: dict[str, str] = {}
    for a, b in sorted(mapping.items()):
        if b in owners:
            raise UsageError(f"two sources map onto one destination: {owners[b]!r} and {a!r} both become {b!r}",
                             "give each source its own destination with --rename")
        owners[b] = a
    return [Pair(a, b) for a, b in sorted(mapping.items())]


@dataclass
class NamespacePlan:
    """What the metadata comparison of a pair found and whether its data can be compared."""

    findings: list[NsFinding]
    comparable: bool = False
    ranged: bool = False  # both sides have an `_id` index: sort and ranges use it
    collation: bool = False  # a default collation: the `_id` order may not be plain BSON order
    data: Pair | None = None  # where the documents are read (time-series: the bucket collections)
    count: int | None = None  # estimated source documents (counted only when needed)
    kind: str = "collection"


def finding_type(kind: str) -> FindingType:
    """compare.py's ``missing_on_dst``/``missing_on_src`` as the reference's finding types."""
    if kind == "missing_on_dst":
        return "missingOnDst"
    if kind == "missing_on_src":
        return "extraOnDst"
    return "content"


def _coll_info(client: Client, ns: str) -> RawBSONDocument | None:
    db, coll = split_ns(ns)
    infos = list(client[db].with_options(codec_options=RAW).list_collections(filter={"name": coll}))
    return cast(RawBSONDocument, infos[0]) if infos else None


def _with_view_on(info: RawBSONDocument, view_on: str) -> RawBSONDocument:
    decoded = bson.decode(info.raw, codec_options=DECODED)
    decoded.setdefault("options", {})["viewOn"] = view_on
    return RawBSONDocument(bson.encode(decoded), RAW)


def _indexes(client: Client, ns: str) -> list[dict[str, Any]]:
    db, coll = split_ns(ns)
    return [catalog.clean_index_spec(dict(ix))
            for ix in client[db].get_collection(coll, codec_options=DECODED).list_indexes()]


def compare_metadata(engine: Engine, pair: Pair, target: Callable[[str], str | None],
                     count: bool = False) -> NamespacePlan:
    """Compare the collection specs and indexes of a pair (``target`` maps a source namespace to
    its destination, for views' ``viewOn``). ``count``: also estimate the source's documents
    (free on MongoDB, a scan on some compatible servers)."""
    src_info = _coll_info(engine.src, pair.src_ns)
    dst_info = _coll_info(engine.dst, pair.dst_ns)
    if src_info is not None and src_info.get("type") == "view":
        view_on = (src_info.get("options") or {}).get("viewOn")
        if isinstance(view_on, str):
            db = split_ns(pair.src_ns)[0]
            mapped = target(f"{db}.{view_on}")
            if mapped is not None and split_ns(mapped)[0] == split_ns(pair.dst_ns)[0] \
                    and split_ns(mapped)[1] != view_on:
                src_info = _with_view_on(src_info, split_ns(mapped)[1])
    findings: list[NsFinding] = []
    for diff in compare_collection_specs(src_info, dst_info):
        findings.append(NsFinding(finding_type(diff.kind), pair.src_ns, pair.dst_ns, diff.aspect, diff.component,
                                  diff.detail))
    if src_info is None or dst_info is None:
        return NamespacePlan(findings)
    kind_name = str(src_info.get("type", "collection"))
    src_opts = src_info.get("options") or {}
    dst_opts = dst_info.get("options") or {}
    comparable = (kind_name in ("collection", "timeseries") and dst_info.get("type", "collection") == kind_name
                  and bool(src_opts.get("capped", False)) == bool(dst_opts.get("capped", False)))
    plan = NamespacePlan(findings, comparable, kind=kind_name,
                         collation=bool(src_opts.get("collation")) or bool(dst_opts.get("collation")), data=pair)
    if kind_name == "timeseries":  # MongoDB: measurements are compared as their raw buckets, like the reference
        (sdb, scoll), (ddb, dcoll) = split_ns(pair.src_ns), split_ns(pair.dst_ns)
        plan.data = Pair(f"{sdb}.system.buckets.{scoll}", f"{ddb}.system.buckets.{dcoll}")
    if not comparable:
        return plan
    src_ix = _indexes(engine.src, pair.src_ns)
    dst_ix = _indexes(engine.dst, pair.dst_ns)
    for ix in compare_index_specs(src_ix, dst_ix):
        findings.append(NsFinding(finding_type(ix.kind), pair.src_ns, pair.dst_ns, "index", ix.name,
                                  None if ix.kind.startswith("missing") else ix.detail))
    plan.ranged = (any(ix.get("name") == "_id_" for ix in src_ix) and any(ix.get("name") == "_id_" for ix in dst_ix)
                   and kind_name == "collection")
    if count:
        estimate_count(engine, plan)
    return plan


def estimate_count(engine: Engine, plan: NamespacePlan) -> int:
    if plan.count is None:
        plan.count = int(plan.data.src_coll(engine.src).estimated_document_count()) if plan.data else 0
    return plan.count


def plan_ranges(engine: Engine, pair: Pair, plan: NamespacePlan, workers: int, partition_docs: int
                ) -> list[Partition]:
    """``_id`` ranges of the source for parallel comparison (one for small collections)."""
    pair = plan.data or pair
    whole = partition.ranges(pair.src_ns, [])
    if not plan.ranged or workers == 1:
        return whole
    coll = pair.src_coll(engine.src, DECODED)
    if engine.ranges_cheap is None:  # before counting: on such servers a count is a scan as well
        cheap = ranges_are_cheap(coll)
        if cheap is None:
            return whole
        engine.ranges_cheap = cheap
        if not cheap:
            log.info("the source reads _id ranges by scanning the collection; comparing each collection as "
                     "one range", extra={"ns": pair.src_ns})
    if not engine.ranges_cheap:
        return whole
    count = estimate_count(engine, plan)
    if count <= partition_docs * workers * 2:
        target = min(partition_docs, max(MIN_PARTITION_DOCS, -(-count // (workers * 2))))
    else:
        target = partition_docs
    if count <= target:
        return whole
    return partition.plan(coll, pair.src_ns, count, target)


def ranges_are_cheap(coll: Any) -> bool | None:
    """Does the server walk the ``_id`` index for a sorted, bounded read? Some compatible servers
    scan the whole collection for every range (and say IXSCAN in explain), which would make each
    extra range cost a full scan. The probe reads the first ``_id`` in index order (a few
    milliseconds with an index walk) and compares it with an equality lookup of that ``_id``.
    None: the collection is empty, nothing was learnt."""
    started = time.perf_counter()
    try:
        first = list(coll.find({}, {"_id": 1}).sort("_id", 1).hint([("_id", 1)]).limit(1).max_time_ms(250))
    except ExecutionTimeout:
        return False
    ranged = time.perf_counter() - started
    if not first:
        return None
    started = time.perf_counter()
    coll.find_one({"_id": first[0]["_id"]}, {"_id": 1})
    point = time.perf_counter() - started
    return ranged < max(0.02, 20 * point)


# ======================================================================================
# One-shot check (--check-only)
# ======================================================================================


class _Largest:
    """Heap entry that inverts the order: the heap then keeps the N smallest items."""

    __slots__ = ("item", "key")

    def __init__(self, key: tuple[Any, ...], item: Finding) -> None:
        self.key = key
        self.item = item

    def __lt__(self, other: _Largest) -> bool:
        return other.key < self.key


@dataclass
class NsStats:
    pair: Pair
    kind: str = "collection"
    src_docs: int = 0
    dst_docs: int = 0
    findings: int = 0


class ReportSink(Sink):
    """Counts everything; keeps only the first N findings (by namespace, then ``_id`` order)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.heap: list[_Largest] = []
        self.seq = 0
        self.by_type: dict[str, int] = {}
        self.ns_total = 0
        self.doc_total = 0
        self.src_docs = self.dst_docs = self.src_bytes = self.dst_bytes = 0
        self.stats: dict[Pair, NsStats] = {}
        self.alias: dict[Pair, Pair] = {}  # data pair (time-series buckets) -> its namespace pair

    def _add(self, key: tuple[Any, ...], finding: Finding) -> None:
        with self.lock:
            self.seq += 1
            self.by_type[finding.type] = self.by_type.get(finding.type, 0) + 1
            pair = Pair(finding.ns, finding.dst_ns)
            pair = self.alias.get(pair, pair)
            if pair in self.stats:
                self.stats[pair].findings += 1
            entry = _Largest((*key, self.seq), finding)
            if len(self.heap) < self.keep:
                heapq.heappush(self.heap, entry)
            elif entry.key < self.heap[0].key:
                heapq.heapreplace(self.heap, entry)

    def doc(self, finding: DocFinding) -> None:
        with self.lock:
            self.doc_total += 1
        self._add((finding.ns, 1, id_sort_key(finding.key)), finding)

    def namespace(self, finding: NsFinding) -> None:
        with self.lock:
            self.ns_total += 1
        self._add((finding.ns, 0, (finding.aspect, finding.component or "")), finding)

    def progress(self, pair: Pair, src_docs: int, dst_docs: int, src_bytes: int, dst_bytes: int) -> None:
        with self.lock:
            self.src_docs += src_docs
            self.dst_docs += dst_docs
            self.src_bytes += src_bytes
            self.dst_bytes += dst_bytes
            st = self.stats.get(self.alias.get(pair, pair))
            if st is not None:
                st.src_docs += src_docs
                st.dst_docs += dst_docs

    @property
    def total(self) -> int:
        return self.ns_total + self.doc_total

    def shown(self) -> list[Finding]:
        return [e.item for e in sorted(self.heap, key=lambda e: e.key)]


class WorkQueue:
    """A fixed set of threads running callables; a callable may submit more work."""

    def __init__(self, workers: int, stop: threading.Event) -> None:
        self.workers = workers
        self.stop = stop
        self.queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.pending = 0
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.error: BaseException | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        with self.lock:
            self.pending += 1
        self.queue.put(fn)

    def _worker(self) -> None:
        while True:
            fn = self.queue.get()
            if fn is None:
                return
            try:
                if self.error is None and not self.stop.is_set():
                    fn()
            except BaseException as exc:
                with self.lock:
                    if self.error is None:
                        self.error = exc
                self.stop.set()
            finally:
                with self.lock:
                    self.pending -= 1
                    self.done.notify_all()

    def run(self, on_tick: Callable[[], None] | None = None, tick_s: float = 5.0) -> None:
        threads = [threading.Thread(target=self._worker, name=f"verify-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        next_tick = time.monotonic() + tick_s
        try:
            while True:
                with self.lock:
                    if not self.pending or self.error is not None:
                        break
                    self.done.wait(max(0.0, next_tick - time.monotonic()))
                if on_tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + tick_s
                    on_tick()
        finally:
            if self.error is not None:
                self.stop.set()
            for _ in threads:
                self.queue.put(None)
            for t in threads:
                t.join()
        if self.error is not None:
            raise self.error


class OneShot:
    """One full pass over every pair, in parallel; the result is a :class:`ReportSink`."""

    def __init__(self, s: VerifySettings, src: Client, dst: Client, nsmap: NamespaceMap,
                 stop: threading.Event) -> None:
        self.s = s
        self.nsmap = nsmap
        self.engine = Engine(src, dst, s.compare, stop)
        self.sink = ReportSink(s.failure_display_size)
        self.pairs: list[Pair] = []
        self.work = WorkQueue(s.workers, stop)
        self.started = time.monotonic()

    def target(self, ns: str) -> str | None:
        explicit = {p.src_ns: p.dst_ns for p in self.pairs}
        if self.s.src_namespace:
            return explicit.get(ns)
        return self.nsmap.target(ns)

    def run(self) -> ReportSink:
        self.pairs = resolve_pairs(self.s, self.engine.src, self.engine.dst, self.nsmap)
        for pair in self.pairs:
            self.sink.stats[pair] = NsStats(pair)
            self.work.submit(lambda p=pair: self._namespace(p))  # type: ignore[misc]
        with driver_errors("comparing the source and the destination"):
            self.work.run(on_tick=self._log_progress)
        return self.sink

    def _namespace(self, pair: Pair) -> None:
        plan = compare_metadata(self.engine, pair, self.target)
        self.sink.stats[pair].kind = plan.kind
        if plan.data is not None and plan.data != pair:
            with self.sink.lock:
                self.sink.alias[plan.data] = pair
        for f in plan.findings:
            self.sink.namespace(f)
        if not plan.comparable:
            return
        for rng in plan_ranges(self.engine, pair, plan, self.s.workers, self.s.partition_docs):
            self.work.submit(lambda r=rng: self._range(pair, r, plan))  # type: ignore[misc]

    def _range(self, pair: Pair, rng: Partition, plan: NamespacePlan) -> None:
        self.engine.compare_range(plan.data or pair, rng, None, self.sink, hint=plan.ranged, confirm=plan.collation)

    def _log_progress(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        log.info("verifying", extra={"docsCompared": self.sink.src_docs, "findings": self.sink.total,
                                     "docsPerSecond": round(self.sink.src_docs / elapsed)})


def build_report(s: VerifySettings, sink: ReportSink, seconds: float) -> dict[str, Any]:
    shown = sink.shown()
    seconds = max(seconds, 1e-6)
    return {
        "verdict": "identical" if sink.total == 0 else "different",
        "compare": s.compare,
        "seconds": round(seconds, 3),
        "docsCompared": sink.src_docs,
        "dstDocs": sink.dst_docs,
        "srcBytes": sink.src_bytes,
        "dstBytes": sink.dst_bytes,
        "docsPerSecond": round(sink.src_docs / seconds, 1),
        "mbPerSecond": round((sink.src_bytes + sink.dst_bytes) / seconds / 1e6, 3),
        "namespaces": [{"source": st.pair.src_ns, "destination": st.pair.dst_ns, "kind": st.kind,
                        "srcDocs": st.src_docs, "dstDocs": st.dst_docs, "findings": st.findings}
                       for st in sorted(sink.stats.values(), key=lambda st: st.pair.src_ns)],
        "findings": {"total": sink.total, "namespaceFindings": sink.ns_total, "documentFindings": sink.doc_total,
                     "byType": dict(sorted(sink.by_type.items())), "shown": len(shown),
                     "notShown": sink.total - len(shown), "items": [f.to_json() for f in shown]},
    }


def format_report(report: dict[str, Any], sink: ReportSink, display_size: int) -> str:
    f = report["findings"]
    lines: list[str] = []
    head = (f"{len(report['namespaces'])} namespace(s), {report['docsCompared']:,} source and "
            f"{report['dstDocs']:,} destination document(s) compared in {report['seconds']:.1f}s "
            f"({report['docsPerSecond']:,.0f} docs/s, --compare {report['compare']})")
    if f["total"] == 0:
        lines.append(f"verify: IDENTICAL — {head}")
        return "\n".join(lines)
    by_type = ", ".join(f"{v} {k}" for k, v in f["byType"].items())
    lines.append(f"verify: DIFFERENT — {f['total']} finding(s) ({by_type}); {head}")
    for finding in sink.shown():
        first, *rest = describe_finding(finding)
        lines.append(f"  - {first}")
        lines.extend(f"  {line}" for line in rest)
    if f["notShown"]:
        lines.append(f"  … and {f['notShown']} more finding(s) not shown (--failure-display-size {display_size}; "
                     "--json for a machine-readable report)")
    return "\n".join(lines)


def run_check_only(s: VerifySettings, as_json: bool) -> int:
    """``mongoferry verify --check-only``: exit 0 when identical, 4 with a report otherwise."""
    from mongoferry.runtime import open_endpoints, stop_on_signals

    ends = open_endpoints(s)
    try:
        with stop_on_signals() as stop:
            started = time.monotonic()
            job = OneShot(s, ends.src, ends.dst, ends.nsmap, stop)
            sink = job.run()
            if stop.is_set():
                log.warning("verification interrupted; no verdict")
                return 1
            report = build_report(s, sink, time.monotonic() - started)
    finally:
        ends.close()
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        click.echo(format_report(report, sink, s.failure_display_size))
    return EXIT_OK if sink.total == 0 else EXIT_INCONSISTENT


# ======================================================================================
# The click command (importable as `verify_command`; register it with main.add_command)
# ======================================================================================
# The option decorators mirror cli.connection_options/common_options. They are spelled out
# here so that importing this module never imports cli.py (cli.py imports this module to
# register the command; importing cli from here would make the two modules circular).


def _env_help(text: str, name: str) -> str:
    return f"{text} [env: MONGOFERRY_{name.upper()}]"


def _options(fn: F) -> F:
    opts = [
        click.option("--src", help=_env_help("Source connection string (mongodb://…).", "src")),
        click.option("--dst", help=_env_help("Destination connection string.", "dst")),
        click.option("--meta", help=_env_help("Where the verifier keeps its state (default: the destination).",
                                              "meta")),
        click.option("--meta-db", help=_env_help("Metadata database name (default mongoferry_meta).", "meta_db")),
        click.option("--connect-timeout", type=float,
                     help=_env_help("Seconds to wait for each server to answer (default 10).", "connect_timeout")),
        click.option("--include", multiple=True,
                     help=_env_help("Verify only this DB or DB.COLL (repeatable; env: comma list).", "include")),
        click.option("--exclude", multiple=True, help=_env_help("Skip this DB or DB.COLL (repeatable).", "exclude")),
        click.option("--rename", multiple=True,
                     help=_env_help("The copy renamed OLD_DB=NEW_DB or DB.COLL=DB2.COLL2 (repeatable).", "rename")),
        click.option("--src-namespace", multiple=True,
                     help=_env_help("Verify exactly this DB.COLL (repeatable or comma list; not with "
                                    "--include/--exclude/--rename).", "src_namespace")),
        click.option("--dst-namespace", multiple=True,
                     help=_env_help("Destination of the --src-namespace at the same position (default: same "
                                    "names).", "dst_namespace")),
        click.option("--check-only", is_flag=True, default=None,
                     help=_env_help("Run one full pass, print a report and exit (0 identical, 4 different) "
                                    "instead of serving the HTTP API.", "check_only")),
        click.option("--compare", type=click.Choice(["binary", "ignore-order"]),
                     help=_env_help("binary: field order matters; ignore-order (default): it does not.",
                                    "compare")),
        click.option("--failure-display-size", type=int,
                     help=_env_help("Findings shown in the report (default 20); the rest are counted.",
                                    "failure_display_size")),
        click.option("--workers", type=int, help=_env_help("Ranges compared in parallel (default 4).", "workers")),
        click.option("--partition-docs", type=int,
                     help=_env_help("Target documents per _id range of big collections (default 50000).",
                                    "partition_docs")),
        click.option("--port", type=int,
                     help=_env_help("Server mode: HTTP API port on 127.0.0.1 (default 27020; 0 = any).", "port")),
        click.option("--start", is_flag=True, default=None,
                     help=_env_help("Server mode: start checking at once instead of waiting for "
                                    "POST /api/v1/check.", "start")),
        click.option("--clean", is_flag=True, default=None,
                     help=_env_help("Server mode: forget a saved verification instead of resuming it.", "clean")),
        click.option("--json", "as_json", is_flag=True, help="With --check-only: print the report as one JSON "
                                                              "document on stdout."),
        click.option("--config", type=click.Path(dir_okay=False), help="YAML file of options (lowest precedence)."),
        click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text"]),
                     help=_env_help("Log style; auto = rich on a terminal, json otherwise.", "log_format")),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                     help=_env_help("Log level (default info).", "log_level")),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.command("verify")
@_options
@click.pass_context
def verify_command(ctx: click.Context, /, as_json: bool, **values: Any) -> None:
    """Prove the destination holds what the source holds: documents (type-exact, field by
    field), collection options, views and indexes.

    With --check-only: one full pass, exit 0 when identical, 4 with a report.
    Otherwise: a migration-verifier compatible HTTP API on 127.0.0.1:--port
    (POST /api/v1/check, POST /api/v1/writesOff, GET /api/v1/progress,
    GET /api/v1/mismatches) that tracks changes on both sides and rechecks them
    until writes are off; it resumes after a restart.
    """
    from mongoferry.cli import run_guarded, settings_from

    def job() -> int:
        settings = settings_from(ctx, VerifySettings, values)
        if settings.check_only:
            return run_check_only(settings, as_json)
        if as_json:
            raise UsageError("--json needs --check-only", "the server mode answers in JSON on its HTTP API")
        from mongoferry.verify_server import run_server

        code: int = run_server(settings)
        return code

    run_guarded(job)


if __name__ == "__main__":  # pragma: no cover - `python -m mongoferry.verify …` before cli.py registers it
    verify_command(sys.argv[1:])
