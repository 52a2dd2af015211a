"""The copy engine: a parallel, resumable, byte-exact snapshot copy.

Order of work (nothing is written before step 4, so bad input writes nothing):
1. read the source catalog and resolve the selection (include/exclude/rename);
2. read the job in the metadata store: resume it, or refuse a changed selection;
3. for a new job, refuse destination namespaces that already hold data (unless --drop-dst);
4. initialise: create collections (options) and views, plan `_id` partitions, persist them;
5. copy partitions in parallel, checkpointing `last_id` after every acknowledged batch;
6. when a collection's partitions are done, build its secondary indexes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.errors import ConnectionFailure, OperationFailure
from pymongo.uri_parser import parse_uri

from mongoferry.core.errors import UsageError
from mongoferry.core.model import CollectionSpec, Partition
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import RAW, Client, driver_errors, namespace_changed
from mongoferry.infra.config import CopySettings
from mongoferry.infra.progress import Reporter
from mongoferry.pipeline.copy_ends import MEASURE_S, Meeting, keep_second_reader, worth_a_second_reader
from mongoferry.pipeline.counts import count_rows
from mongoferry.pipeline.source_health import SourceHealth
from mongoferry.pipeline.throttle import Throttle, job_throttle
from mongoferry.sinks.base import CopySink
from mongoferry.sinks.mongo import MongoWriter
from mongoferry.source import catalog, partition
from mongoferry.source.capture import current_time
from mongoferry.state.meta import CopyState, Job

log = logging.getLogger("mongoferry.copy")

MIN_PARTITION_DOCS = 10_000
RETRIES = 8
# A checkpoint costs a write; a resume re-copies at most this much time's worth of batches.
CHECKPOINT_EVERY_S = 1.0


def source_identity(uri: str) -> list[str]:
    """The hosts of a URI, which identify a deployment independently of options and password."""
    return sorted(f"{h}:{p}" for h, p in parse_uri(uri)["nodelist"])


def partition_target(count: int, workers: int, configured: int) -> int:
    """Documents per partition: the configured size, smaller when that would leave workers idle."""
    if count <= configured * workers * 2:
        return min(configured, max(MIN_PARTITION_DOCS, math.ceil(count / (workers * 2))))
    return configured


# What a reader sends when it stops before its cursor's end (None means the end).
STOPPED = object()

Keep = Callable[[str, RawBSONDocument], bool]  # (source namespace, document) → copy it here?


@dataclass
class Trial:
    """A second reader being measured: started at `at`, when the copy ran at `base_rate` docs/s."""
    ns: str
    down: Partition
    at: float
    docs_at: int
    base_rate: float


class Copier:
    def __init__(self, settings: CopySettings, src: Client, dst: Client | None, meta: CopyState,
                 nsmap: NamespaceMap, reporter: Reporter, stop: threading.Event, kind: str = "copy",
                 keep: Keep | None = None, sink: CopySink | None = None, whole: bool = False,
                 throttle: Throttle | None = None) -> None:
        self.settings = settings
        self.src = src
        self.dst = dst
        self.meta = meta
        self.nsmap = nsmap
        self.reporter = reporter
        self.stop = stop
        self.kind = kind
        # Every write of the copy goes through its sink (MongoDB unless another is given).
        if sink is None:
            assert dst is not None, "a copy writes to a MongoDB destination unless given another sink"
            sink = MongoWriter(dst)
        self.sink: CopySink = sink
        # Whole collections (a backup's snapshot): each read in one pass in $natural order, and read
        # again from its start after a restart (an archive file cannot be resumed in its middle).
        self.whole = whole
        # A split's share: only the documents this destination owns are written (every document is
        # still read, so a partition's checkpoint is the last _id read).
        self.keep = keep
        self.mapping: dict[str, str] = {}
        self.specs: dict[str, CollectionSpec] = {}
        self.resumed = False
        self.job: Job | None = None
        self._lock = threading.Lock()
        self._remaining: dict[str, int] = {}
        # --ranges auto: a second reader per collection from its other end, measured before it is kept
        self._meetings: dict[str, Meeting] = {}
        self._opened: dict[str, float] = {}  # partition id → when its reader started
        self._first: dict[str, float] = {}  # partition id → when its first batch arrived
        self._docs_before: dict[str, int] = {}  # partition id → documents it had then (a resumed one's)
        self._written = 0  # documents written by every reader (the throughput the trial measures)
        self._samples: deque[tuple[float, int]] = deque()
        self._tried: set[str] = set()
        self._trial: Trial | None = None
        # one throttle per job, shared with its pipeline and its HTTP API (changed while running)
        self.throttle = throttle or job_throttle(settings, SourceHealth(src))

    # ---------------------------------------------------------------- validation (read-only)
    def fingerprint(self) -> dict[str, Any]:
        assert self.settings.src is not None
        return {"kind": self.kind, "source": source_identity(self.settings.src),
                "selection": self.nsmap.fingerprint()}

    def validate(self) -> None:
        """Read-only checks. Raises UsageError for anything that must stop the job before a write."""
        with driver_errors("reading the source catalog"):
            names = catalog.list_namespaces(self.src, self.nsmap)
            self.mapping = self.nsmap.resolve(names)
            existing = self.meta.load_job()
        fp = self.fingerprint()
        if existing and not existing.finished:
            if existing.fingerprint != fp:
                raise UsageError(
                    f"the metadata database holds an unfinished {existing.kind} with a different "
                    f"selection or source ({_describe_fp(existing.fingerprint)})",
                    f"rerun with the original options to resume it, or drop {self.meta.location} to start over",
                )
            self.resumed = True
            self.job = existing
            # A resumed job keeps the namespaces it started with.
            self.mapping = dict(existing.namespaces) or self.mapping
        with driver_errors("reading the source catalog"):
            for ns in self.mapping:
                spec = catalog.describe(self.src, ns)
                if spec is not None:
                    self.specs[ns] = spec
                query = self.nsmap.filter_of(ns)
                if spec is not None and query is not None:
                    if spec.kind == "view":
                        raise UsageError(f"--filter names {ns}, a view: a view holds no documents to filter",
                                         "filter the collection the view reads, or give the view its own $match")
                    # Progress counts what matches; the server refuses a bad filter here, before any write.
                    matching = catalog.filtered_count(self.src, ns, query)
                    spec.count = spec.count if matching is None else matching
        if not self.resumed and not self.settings.drop_dst and self.dst is not None:
            with driver_errors("checking the destination"):
                for dst_ns in self.mapping.values():
                    why = catalog.holds_data(self.dst, dst_ns)
                    if why:
                        raise UsageError(
                            f"destination namespace {dst_ns} {why}",
                            "pass --drop-dst to replace it, or choose another name with --rename",
                        )

    # ---------------------------------------------------------------- initialisation (writes begin)
    def initialise(self, extra: dict[str, Any] | None = None,
                   before_copy: Callable[[], None] | None = None) -> None:
        if not self.resumed:
            self.job = Job(kind=self.kind, fingerprint=self.fingerprint(), state="initializing",
                           namespaces=self.mapping, extra=extra or {})
            with driver_errors("starting the job in the metadata database"):
                self.meta.start_job(self.job)
        assert self.job is not None
        if self.job.state != "initializing":
            return
        with driver_errors("creating destination collections"):
            self._create_destination()
            if before_copy is not None:
                before_copy()  # e.g. sync saves its capture start position: it must exist before any read
            self.meta.set_state("copying")
        self.job.state = "copying"

    def _create_destination(self) -> None:
        ordered = sorted(self.mapping.items(), key=lambda kv: self.specs.get(kv[0], _VIEW).kind == "view")
        for src_ns, dst_ns in ordered:
            spec = self.specs.get(src_ns)
            if spec is None:  # dropped on the source since the selection was resolved
                continue
            if self.settings.drop_dst:
                self.sink.drop(dst_ns)
            if spec.kind == "view":
                self.sink.create(dst_ns, spec, view_on=self._mapped_view_on(src_ns, spec))
                self.meta.save_collection(src_ns, {"dst": dst_ns, "spec": spec.to_doc(), "state": "done"})
                continue
            self.sink.create(dst_ns, spec)
            if spec.natural_order or self.whole:
                parts = partition.natural(src_ns)
            elif self.settings.ranges == "on" and self.settings.readers > 1:
                target = partition_target(spec.count, self.settings.readers, self.settings.partition_docs)
                parts = partition.plan(self.src[spec.db][spec.name], src_ns, spec.count, target)
            else:
                # One reader in _id order; with --ranges auto a second may join from the other end
                # once the copy has measured what one costs and gives (copy_ends.py).
                parts = partition.ranges(src_ns, [])
            self.meta.save_partitions(src_ns, parts)
            self.meta.save_collection(src_ns, {"dst": dst_ns, "spec": spec.to_doc(), "state": "copying"})

    def _mapped_view_on(self, src_ns: str, spec: CollectionSpec) -> str:
        view_on = str(spec.options.get("viewOn", ""))
        target_db, _, target_coll = self.nsmap.target(f"{spec.db}.{view_on}").partition(".")
        if target_db != self.mapping[src_ns].partition(".")[0]:
            log.warning("view source renamed to another database; keeping the original viewOn",
                        extra={"ns": src_ns, "viewOn": view_on})
            return view_on
        return target_coll

    # ---------------------------------------------------------------- copying
    def copy(self) -> bool:
        """Copy every unfinished partition; True when all data and indexes are in place."""
        with driver_errors("reading the job's progress"):
            colls = {d["_id"]: d for d in self.meta.load_collections()}
            parts = self.meta.load_partitions()
            self._resume_meetings(parts)
        for ns, d in colls.items():
            if d["spec"]["kind"] == "view":
                continue
            mine = [p for p in parts if p.ns == ns]
            self.reporter.add(ns, d["dst"], max(d["spec"].get("count", 0), sum(p.docs for p in mine)),
                              d["spec"].get("size", 0), sum(p.docs for p in mine), sum(p.bytes for p in mine))
            self._remaining[ns] = sum(1 for p in mine if not p.done)
        todo = [p for p in parts if not p.done and p.ns in colls]
        # Large namespaces first so the tail of the copy stays parallel.
        todo.sort(key=lambda p: (-colls[p.ns]["spec"].get("count", 0), p.ns, p.index))
        for ns, left in list(self._remaining.items()):
            if left == 0 and colls[ns]["state"] != "done":
                self._finish_namespace(ns, colls[ns])
        if todo:
            with ThreadPoolExecutor(self.settings.readers, thread_name_prefix="copy") as pool:
                futures = {pool.submit(self._run_partition, p, colls[p.ns]): p for p in todo}
                while futures:
                    done, _ = wait(list(futures), timeout=0.25, return_when=FIRST_EXCEPTION)
                    for f in done:
                        futures.pop(f)
                        if f.exception() is not None:
                            self.stop.set()
                            for other in futures:
                                other.cancel()
                            raise f.exception()  # type: ignore[misc]
                    added = self._adapt(futures, colls) if futures and not self.stop.is_set() else None
                    if added is not None:
                        futures[pool.submit(self._run_partition, added, colls[added.ns])] = added
        if self.stop.is_set():
            return False
        with driver_errors("finishing the copy"):
            return all(d["state"] == "done" for d in self.meta.load_collections())

    def _run_partition(self, p: Partition, coll_doc: dict[str, Any]) -> None:
        if self.stop.is_set():
            return
        for attempt in range(RETRIES):
            try:
                self._copy_partition(p, coll_doc, first_attempt=attempt == 0)
                break
            except (ConnectionFailure, OperationFailure) as exc:
                if (isinstance(exc, OperationFailure) and not namespace_changed(exc)) \
                        or attempt == RETRIES - 1 or self.stop.is_set():
                    raise
                # A rename or drop ends the read; read again what the name now holds (a sync's
                # replay puts the namespace right, copying it again where a rename needs it).
                log.warning("partition interrupted, retrying from its checkpoint",
                            extra={"partition": p.id, "error": type(exc).__name__, "attempt": attempt + 1})
                time.sleep(min(0.5 * 2**attempt, 10))
        if not p.done:
            return
        with self._lock:
            self._remaining[p.ns] -= 1
            last = self._remaining[p.ns] == 0
        if last:
            self._finish_namespace(p.ns, coll_doc)

    def _copy_partition(self, p: Partition, coll_doc: dict[str, Any], first_attempt: bool) -> None:
        dst_ns = coll_doc["dst"]
        spec = CollectionSpec.from_doc(p.ns, coll_doc["spec"])
        if p.natural and (self.resumed or not first_attempt):
            # A natural-order copy has no resume point: start it again on an empty collection.
            self.sink.drop(dst_ns)
            self.sink.create(dst_ns, spec)
            self.reporter.advance(p.ns, -p.docs, -p.bytes)
            p.docs = p.bytes = 0
            self.meta.reset_partition(p)
        src_coll = self.src[spec.db].get_collection(spec.name, codec_options=RAW)
        self._opened.setdefault(p.id, time.monotonic())  # a retry keeps the first opening (as _first does)
        batches: queue.Queue[tuple[list[RawBSONDocument], int] | BaseException | None] = queue.Queue(maxsize=3)
        reader = threading.Thread(target=self._read, args=(src_coll, p, batches), daemon=True,
                                  name=f"read-{p.id}")
        reader.start()
        last_checkpoint = time.monotonic()
        retiring = False
        try:
            while True:
                item = batches.get()
                if item is None:
                    break
                if item is STOPPED:  # the reader stopped early: not the end of the partition
                    self.meta.checkpoint_partition(p)
                    return
                if isinstance(item, BaseException):
                    raise item
                read, nbytes = item
                if p.id not in self._first:
                    self._first[p.id], self._docs_before[p.id] = time.monotonic(), p.docs
                meeting = self._meetings.get(p.ns)
                met = False
                if meeting is not None:
                    if meeting.met.is_set():
                        break  # the other reader covered the rest
                    if p.descending and meeting.retired.is_set():
                        retiring = True
                        break
                    whole = len(read)
                    read, met = meeting.cut(p.descending, read)
                    if len(read) != whole:
                        nbytes = sum(len(d.raw) for d in read)
                docs = self._kept(p.ns, read)
                if len(docs) != len(read):
                    nbytes = sum(len(d.raw) for d in docs)
                self.throttle.wait(len(docs), nbytes, self.stop)
                if docs:
                    self.sink.insert_copied(dst_ns, docs)
                if meeting is not None:
                    meeting.wrote(p.descending, read)
                with self._lock:
                    self._written += len(read)
                p.docs += len(docs)
                p.bytes += nbytes
                if not p.natural and read:
                    p.last_id = read[-1]["_id"]
                    p.has_last = True
                now = time.monotonic()
                if now - last_checkpoint >= CHECKPOINT_EVERY_S and not met:
                    self.meta.checkpoint_partition(p)
                    last_checkpoint = now
                self.reporter.advance(p.ns, len(docs), nbytes)
                if met:
                    break
                if self.stop.is_set():
                    self.meta.checkpoint_partition(p)
                    return
            with self._lock:
                p.done = True
                meeting = self._meetings.get(p.ns)
                if meeting is not None and not retiring:
                    meeting.met.set()  # this reader reached its end, or the other's run: all is covered
            self.meta.checkpoint_partition(p)
        finally:
            self._drain(batches, reader)

    def _read(self, coll: Any, p: Partition, out: queue.Queue[Any]) -> None:
        try:
            query = dict(self.nsmap.filter_of(p.ns) or {})
            if p.natural:
                cursor = coll.find_raw_batches(query, batch_size=self.settings.batch_size)
            elif p.descending:
                cursor = coll.find_raw_batches(query, batch_size=self.settings.batch_size,
                                               sort=[("_id", -1)]).hint([("_id", 1)])
                if p.has_last:
                    cursor = cursor.max([("_id", p.last_id)])  # exclusive: below what is written
            else:
                cursor = coll.find_raw_batches(query, batch_size=self.settings.batch_size,
                                               sort=[("_id", 1)]).hint([("_id", 1)])
                if p.has_last:
                    cursor = cursor.min([("_id", p.last_id)])
                elif p.has_lower:
                    cursor = cursor.min([("_id", p.lower)])
                if p.has_upper:
                    cursor = cursor.max([("_id", p.upper)])
            stopped = False
            for raw in cursor:
                docs = bson.decode_all(raw, RAW)
                if docs:
                    out.put((docs, len(raw)))
                if self.stop.is_set() or p.done:
                    stopped = True
                    break
            # None only when the cursor is exhausted: the writer marks the partition done on it
            out.put(STOPPED if stopped else None)
        except BaseException as exc:
            out.put(exc)

    # ---------------------------------------------------------------- a second reader (--ranges auto)
    def _resume_meetings(self, parts: list[Partition]) -> None:
        """After a restart, the two readers of a collection meet again; a down reader whose up
        reader finished has nothing left (the up reader finishes only with the collection covered).
        A collection that had a second reader, finished or not, is not tried again."""
        self._tried.update(p.ns for p in parts if p.descending)
        for down in [p for p in parts if p.descending and not p.done]:
            ups = [p for p in parts if p.ns == down.ns and not p.descending]
            if all(p.done for p in ups):
                down.done = True
                self.meta.checkpoint_partition(down)
            else:
                self._meetings[down.ns] = Meeting(self.settings.batch_size)

    def _rate(self, now: float) -> float:
        """Documents per second over the last MEASURE_S, all readers together."""
        self._samples.append((now, self._written))
        while len(self._samples) > 2 and now - self._samples[1][0] >= MEASURE_S:
            self._samples.popleft()
        at, docs = self._samples[0]
        return (self._written - docs) / (now - at) if now > at else 0.0

    def _adapt(self, futures: dict[Future[None], Partition], colls: dict[str, dict[str, Any]]) -> Partition | None:
        """Called four times a second while partitions run: judge a running trial, or start one."""
        now = time.monotonic()
        rate = self._rate(now)
        if self._trial is not None:
            self._judge(now)
            return None
        if self.settings.ranges != "auto" or self.settings.readers < 2 or self.whole \
                or len(futures) >= self.settings.readers:
            return None
        for up in list(futures.values()):
            first = self._first.get(up.id)
            if up.natural or up.descending or up.has_lower or up.has_upper or up.done or up.ns in self._tried \
                    or first is None or now - first < MEASURE_S:
                continue
            self._tried.add(up.ns)
            own_rate = (up.docs - self._docs_before.get(up.id, 0)) / (now - first)  # this process's
            left = max(0, int(colls[up.ns]["spec"].get("count", 0)) - up.docs)
            ok, why = worth_a_second_reader(first - self._opened[up.id], left, own_rate,
                                            self.settings.auto_open_share, 2 * MIN_PARTITION_DOCS)
            if not ok:
                log.info("copy plan: one reader", extra={"ns": up.ns, "reason": why})
                continue
            return self._start_second(up, now, rate, why)
        return None

    def _start_second(self, up: Partition, now: float, rate: float, why: str) -> Partition | None:
        down = Partition(id=f"{up.ns}#{up.index + 1:06d}", ns=up.ns, index=up.index + 1, descending=True)
        with driver_errors("saving the copy's progress"):
            self.meta.add_partition(down)  # saved before it reads: a restart resumes it
            with self._lock:  # one reading of `done`: the up reader may finish at any moment
                started = not up.done
                if started:
                    self._meetings[up.ns] = Meeting(self.settings.batch_size)
                    self._remaining[up.ns] += 1
            if not started:  # finished meanwhile: nothing left for a second reader
                down.done = True
                self.meta.checkpoint_partition(down)
                return None
        self._trial = Trial(ns=up.ns, down=down, at=now, docs_at=self._written, base_rate=rate)
        log.info("copy plan: trying a second reader from the end", extra={
            "ns": up.ns, "reason": why, "docsPerSecond": round(rate)})
        return down

    def _judge(self, now: float) -> None:
        """Keep the second reader if the copy got faster with it; else it stops where it is."""
        t = self._trial
        assert t is not None
        meeting = self._meetings[t.ns]
        first = self._first.get(t.down.id)
        if not (t.down.done or meeting.met.is_set()):
            if first is None and now - t.at < 4 * MEASURE_S:
                return  # still opening its cursor
            if first is not None and now - first < MEASURE_S:
                return
        rate = (self._written - t.docs_at) / (now - t.at) if now > t.at else 0.0
        kept = t.down.done or meeting.met.is_set() or keep_second_reader(t.base_rate, rate, self.settings.auto_gain)
        if not kept:
            meeting.retired.set()
        log.info("copy plan: two readers" if kept else "copy plan: back to one reader (two were not faster)",
                 extra={"ns": t.ns, "docsPerSecondBefore": round(t.base_rate), "docsPerSecondWithTwo": round(rate)})
        self._trial = None

    def _kept(self, src_ns: str, docs: list[RawBSONDocument]) -> list[RawBSONDocument]:
        return docs if self.keep is None else [d for d in docs if self.keep(src_ns, d)]

    @staticmethod
    def _drain(batches: queue.Queue[Any], reader: threading.Thread) -> None:
        while reader.is_alive():
            try:
                batches.get(timeout=0.1)
            except queue.Empty:
                continue
        reader.join()

    def _finish_namespace(self, ns: str, coll_doc: dict[str, Any]) -> None:
        spec = CollectionSpec.from_doc(ns, coll_doc["spec"])
        dst_ns = coll_doc["dst"]
        started = time.monotonic()
        with driver_errors(f"building indexes on {dst_ns}"):
            self.sink.create_indexes(dst_ns, spec.secondary_indexes())
            # Everything the source held under this name before this moment was read.
            self.meta.update_collection(ns, state="done", copiedAt=current_time(self.src))
        coll_doc["state"] = "done"
        self.reporter.finish(ns)
        log.info("namespace copied", extra={"ns": ns, "dst": dst_ns,
                                            "indexes": len(spec.secondary_indexes()),
                                            "indexSeconds": round(time.monotonic() - started, 2)})

    # ---------------------------------------------------------------- one namespace again
    def copy_namespace(self, src_ns: str, dst_ns: str) -> Timestamp:
        """Replace `dst_ns` with a copy of what `src_ns` holds now: options, documents, indexes (one
        reader, in `_id` order). The time after it, before which everything it held was read."""
        with driver_errors(f"copying {src_ns} again"):
            spec = catalog.describe(self.src, src_ns)
            self.sink.drop(dst_ns)
            if spec is None:  # gone again: a later DDL event says where it went
                return current_time(self.src)
            if spec.kind == "view":
                self.sink.create(dst_ns, spec, view_on=spec.options.get("viewOn"))
                return current_time(self.src)
            self.sink.create(dst_ns, spec)
            coll: Any = self.src[spec.db].get_collection(spec.name, codec_options=RAW)
            query = dict(self.nsmap.filter_of(src_ns) or {})
            cursor = (coll.find_raw_batches(query, batch_size=self.settings.batch_size) if spec.natural_order else
                      coll.find_raw_batches(query, batch_size=self.settings.batch_size,
                                            sort=[("_id", 1)]).hint([("_id", 1)]))
            try:
                for raw in cursor:
                    docs = self._kept(src_ns, bson.decode_all(raw, RAW))
                    if docs:
                        self.throttle.wait(len(docs), sum(len(d.raw) for d in docs), self.stop)
                        self.sink.insert_copied(dst_ns, docs)
            except OperationFailure as exc:
                if not namespace_changed(exc):
                    raise
                log.warning("namespace changed again while it was copied again; its next DDL event decides",
                            extra={"ns": src_ns})
            self.sink.create_indexes(dst_ns, spec.secondary_indexes())
            return current_time(self.src)

    # ---------------------------------------------------------------- summary
    def counts(self) -> list[dict[str, Any]]:
        """Source and destination counts per namespace (metadata counts: cheap on MongoDB at any size,
        some compatible servers scan); `mongoferry verify` is the exact proof."""
        assert self.dst is not None
        with driver_errors("counting documents"):
            return count_rows(self.src, self.dst, self.mapping, filters=self.nsmap.filters)


_VIEW = CollectionSpec(ns="", kind="collection")


def _describe_fp(fp: dict[str, Any]) -> str:
    sel = fp.get("selection", {})
    parts = [f"source {','.join(fp.get('source', []))}"]
    for key in ("include", "exclude", "rename"):
        if sel.get(key):
            parts.append(f"{key} {','.join(sel[key])}")
    return "; ".join(parts)

