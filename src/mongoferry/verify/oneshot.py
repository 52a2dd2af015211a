"""`mongoferry verify`: prove that the destination holds what the source holds.

Two modes share one comparison engine:

* ``--check-only``: one full pass, a report, exit 0 (identical) or 4 (differences).
* server mode (default): a migration-verifier compatible HTTP API with change tracking and
  recheck generations (see :mod:`mongoferry.verify.server`).

What is compared, per selected namespace pair (source -> destination):

* the collection spec (type, options, views' ``viewOn``/``pipeline``, ``readOnly``) with
  :func:`spec_compare.compare_collection_specs`; a namespace present on one side only is a finding
  and its data is not compared;
* the indexes with :func:`spec_compare.compare_index_specs` (collections only);
* the documents, paired *type-exactly* by ``_id`` (:func:`compare.id_key_from_raw_document`),
  both sides read as raw BSON and compared with :func:`compare.compare_raw_documents`.

The modules, in pipeline order: :mod:`verify_keys` (raw BSON pairing keys),
:mod:`verify_metadata` (namespace pairs, specs, indexes, ranges), :mod:`verify_engine`
(the bounded-memory merge join), :mod:`verify_findings` (what is reported), and here the
one-shot report and the ``verify`` command.
"""

from __future__ import annotations

import heapq
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mongoferry.core.errors import EXIT_INCONSISTENT, EXIT_OK
from mongoferry.core.model import Partition
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import Client, driver_errors
from mongoferry.infra.config import VerifySettings
from mongoferry.verify.engine import Engine
from mongoferry.verify.findings import DocFinding, Finding, NsFinding, Pair, Sink, describe_finding, tolerated
from mongoferry.verify.keys import id_sort_key
from mongoferry.verify.metadata import (
    NamespacePlan,
    compare_metadata,
    plan_ranges,
    refuse_self_comparison,
    resolve_pairs,
    target_of,
)

__all__ = ["OneShot", "VerifySettings", "describe_finding", "run_check_only"]

log = logging.getLogger("mongoferry.verify")

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

    def __init__(self, keep: int, tolerances: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.keep = keep
        self.tolerances = tolerances
        self.tolerated = 0
        self.heap: list[_Largest] = []
        self.seq = 0
        self.by_type: dict[str, int] = {}
        self.ns_total = 0
        self.doc_total = 0
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
        if tolerated(finding.to_json(), self.tolerances):
            with self.lock:
                self.tolerated += 1
            return
        with self.lock:
            self.ns_total += 1
        self._add((finding.ns, 0, (finding.aspect, finding.component or "")), finding)

    def counted(self, pair: Pair, src_docs: int, dst_docs: int, src_bytes: int, dst_bytes: int) -> None:
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
                 stop: threading.Event, src_keep: Callable[[str, bytes], bool] | None = None) -> None:
        self.s = s
        self.nsmap = nsmap
        self.engine = Engine(src, dst, s.compare, stop, src_keep=src_keep, src_filters=nsmap.filters)
        self.sink = ReportSink(s.failure_display_size, frozenset(s.index_spec_ignore))
        self.pairs: list[Pair] = []
        self.work = WorkQueue(s.workers, stop)
        self.started = time.monotonic()

    def target(self, ns: str) -> str | None:
        return target_of(ns, self.pairs, self.s, self.nsmap)

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
        "indexSpecIgnore": list(s.index_spec_ignore),
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
                     "notShown": sink.total - len(shown), "items": [f.to_json() for f in shown],
                     "toleratedIndexDifferences": sink.tolerated},
    }


def format_report(report: dict[str, Any], sink: ReportSink, display_size: int) -> str:
    f = report["findings"]
    lines: list[str] = []
    head = (f"{len(report['namespaces'])} namespace(s), {report['docsCompared']:,} source and "
            f"{report['dstDocs']:,} destination document(s) compared in {report['seconds']:.1f}s "
            f"({report['docsPerSecond']:,.0f} docs/s, --compare {report['compare']})")
    if f["toleratedIndexDifferences"]:
        head += (f"; {f['toleratedIndexDifferences']} index difference(s) tolerated by --index-spec-ignore "
                 f"{','.join(report['indexSpecIgnore'])}")
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
    from mongoferry.infra.runtime import stop_on_signals
    from mongoferry.state.endpoints import open_endpoints

    ends = open_endpoints(s)
    try:
        refuse_self_comparison(s, ends)
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
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(format_report(report, sink, s.failure_display_size))
    return EXIT_OK if sink.total == 0 else EXIT_INCONSISTENT
