"""`mongoferry sync`: copy, then replay every change until the operator commits.

States: COPYING → CATCHING_UP → RUNNING (⇄ PAUSED) → COMMITTING → COMMITTED.
The capture position is taken before the copy reads anything (no gap); events
are replayed from it after the copy; checkpoints follow applied events only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pymongo
from bson import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from mongoferry.core.errors import EXIT_OK, EXIT_UNEXPECTED, InconsistencyError
from mongoferry.core.events import Position
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.http.server import HttpServer, parse_bind, secret, sync_app
from mongoferry.infra.clients import Client, driver_errors
from mongoferry.infra.config import SyncSettings
from mongoferry.infra.logs import resolve_format
from mongoferry.infra.progress import make_reporter
from mongoferry.infra.redact import redact
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.pipeline.copier import Copier
from mongoferry.pipeline.copy_window import CopyWindow
from mongoferry.pipeline.counts import capped_max, count_rows, describe_count_difference
from mongoferry.pipeline.loop import Pipeline
from mongoferry.pipeline.source_health import SourceHealth
from mongoferry.pipeline.throttle import Throttle, job_throttle
from mongoferry.sinks.mongo_apply import Applier
from mongoferry.source import capture as cap
from mongoferry.state.endpoints import Endpoints, open_endpoints
from mongoferry.state.status import JobStatus, StatusReporter

log = logging.getLogger("mongoferry.sync")

COMMAND_NOT_FOUND = 59
CAPTURE_SINK = "dst"
PERSIST_EVERY_S = 1.0
COUNT_EVERY_S = 5.0
COUNT_TIMEOUT_S = 3.0


def follow(pipeline: Pipeline, status: JobStatus, stop: threading.Event, commit_requested: Callable[[], bool],
           commit: Callable[[Pipeline], bool], persist: Callable[..., None], sinks: list[Applier]) -> bool:
    """Follow the source until committed (True) or stopped (False): CATCHING_UP → RUNNING (⇄ PAUSED),
    a commit when one is asked for (a refused one goes on following)."""
    try:
        while not stop.is_set():
            if commit_requested():
                if commit(pipeline):
                    return True
                continue
            if status.paused:
                status.set(state="PAUSED")
                persist()
                stop.wait(0.2)
                continue
            batch = pipeline.step()
            caught_up = batch.idle or (batch.units and status.lag < 1.0)
            status.set(events=sum((s.stats.events for s in sinks[1:]), sinks[0].stats.events.copy()))
            if status.state in ("PAUSED", "CATCHING_UP"):
                status.set(state="RUNNING" if caught_up else "CATCHING_UP")
            persist()
        return False
    finally:
        pipeline.close()
        persist(force=True)


def block_writes(src: Client) -> str | None:
    """Block user writes on the source for a commit; why it cannot, or None once blocked."""
    try:
        src.admin.command({"setUserWriteBlockMode": 1, "global": True})
        return None
    except OperationFailure as exc:
        if exc.code != COMMAND_NOT_FOUND:
            raise
        return ("the source cannot block writes (setUserWriteBlockMode needs MongoDB 6.0+): stop the application "
                "writers yourself, then commit without write blocking: `mongoferry commit --no-write-block` or "
                "POST /api/v1/commit with {\"writeBlock\": false}")


class SyncJob:
    def __init__(self, settings: SyncSettings, ends: Endpoints, status: JobStatus, stop: threading.Event,
                 throttle: Throttle | None = None) -> None:
        self.s = settings
        # one limit for everything the job writes: copied documents and applied events
        self.throttle = throttle or job_throttle(settings, SourceHealth(ends.src))
        self.ends = ends
        self.status = status
        self.stop = stop
        self.excluded = ["admin", "config", "local", settings.meta_db]
        self.mapping: dict[str, str] = {}
        self.write_blocked = False
        self._last_persist = 0.0
        self.copier: Copier | None = None
        self.window: CopyWindow | None = None
        self._last_count = 0.0

    # ------------------------------------------------------------------ phases
    def copy_phase(self, copier: Copier, capture_start: Timestamp) -> bool:
        """`capture_start` was taken before the copier listed the source's namespaces: a collection
        created after the listing is in the stream from its creation on."""
        meta, src = self.ends.meta, self.ends.src
        job = copier.job
        if job is None or job.state == "initializing":
            start = Position(capture_start)
            copier.initialise(extra={"capture": self.s.capture},
                              before_copy=lambda: meta.save_position(CAPTURE_SINK, start))
            job = copier.job
        assert job is not None
        self.mapping = copier.mapping
        if job.state == "copying":
            self.status.set(state="COPYING")
            if not copier.copy():
                return False
            with driver_errors("recording the end of the copy"):
                meta.set_state("replaying", copy_end=cap.current_time(src))
        return True

    def open_capture(self, client: Client, excluded: list[str]) -> Any:
        def opener(position: Position) -> cap.Capture:
            if self.s.capture == "oplog":
                return cap.OplogCapture(client, position)
            return cap.ChangeStreamCapture(client, position, excluded)
        return opener

    def pipeline(self, source: Client, sink: Applier, start: Position) -> Pipeline:
        return Pipeline(self.open_capture(source, self.excluded), [sink], start, self.status, self.stop,
                        store=self.ends.meta, max_batch=self.s.max_batch, throttle=self.throttle,
                        verify_history=lambda last: cap.verify_history(source, last))

    def replay_phase(self) -> int:
        meta = self.ends.meta
        with driver_errors("reading the job's checkpoint"):
            job = meta.load_job()
            saved = meta.load_position(CAPTURE_SINK)
            start = saved.position if saved else None
        assert job is not None and start is not None, "a sync job always saves its start position before copying"
        self.mapping = self.mapping or job.namespaces
        self.status.set(copy_done=True, state="COMMITTED" if job.state == "committed" else "CATCHING_UP")
        if job.state == "committed":
            return self.reverse_phase() if self.s.reverse else EXIT_OK
        assert self.copier is not None
        self.window = CopyWindow.load(meta, self.ends.nsmap, job.extra.get("copy_end"), self.copier.copy_namespace)
        applier = Applier(self.ends.src, self.ends.dst, self.ends.nsmap, name=CAPTURE_SINK, window=self.window)
        replayer = self.pipeline(self.ends.src, applier, start)
        if follow(replayer, self.status, self.stop, self.commit_requested, self.commit, self.persist, [applier]):
            return self.reverse_phase() if self.s.reverse else EXIT_OK
        log.info("sync stopped; run the same command to continue")
        return EXIT_OK

    # ------------------------------------------------------------------ commit
    def commit_requested(self) -> bool:
        if self.status.commit_requested:
            return True
        try:
            job = self.ends.meta.job_doc()
        except PyMongoError:
            return False
        extra = (job or {}).get("extra", {})
        if extra.get("commitRequested"):  # `mongoferry commit` asks through the metadata
            self.status.set(commit_requested=True, commit_write_block=extra.get("commitWriteBlock", True))
            return True
        return False

    def commit(self, replayer: Pipeline) -> bool:
        src = self.ends.src
        self.status.set(state="COMMITTING", paused=False)
        self.persist(force=True)
        block = not self.s.no_write_block and self.status.commit_write_block
        log.info("commit: blocking writes and draining" if block else "commit: draining", extra={"writeBlock": block})
        if block:
            refused = block_writes(src)
            if refused:
                return self.commit_failed(refused)
            self.write_blocked = True
        replayer.drain()
        if self.stop.is_set():
            return False
        rows = self.count_rows(exact=True)
        differing = [r for r in rows if r["delta"]]
        if differing:
            hint = ("" if self.write_blocked else
                    "; if applications still write to the source, stop them (or let the commit block writes)")
            capped = capped_max(self.ends.dst, [r["destination"] for r in differing])
            return self.commit_failed(describe_count_difference(differing, capped, "after draining", hint))
        if not self.s.no_verify:
            failed = self.verify_final_state()
            if failed:
                return self.commit_failed(failed)
        self.reverse_start = cap.current_time(self.ends.dst)
        self.ends.meta.set_state("committed", reverseStart=self.reverse_start, commitRequested=False)
        self.status.set(state="COMMITTED", lag=0.0, commit_requested=False)
        self.persist(force=True)
        log.info("COMMITTED: the destination holds everything the source wrote; repoint the applications")
        return True

    def verify_final_state(self, src_keep: Callable[[str, bytes], bool] | None = None) -> str | None:
        """Compare every document and the metadata of both sides; a reason to refuse, or None."""
        from mongoferry.infra.config import VerifySettings
        from mongoferry.verify.oneshot import OneShot

        log.info("commit: verifying the final state (skip with --no-verify)")
        vs = VerifySettings.model_validate({
            "src": self.s.src, "dst": self.s.dst, "include": self.s.include, "exclude": self.s.exclude,
            "rename": self.s.rename, "meta_db": self.s.meta_db, "workers": self.s.readers, "check_only": True})
        sink = OneShot(vs, self.ends.src, self.ends.dst, self.ends.nsmap, self.stop, src_keep=src_keep).run()
        if self.stop.is_set():
            return "stopped during the final verification"
        if sink.total:
            from mongoferry.verify.findings import describe_finding

            for finding in sink.shown()[:20]:
                log.error("verification finding", extra={"finding": " / ".join(describe_finding(finding))})
            return (f"the final verification found {sink.total} difference(s); run `mongoferry verify "
                    "--check-only` with the same options for the report (or commit with --no-verify)")
        log.info("commit: verification found the two sides identical")
        return None

    def commit_failed(self, why: str) -> bool:
        log.error("commit failed", extra={"reason": why})
        if self.write_blocked:
            self.ends.src.admin.command({"setUserWriteBlockMode": 1, "global": False})
            self.write_blocked = False
        self.ends.meta.set_extra(commitRequested=False)
        self.status.set(state="COMMIT_FAILED", commit_requested=False, last_error=f"commit failed: {why}",
                        errors=self.status.errors + 1)
        self.persist(force=True)
        return False

    # ------------------------------------------------------------------ reverse
    def reverse_phase(self) -> int:
        """After commit: replay destination → source so the cutover can be rolled back."""
        meta = self.ends.meta
        if self.write_blocked:
            self.ends.src.admin.command({"setUserWriteBlockMode": 1, "global": False})
            self.write_blocked = False
        job = meta.load_job()
        assert job is not None
        saved = meta.load_position("reverse")
        start = saved.position if saved else Position(job.extra["reverseStart"])
        reverse_map = NamespaceMap(include=tuple(self.mapping.values()),
                                   coll_renames={d: s for s, d in self.mapping.items() if d != s},
                                   meta_db=self.s.meta_db)
        applier = Applier(self.ends.dst, self.ends.src, reverse_map, name="reverse")
        replayer = self.pipeline(self.ends.dst, applier, start)
        log.info("reverse replication running: destination → source")
        try:
            while not self.stop.is_set():
                replayer.step()
                self.persist()
        finally:
            replayer.close()
        return EXIT_OK

    # ------------------------------------------------------------------ status
    def count_rows(self, exact: bool = False) -> list[dict[str, Any]]:
        # Informative counts never hold the job up for long (an unreachable server, a slow count).
        with contextlib.nullcontext() if exact else pymongo.timeout(COUNT_TIMEOUT_S):
            return count_rows(self.ends.src, self.ends.dst, self.mapping, exact, self.ends.nsmap.filters)

    def persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.window is not None and len(self.window.recopied) != len(self.status.recopied):
            self.status.set(recopied=list(self.window.recopied))
        if (force or now - self._last_count >= COUNT_EVERY_S) and not self.status.source_unreachable:
            self._last_count = now
            with contextlib.suppress(PyMongoError):  # counts are informative; a blip must not stop the sync
                self.status.set(namespaces=self.count_rows())
        if force or now - self._last_persist >= PERSIST_EVERY_S:
            self._last_persist = now
            with contextlib.suppress(PyMongoError):
                self.ends.meta.set_extra(status=self.status.snapshot())


def run_sync(settings: SyncSettings) -> int:
    fmt = resolve_format(settings.log_format)
    bind = parse_bind(settings.http)
    ends = open_endpoints(settings, "sync")
    status = JobStatus()
    http: HttpServer | None = None
    try:
        ends.refuse_same_deployment("sync")
        with stop_on_signals() as stop:
            job = SyncJob(settings, ends, status, stop)
            reporter = StatusReporter(make_reporter(fmt), status)
            copier = Copier(settings, ends.src, ends.dst, ends.meta, ends.nsmap, reporter, stop, kind="sync",
                            throttle=job.throttle)
            job.copier = copier
            try:
                with driver_errors("reading the source's cluster time"):
                    capture_start = cap.current_time(ends.src)  # before the listing: no gap after it
                copier.validate()
                with driver_errors("opening the change capture on the source"):
                    cap.check_capture(ends.src, settings.capture)
                if bind:
                    http = HttpServer(sync_app(status, job.throttle), *bind, token=secret(settings.http_token),
                                      guarded=True).start()
                log.info("sync resuming" if copier.resumed else "sync starting",
                         extra={"namespaces": len(copier.mapping), "capture": settings.capture,
                                "http": f"{bind[0]}:{bind[1]}" if bind else "off"})
                copied = job.copy_phase(copier, capture_start)
            finally:
                reporter.close()
            if not copied:
                log.warning("sync stopped during the copy; run the same command again to resume")
                return EXIT_UNEXPECTED if not stop.is_set() else EXIT_OK
            return job.replay_phase()
    except InconsistencyError as exc:
        status.set(last_error=redact(exc.one_line()))
        raise
    finally:
        if http is not None:
            http.stop()
        ends.close()
