"""The comparison engine: reads both sides of an ``_id`` range and merge-joins them.

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
   on both sides is a pair; the others are missing or extra. Where our order may not be the
   server's (``confirm``: a collection with a collation, or a stream seen out of our order),
   they are first looked up by ``_id`` on the other side (a batched ``$in`` with the exact BSON
   values), and only a document the lookup does not find is reported missing or extra. A
   document found by lookup is compared at once and its key is remembered so that the other
   stream skips it when it arrives.

So memory holds a few raw batches per side and worker, the suspects buffer and the findings
kept for display; never a whole collection. Correctness does not depend on our sort order
matching the server's: a disagreement costs a lookup, not a false finding.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from mongoferry.core.doc_filter import and_filter
from mongoferry.core.errors import MongoferryError
from mongoferry.core.model import Partition
from mongoferry.core.namespaces import split_ns
from mongoferry.infra.clients import RAW, Client
from mongoferry.verify.compare import CompareMode, compare_raw_documents
from mongoferry.verify.findings import DocFinding, FindingType, Pair, Sink
from mongoferry.verify.keys import fast_id_key, id_sort_key, raw_id_in_filter, split_batch

log = logging.getLogger("mongoferry.verify")

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

@dataclass
class Engine:
    """Reads and compares; shared by the one-shot check and the server's workers."""

    src: Client
    dst: Client
    mode: CompareMode
    stop: threading.Event = field(default_factory=threading.Event)
    #: Can the source read an `_id` range through the index? Probed once per run (None: not yet).
    ranges_cheap: bool | None = None
    #: Is each side ("src"/"dst") a sharded cluster (mongos)? Probed once per run.
    sharded: dict[str, bool] = field(default_factory=dict)
    #: Only the source documents this keeps are compared (a split destination's share); the
    #: destination is read whole, so a document of another part there is a finding.
    src_keep: Callable[[str, bytes], bool] | None = None
    #: --filter: per source namespace, the query its compared documents match (the server applies
    #: it to the source only; the destination is read whole, so a document that should have left
    #: it is a finding).
    src_filters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def _query(self, client: Client, ns: str, filt: Mapping[str, Any] | None) -> dict[str, Any]:
        """The check's own filter, and on the source the namespace's --filter."""
        extra = self.src_filters.get(ns) if client is self.src else None
        return and_filter(filt or {}, extra)

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
            query: Mapping[str, Any] = and_filter(raw_id_in_filter(chunk), self._query(client, ns, filt))
            for batch in handle.find_raw_batches(query, batch_size=BATCH_SIZE):
                for raw in split_batch(cast(bytes, batch)):
                    key = fast_id_key(raw)
                    if key in wanted and self._kept(client, ns, raw):  # `$in` matches other types' equals too
                        found[key] = raw
        return found

    def _kept(self, client: Client, ns: str, raw: bytes) -> bool:
        return self.src_keep is None or client is not self.src or self.src_keep(ns, raw)

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
        cursor = handle.find_raw_batches(self._query(client, ns, filt), sort=[("_id", 1)], batch_size=BATCH_SIZE,
                                         allow_disk_use=None if hint else True)
        if hint:
            cursor = cursor.hint([("_id", 1)])
            if rng is not None and rng.has_lower:
                cursor = cursor.min([("_id", rng.lower)])
            if rng is not None and rng.has_upper:
                cursor = cursor.max([("_id", rng.upper)])
        try:
            for batch in cursor:
                docs = split_batch(cast(bytes, batch))
                if self.src_keep is not None and client is self.src:
                    docs = [raw for raw in docs if self.src_keep(ns, raw)]
                if docs:
                    yield docs
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
        sides: tuple[tuple[dict[bytes, bytes], Client, str, set[bytes], FindingType, bool], ...] = (
            (self.src_only, engine.dst, pair.dst_ns, self.skip_dst, "missingOnDst", True),
            (self.dst_only, engine.src, pair.src_ns, self.skip_src, "extraOnDst", False))
        for only, other_side, other_ns, skip, absent, from_src in sides:
            found = engine.fetch(other_side, other_ns, list(only), self.filt) if self.confirm and only else {}
            for key, raw in only.items():
                other = found.get(key)
                if other is None:
                    sink.doc(DocFinding(absent, pair.src_ns, pair.dst_ns, key))
                    continue
                skip.add(key)  # found by lookup: the other stream must not pair it again
                s_raw, d_raw = (raw, other) if from_src else (other, raw)
                engine.compare_pair(pair, key, s_raw, d_raw, sink)
        self.src_only.clear()
        self.dst_only.clear()
        self.suspect_bytes = 0
