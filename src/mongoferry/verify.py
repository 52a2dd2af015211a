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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from mongoferry.cli_support import F, common_options, connection_options, env_help, run_guarded, settings_from
from mongoferry.clients import Client, driver_errors
from mongoferry.config import VerifySettings
from mongoferry.errors import EXIT_INCONSISTENT, EXIT_OK, UsageError
from mongoferry.namespaces import NamespaceMap
from mongoferry.state import Partition
from mongoferry.verify_engine import Engine
from mongoferry.verify_findings import DocFinding, Finding, NsFinding, Pair, Sink, describe_finding, tolerated
from mongoferry.verify_keys import id_sort_key
from mongoferry.verify_metadata import NamespacePlan, compare_metadata, plan_ranges, resolve_pairs, target_of

__all__ = ["OneShot", "VerifySettings", "describe_finding", "run_check_only", "verify_command"]

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
                 stop: threading.Event) -> None:
        self.s = s
        self.nsmap = nsmap
        self.engine = Engine(src, dst, s.compare, stop)
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


def _verify_options(fn: F) -> F:
    opts = [
        click.option("--src-namespace", multiple=True,
                     help=env_help("Verify exactly this DB.COLL (repeatable or comma list; not with "
                                   "--include/--exclude/--rename).", "src_namespace")),
        click.option("--dst-namespace", multiple=True,
                     help=env_help("Destination of the --src-namespace at the same position (default: same "
                                   "names).", "dst_namespace")),
        click.option("--check-only", is_flag=True, default=None,
                     help=env_help("Run one full pass, print a report and exit (0 identical, 4 different) "
                                   "instead of serving the HTTP API.", "check_only")),
        click.option("--compare", type=click.Choice(["binary", "ignore-order"]),
                     help=env_help("binary: field order matters; ignore-order (default): it does not.",
                                   "compare")),
        click.option("--failure-display-size", type=int,
                     help=env_help("Findings shown in the report (default 20); the rest are counted.",
                                   "failure_display_size")),
        click.option("--workers", type=int, help=env_help("Ranges compared in parallel (default 4).", "workers")),
        click.option("--partition-docs", type=int,
                     help=env_help("Target documents per _id range of big collections (default 50000).",
                                   "partition_docs")),
        click.option("--port", type=int,
                     help=env_help("Server mode: HTTP API port on 127.0.0.1 (default 27020; 0 = any).", "port")),
        click.option("--start", is_flag=True, default=None,
                     help=env_help("Server mode: start checking at once instead of waiting for "
                                   "POST /api/v1/check.", "start")),
        click.option("--clean", is_flag=True, default=None,
                     help=env_help("Server mode: forget a saved verification instead of resuming it.", "clean")),
        click.option("--index-spec-ignore", multiple=True,
                     help=env_help("With --check-only: tolerate index differences only in expireAfterSeconds "
                                   "and/or unique (repeatable or comma list).", "index_spec_ignore")),
        click.option("--json", "as_json", is_flag=True, help="With --check-only: print the report as one JSON "
                                                             "document on stdout."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.command("verify")
@connection_options("Verify")
@_verify_options
@common_options
@click.pass_context
def verify_command(ctx: click.Context, /, as_json: bool, **values: Any) -> None:
    """Prove the destination holds what the source holds: documents (type-exact, field by
    field), collection options, views and indexes.

    With --check-only: one full pass, exit 0 when identical, 4 with a report.
    Otherwise: a migration-verifier compatible HTTP API on 127.0.0.1:--port
    (POST /api/v1/check, POST /api/v1/writesOff, GET /api/v1/progress,
    /api/v1/summary, /api/v1/docMismatches, /api/v1/nsMismatches and
    /api/v1/mismatches) that tracks changes on both sides and rechecks them
    until writes are off; it resumes after a restart.
    """
    def job() -> int:
        settings = settings_from(ctx, VerifySettings, values)
        if settings.check_only:
            if settings.start or settings.clean:
                raise UsageError("--start and --clean are server-mode options; --check-only keeps no state",
                                 "drop them, or drop --check-only to run the server")
            return run_check_only(settings, as_json)
        if as_json:
            raise UsageError("--json needs --check-only", "the server mode answers in JSON on its HTTP API")
        if settings.index_spec_ignore:
            raise UsageError("--index-spec-ignore needs --check-only",
                             "in server mode ask GET /api/v1/nsMismatches?indexSpecIgnore=... instead")
        from mongoferry.verify_server import run_server

        code: int = run_server(settings)
        return code

    run_guarded(job)


if __name__ == "__main__":  # pragma: no cover - `python -m mongoferry.verify …` before cli.py registers it
    verify_command(sys.argv[1:])
