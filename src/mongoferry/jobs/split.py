"""`mongoferry split`: one source, N destinations by a key, live, until the operator commits.

It is sync with N destinations. Each destination is a sync job of its own in its metadata
database (`<job>.<i>`: its copy partitions, its copy window, its position), so each resumes
independently; one capture feeds N MongoDB sinks (one `Pipeline`), and each sink writes a
document's final state where the rule says it belongs and deletes it everywhere else — so an
update that changes the key moves the document, deletes reach every part, DDL runs everywhere,
and each source transaction stays one transaction on each destination.
Before the first write every namespace is read once, projected on its key: documents the rule
cannot route are refused (unless `--unrouted I`), and `--explain` prints that plan and stops.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymongo
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from mongoferry.core.doc_filter import describe as describe_filters
from mongoferry.core.errors import EXIT_OK, EXIT_UNEXPECTED, InconsistencyError, UsageError
from mongoferry.core.events import Position
from mongoferry.core.identity import same_deployment
from mongoferry.core.routing import Rule, parse_rule, rule_spec
from mongoferry.http.server import HttpServer, parse_bind, secret, sync_app
from mongoferry.infra.clients import deployment_identity, driver_errors
from mongoferry.infra.config import SplitSettings, SyncSettings
from mongoferry.infra.logs import resolve_format
from mongoferry.infra.progress import make_reporter
from mongoferry.infra.redact import redact
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.jobs.sync import CAPTURE_SINK, SyncJob, block_writes, follow
from mongoferry.pipeline.copier import Copier
from mongoferry.pipeline.copy_window import CopyWindow
from mongoferry.pipeline.loop import Pipeline
from mongoferry.pipeline.shares import Share, shares
from mongoferry.pipeline.source_health import SourceHealth
from mongoferry.pipeline.throttle import job_throttle
from mongoferry.sinks.mongo_apply import Applier
from mongoferry.source import capture as cap
from mongoferry.state.endpoints import Endpoints, open_endpoints
from mongoferry.state.meta import SavedPosition
from mongoferry.state.status import JobStatus, StatusReporter

log = logging.getLogger("mongoferry.split")

SHARES_EVERY_S = 60.0  # the source's share per part costs a read of every key: refreshed slowly


def sink_name(i: int) -> str:
    return f"dst{i}"


class PartOwnership:
    """One destination's share, for the copier (`keep`) and the MongoDB sink (`Ownership`)."""

    def __init__(self, rule: Rule, part: int) -> None:
        self.rule = rule
        self.part = part

    def owns(self, ns: str, doc: Mapping[str, Any]) -> bool:
        if self.rule.is_broadcast(ns):
            return True
        owner = self.rule.part_of(ns, doc)
        if owner is None:
            raise InconsistencyError(
                f"{ns} _id {doc.get('_id')!r}: its key {self.rule.key_of(ns)!r} is missing or not routable by "
                f"{self.rule.by}, and no part takes such documents; nothing of it was written",
                "restart the same split with --unrouted I to send such documents to destination I")
        return owner == self.part

    def keep(self, ns: str, doc: RawBSONDocument) -> bool:
        return self.owns(ns, doc)

    def keep_raw(self, ns: str, raw: bytes) -> bool:
        return self.owns(ns, RawBSONDocument(raw))

    def key_may_change(self, ns: str, update: Mapping[str, Any] | None) -> bool:
        return self.rule.key_may_change(ns, update)


class PerDestinationPositions:
    """Each sink's position lives in its own destination's job, under the sync's sink name."""

    def __init__(self, parts: list[Endpoints]) -> None:
        self.metas = {sink_name(i): e.meta for i, e in enumerate(parts)}

    def load_position(self, sink: str) -> SavedPosition | None:
        return self.metas[sink].load_position(CAPTURE_SINK)

    def save_position(self, sink: str, position: Position, last_event: dict[str, Any] | None = None) -> None:
        self.metas[sink].save_position(CAPTURE_SINK, position, last_event)


def part_settings(s: SplitSettings, i: int, dst: str) -> SyncSettings:
    values = s.model_dump(include=set(SyncSettings.model_fields))
    values.update(dst=dst, job=f"{s.job or 'split'}.{i}", reverse=False)
    return SyncSettings.model_construct(**values)


class SplitJob:
    def __init__(self, s: SplitSettings, rule: Rule, parts: list[Endpoints], status: JobStatus,
                 stop: threading.Event) -> None:
        self.s = s
        self.rule = rule
        self.parts = parts
        self.status = status
        self.stop = stop
        self.ownership = [PartOwnership(rule, i) for i in range(len(parts))]
        self.throttle = job_throttle(s, SourceHealth(parts[0].src))  # shared by every part (they read one source)
        self.syncs = [SyncJob(part_settings(s, i, d), e, status, stop, self.throttle)
                      for i, (d, e) in enumerate(zip(s.dst, parts, strict=True))]
        self.copiers: list[Copier] = []
        self.shares: dict[str, Share] = {}
        self._last_shares = 0.0
        self.write_blocked = False

    @property
    def src(self) -> Any:
        return self.parts[0].src

    # ------------------------------------------------------------------ plan
    def collections(self) -> list[str]:
        copier = self.copiers[0]
        return sorted(ns for ns, spec in copier.specs.items() if spec.kind == "collection")

    def plan(self) -> dict[str, Share]:
        with driver_errors("reading the source's keys"):
            self.shares = shares(self.src, self.collections(), self.rule, self.parts[0].nsmap.filters)
        self._last_shares = time.monotonic()
        return self.shares

    def refuse_unroutable(self) -> None:
        bad = [sh for sh in self.shares.values() if sh.unroutable_dropped]
        if bad:
            what = "; ".join(f"{sh.ns}: {sh.unroutable} document(s) (e.g. _id {', '.join(map(repr, sh.sample))})"
                             for sh in bad)
            raise UsageError(f"documents whose key is missing or not routable by {self.rule.by}: {what}",
                             "give --unrouted I to send them to destination I, or fix them on the source; "
                             "nothing was written")

    def explain(self) -> str:
        lines = [f"split by {self.rule.describe()}",
                 "destinations: " + ", ".join(f"{i}={redact(d)}" for i, d in enumerate(self.s.dst))]
        for sh in self.shares.values():
            per = ", ".join(f"{i}: {n}" for i, n in enumerate(sh.parts))
            extra = f", unroutable {sh.unroutable}" if sh.unroutable else ""
            lines.append(f"  {sh.ns}: {per}{extra}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ copy
    def copy_phase(self, capture_start: Any) -> bool:
        """Every destination's share at once; the first failure stops the others (they resume)."""
        def one(sync: SyncJob, copier: Copier) -> bool:
            try:
                return sync.copy_phase(copier, capture_start)
            except BaseException:
                self.stop.set()
                raise

        with ThreadPoolExecutor(len(self.parts), thread_name_prefix="split-copy") as pool:
            futures = [pool.submit(one, sync, copier) for sync, copier in zip(self.syncs, self.copiers, strict=True)]
            done = [f.result() for f in futures]
        return all(done) and not self.stop.is_set()

    # ------------------------------------------------------------------ replay
    def pipeline(self) -> tuple[Pipeline, list[Applier]]:
        sinks = []
        starts = []
        for i, (sync, ends, copier) in enumerate(zip(self.syncs, self.parts, self.copiers, strict=True)):
            with driver_errors("reading the job's checkpoint"):
                job = ends.meta.load_job()
                saved = ends.meta.load_position(CAPTURE_SINK)
            assert job is not None and saved is not None, "every part saves its start before copying"
            sync.mapping = sync.mapping or job.namespaces
            window = CopyWindow.load(ends.meta, ends.nsmap, job.extra.get("copy_end"), copier.copy_namespace)
            sync.window = window
            sinks.append(Applier(ends.src, ends.dst, ends.nsmap, name=sink_name(i), window=window,
                                 ownership=self.ownership[i]))
            starts.append(saved.position)
        opener = self.syncs[0].open_capture(self.src, self.syncs[0].excluded)
        pipeline = Pipeline(opener, list(sinks), min(starts), self.status, self.stop,
                            store=PerDestinationPositions(self.parts), max_batch=self.s.max_batch,
                            throttle=self.throttle,
                            verify_history=lambda last: cap.verify_history(self.src, last))
        return pipeline, sinks

    def replay_phase(self) -> int:
        states = [e.meta.load_job() for e in self.parts]
        if all(j is not None and j.state == "committed" for j in states):
            self.status.set(copy_done=True, state="COMMITTED")
            return EXIT_OK
        self.status.set(copy_done=True, state="CATCHING_UP")
        for e in self.parts:  # for `prune --from-split`, on every destination
            e.meta.set_extra(rule=rule_spec(self.rule), filter=describe_filters(e.nsmap.filters))
        pipeline, sinks = self.pipeline()
        if follow(pipeline, self.status, self.stop, lambda: any(sync.commit_requested() for sync in self.syncs),
                  self.commit, self.persist, sinks):
            return EXIT_OK
        log.info("split stopped; run the same command to continue")
        return EXIT_OK

    # ------------------------------------------------------------------ commit
    def commit(self, pipeline: Pipeline) -> bool:
        self.status.set(state="COMMITTING", paused=False)
        block = not self.s.no_write_block and self.status.commit_write_block
        log.info("commit: blocking writes and draining" if block else "commit: draining", extra={"writeBlock": block})
        if block:
            refused = block_writes(self.src)
            if refused:
                return self.commit_failed(refused)
            self.write_blocked = True
        pipeline.drain()
        if self.stop.is_set():
            return False
        problems = self.compare_shares()
        if problems:
            return self.commit_failed("each destination must hold exactly its share of the source: "
                                      + "; ".join(problems))
        if not self.s.no_verify:
            for i, sync in enumerate(self.syncs):
                failed = sync.verify_final_state(src_keep=self.ownership[i].keep_raw)
                if failed:
                    return self.commit_failed(f"destination {i}: {failed}")
        for e in self.parts:
            e.meta.set_state("committed", commitRequested=False)
        self.release_write_block()
        self.status.set(state="COMMITTED", lag=0.0, commit_requested=False)
        self.persist(force=True)
        log.info("COMMITTED: every destination holds exactly its share of the source; repoint the applications")
        return True

    def compare_shares(self) -> list[str]:
        self.plan()
        problems = []
        for sh in self.shares.values():
            for i, ends in enumerate(self.parts):
                dst_ns = self.syncs[i].mapping.get(sh.ns, sh.ns)
                db, _, coll = dst_ns.partition(".")
                held = int(ends.dst[db][coll].count_documents({}))
                if held != sh.parts[i]:
                    problems.append(f"{sh.ns} on destination {i}: its share {sh.parts[i]}, it holds {held}")
        return problems

    def release_write_block(self) -> None:
        if self.write_blocked:
            self.src.admin.command({"setUserWriteBlockMode": 1, "global": False})
            self.write_blocked = False

    def commit_failed(self, why: str) -> bool:
        log.error("commit failed", extra={"reason": why})
        self.release_write_block()
        for e in self.parts:
            e.meta.set_extra(commitRequested=False)
        self.status.set(state="COMMIT_FAILED", commit_requested=False, last_error=f"commit failed: {why}",
                        errors=self.status.errors + 1)
        self.persist(force=True)
        return False

    # ------------------------------------------------------------------ status
    def rows(self) -> list[dict[str, Any]]:
        """Per namespace and destination: the source's share, what the destination holds, the delta."""
        out = []
        for i, ends in enumerate(self.parts):
            for src_ns, dst_ns in sorted(self.syncs[i].mapping.items()):
                db, _, coll = dst_ns.partition(".")
                held = int(ends.dst[db][coll].estimated_document_count())
                sh = self.shares.get(src_ns)
                share = sh.parts[i] if sh is not None else None
                out.append({"source": src_ns, "destination": dst_ns, "part": i, "sourceCount": share,
                            "destinationCount": held, "delta": (share - held) if share is not None else 0})
        return out

    def persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.status.source_unreachable and not force:
            return
        with contextlib.suppress(PyMongoError), pymongo.timeout(5.0):
            if force or now - self._last_shares >= SHARES_EVERY_S:
                self._last_shares = now  # a count that times out waits its turn too
                self.plan()
            if force or now - self.syncs[0]._last_count >= 5.0:
                self.syncs[0]._last_count = now
                self.status.set(namespaces=self.rows())
        if force or now - self.syncs[0]._last_persist >= 1.0:
            self.syncs[0]._last_persist = now
            snapshot = self.status.snapshot()
            for e in self.parts:
                with contextlib.suppress(PyMongoError):
                    e.meta.set_extra(status=snapshot)


def open_parts(s: SplitSettings) -> list[Endpoints]:
    parts: list[Endpoints] = []
    try:
        for i, dst in enumerate(s.dst):
            parts.append(open_endpoints(part_settings(s, i, dst), "split"))
        ids = [deployment_identity(e.dst) for e in parts]
        for i, a in enumerate(ids):
            for j in range(i):
                if same_deployment(a, ids[j]):
                    raise UsageError(f"--dst {j} and --dst {i} are the same deployment ({a.describe()})",
                                     "give each part its own deployment; nothing was written")
        return parts
    except BaseException:
        for e in parts:
            e.close()
        raise


def run_split(s: SplitSettings) -> int:
    rule = parse_rule(len(s.dst), s.by, s.key, s.bound, s.broadcast, s.unrouted)
    fmt = resolve_format(s.log_format)
    bind = None if s.explain else parse_bind(s.http)
    parts = open_parts(s)
    status = JobStatus()
    http: HttpServer | None = None
    try:
        for e in parts:
            e.refuse_same_deployment("split")
        with stop_on_signals() as stop:
            job = SplitJob(s, rule, parts, status, stop)
            reporter = StatusReporter(make_reporter(fmt), status)
            job.copiers = [Copier(sync.s, e.src, e.dst, e.meta, e.nsmap, reporter, stop, kind="sync",
                                  keep=own.keep, throttle=job.throttle)
                           for sync, e, own in zip(job.syncs, parts, job.ownership, strict=True)]
            for sync, copier in zip(job.syncs, job.copiers, strict=True):
                sync.copier = copier
            try:
                with driver_errors("reading the source's cluster time"):
                    capture_start = cap.current_time(job.src)
                for copier in job.copiers:
                    copier.validate()
                resumed = any(c.resumed for c in job.copiers)
                if not resumed or s.explain:
                    job.plan()
                if s.explain:
                    print(job.explain())
                    return EXIT_OK
                if not resumed:
                    job.refuse_unroutable()
                with driver_errors("opening the change capture on the source"):
                    cap.check_capture(job.src, s.capture)
                if bind:
                    http = HttpServer(sync_app(status, job.throttle, kind="split"), *bind,
                                      token=secret(s.http_token), guarded=True).start()
                log.info("split resuming" if resumed else "split starting",
                         extra={"rule": rule.describe(), "destinations": len(parts),
                                "namespaces": len(job.copiers[0].mapping),
                                "http": f"{bind[0]}:{bind[1]}" if bind else "off"})
                copied = job.copy_phase(capture_start)
            finally:
                reporter.close()
            if not copied:
                log.warning("split stopped during the copy; run the same command again to resume")
                return EXIT_UNEXPECTED if not stop.is_set() else EXIT_OK
            return job.replay_phase()
    finally:
        if http is not None:
            http.stop()
        for e in parts:
            e.close()
