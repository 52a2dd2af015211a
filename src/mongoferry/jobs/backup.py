"""`mongoferry backup`: a snapshot in mongodump's layout, then the oplog in chunks, continuously.

One pipeline: the oplog capture → the archive sink (sinks/archive/oplog.py), whose checkpoint is
the manifest. A snapshot is a copy (pipeline/copier.py) into the archive copy sink, read in a
thread while the pipeline keeps archiving. Its start is taken before it lists anything, and the
archive covers the oplog from the backup's start, so every change made while it was read is in
the chunks: once the archive passes the snapshot's end, the snapshot's own `oplog.bson` is cut
from them and the snapshot is listed as complete (`mongodump --oplog`'s guarantee, by construction).

A collection renamed while the snapshot still had to read it would restore without the documents
it held before the snapshot started; such a snapshot is abandoned (said in the manifest and the
log) and a new one taken at once. Drops and re-creations need nothing: the oplog replays them.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Timestamp

from mongoferry.core.errors import EXIT_OK, EXIT_UNEXPECTED, HistoryLostError, UsageError
from mongoferry.core.events import Position
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.http.server import HttpServer, backup_app, parse_bind, secret
from mongoferry.infra.clients import Client, connect, driver_errors, validate_uri
from mongoferry.infra.config import BackupSettings, CopySettings
from mongoferry.infra.logs import resolve_format
from mongoferry.infra.progress import make_reporter
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.infra.storage import Prefixed, Storage, open_storage
from mongoferry.pipeline.copier import Copier, source_identity
from mongoferry.pipeline.loop import Pipeline
from mongoferry.pipeline.source_health import SourceHealth
from mongoferry.pipeline.throttle import Throttle, job_throttle
from mongoferry.sinks.archive.layout import (
    CLUSTER_FILE,
    SUFFIX,
    compress,
    compression_of,
    decompress,
    iter_bson,
    snapshot_id,
    snapshot_key,
    ts_text,
)
from mongoferry.sinks.archive.manifest import Manifest, Snapshot
from mongoferry.sinks.archive.oplog import OplogArchiveSink
from mongoferry.sinks.archive.snapshot import ArchiveCopySink
from mongoferry.source import capture as cap
from mongoferry.state.snapshot_progress import SnapshotProgress
from mongoferry.state.status import JobStatus

log = logging.getLogger("mongoferry.backup")

SYSTEM_DBS = ("admin", "config", "local")


def parse_sources(values: list[str]) -> list[tuple[str, str]]:
    """`URI`, or `NAME=URI` per shard; names are the sub-folders of a cluster backup."""
    if not values:
        raise UsageError("--src is required", "give the source: --src mongodb://HOST/?replicaSet=rs0, or "
                         "--src NAME=URI once per shard and config server")
    out = []
    for value in values:
        name, sep, uri = value.partition("=")
        if sep and not name.startswith("mongodb") and "://" not in name:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise UsageError(f"--src name {name!r} is not a plain name", "use letters, digits, - and _")
            out.append((name, uri))
        else:
            out.append(("", value))
    if len(out) > 1 and any(not n for n, _ in out):
        raise UsageError("several --src need a name each", "write --src shard0=URI --src shard1=URI --src cfg=URI")
    if len({n for n, _ in out}) != len(out):
        raise UsageError("two --src have the same name", "give every shard its own name")
    return out


def snapshot_entries(storage: Storage, manifest: Manifest, after: Timestamp, until: Timestamp) -> list[bytes]:
    """The archived oplog entries with `after` < ts <= `until`, in order."""
    out = []
    for chunk in manifest.chunks:
        if chunk.until <= after or chunk.after >= until or not chunk.key:
            continue
        data = storage.get(chunk.key)
        if data is None:
            raise UsageError(f"oplog chunk {chunk.key} is listed in the manifest but missing", "")
        for raw in iter_bson(io.BytesIO(decompress(data, compression_of(chunk.key)))):
            ts = bson.decode(raw)["ts"]
            if after < ts <= until:
                out.append(raw)
    return out


def harmful_renames(entries: list[bytes], nsmap: NamespaceMap, copied_at: dict[str, Timestamp | None]) -> list[str]:
    """Renames the snapshot cannot restore through: a collection renamed before its read was over
    (its documents from before the snapshot's start are under neither name), or renamed into the
    selection from outside it."""
    found = []
    for raw in entries:
        entry = bson.decode(raw)
        o = entry.get("o") or {}
        if entry.get("op") != "c" or "renameCollection" not in o:
            continue
        src, to, ts = str(o["renameCollection"]), str(o.get("to", "")), entry["ts"]
        if not nsmap.selected(to) and not nsmap.selected(src):
            continue
        listed = src in copied_at
        done = copied_at.get(src)
        if (listed and (done is None or done >= ts)) or (nsmap.selected(to) and not nsmap.selected(src)):
            found.append(f"{src} → {to} at {ts.time}:{ts.inc}")
    return found


@dataclass
class SnapshotRun:
    """One snapshot being read, in a thread of its own."""

    snapshot: Snapshot
    thread: threading.Thread | None = None
    copier: Copier | None = None
    done: bool = False
    error: BaseException | None = None
    progress: SnapshotProgress | None = None
    sink: ArchiveCopySink | None = None


@dataclass
class SourceBackup:
    """The backup of one replica set (or one shard of a cluster): its pipeline and its snapshots."""

    s: BackupSettings
    name: str
    uri: str
    client: Client
    storage: Storage
    nsmap: NamespaceMap
    stop: threading.Event
    status: JobStatus
    manifest: Manifest = field(init=False)
    run: SnapshotRun | None = None
    sink: OplogArchiveSink | None = None
    pipeline: Pipeline | None = None
    completed: int = 0
    throttle: Throttle | None = None  # the job's limit on the documents a snapshot reads
    progress_format: str = "quiet"  # how a snapshot's copy shows its progress (rich, json, quiet)

    # ------------------------------------------------------------------ setup (read-only until `open`)
    def check(self) -> None:
        with driver_errors(f"reading the oplog of {self.label}"):
            cap.check_capture(self.client, "oplog", self.label)
        try:
            existing = Manifest.load(self.storage)
        except ValueError as exc:
            raise UsageError(f"{self.storage.url}: {exc}", "give an empty directory or a mongoferry backup") from None
        identity = {"hosts": source_identity(self.uri), "name": self.name}
        if existing is not None and existing.source.get("hosts") != identity["hosts"]:
            raise UsageError(
                f"{self.storage.url} holds the backup of another deployment ({','.join(existing.source['hosts'])})",
                "give each deployment its own --to, or remove that backup first")
        if existing is not None and existing.selection != self.nsmap.fingerprint():
            raise UsageError(f"{self.storage.url} holds a backup of another selection (--include/--exclude)",
                             "rerun with the original --include/--exclude, or give another --to")
        if existing is None and self.storage.list():
            raise UsageError(f"{self.storage.url} is not empty and holds no mongoferry backup",
                             "give an empty directory (or bucket prefix) for a new backup")
        if existing is not None:
            self.manifest = existing
        else:
            self.manifest = Manifest(source=identity, compression=self.s.compress, selection=self.nsmap.fingerprint())
        self.manifest.chunk_s = self.s.chunk

    @property
    def label(self) -> str:
        return f"source {self.name}" if self.name else "the source"

    def open(self) -> None:
        """Write the manifest of a new backup (its start: the oplog is archived from here on)."""
        if self.manifest.start is None:
            with driver_errors("reading the source's cluster time"):
                start = cap.newest_oplog_time(self.client)
            self.manifest.start = self.manifest.covered = start
            self.manifest.save(self.storage)
            log.info("backup starting", extra={"source": self.name or "-", "to": self.storage.url,
                                               "start": ts_text(start)})
        else:
            self.manifest.save(self.storage)  # running again: a heartbeat before anything else (retention waits)
            log.info("backup resuming", extra={"source": self.name or "-", "to": self.storage.url,
                                               "from": ts_text(self.manifest.position or Timestamp(0, 0))})
        self.sink = OplogArchiveSink(self.storage, self.manifest, self.manifest.compression, self.s.chunk,
                                     self.s.chunk_size)
        self.pipeline = Pipeline(lambda p: cap.OplogCapture(self.client, p), [self.sink],
                                 Position(self.sink.saved), self.status, self.stop, store=None,
                                 max_batch=1000)
        unfinished = next((s for s in self.manifest.snapshots if s.state == "copying"), None)
        if unfinished is not None:
            self.start_snapshot(unfinished)
        elif not any(s.state == "complete" for s in self.manifest.snapshots):
            # a new backup's first snapshot starts where its archive does (one oplog read less)
            self.start_snapshot(None, self.manifest.start if not self.manifest.snapshots else None)

    # ------------------------------------------------------------------ snapshots
    def start_snapshot(self, snap: Snapshot | None, start: Timestamp | None = None) -> None:
        if snap is None:
            if start is None:
                with driver_errors("reading the source's cluster time"):
                    start = cap.newest_oplog_time(self.client)  # before the listing: every later change is archived
            snap = Snapshot(id=snapshot_id(start, {s.id for s in self.manifest.snapshots}), start=start,
                            started=time.time())
            with self.manifest.lock:
                self.manifest.snapshots.append(snap)
            self.manifest.save(self.storage)
            log.info("snapshot starting", extra={"snapshot": snap.id, "source": self.name or "-"})
        else:
            log.info("snapshot resuming", extra={"snapshot": snap.id, "source": self.name or "-"})
        run = SnapshotRun(snap)
        if snap.end is None:
            run.thread = threading.Thread(target=self._copy, args=(run,), name=f"snapshot-{snap.id}", daemon=True)
            run.thread.start()
        else:
            run.done = True  # read before a restart; only its oplog.bson is left to write
        self.run = run

    def _copy(self, run: SnapshotRun) -> None:
        reporter = make_reporter(self.progress_format)
        try:
            settings = CopySettings.model_validate({
                "src": self.uri, "include": self.s.include, "exclude": self.s.exclude, "workers": self.s.workers,
                "batch_size": self.s.batch_size, "ranges": "off", "drop_dst": True})
            run.progress = SnapshotProgress(self.storage, run.snapshot.id)
            run.sink = ArchiveCopySink(self.storage, run.snapshot.id, self.manifest.compression)
            copier = Copier(settings, self.client, None, run.progress, self.nsmap, reporter, self.stop, kind="backup",
                            sink=run.sink, whole=True, throttle=self.throttle)
            run.copier = copier
            copier.validate()
            copier.initialise()
            if not copier.copy():
                return
            with driver_errors("reading the source's cluster time"):
                # Every read saw the writes up to the newest oplog entry (its start, if none came after)
                end = max(cap.newest_oplog_time(self.client), run.snapshot.start)
            run.snapshot.end = end
            run.snapshot.namespaces = len(copier.mapping)
            run.snapshot.documents = sum(p.docs for p in run.progress.load_partitions())
            run.snapshot.bytes = sum(p.bytes for p in run.progress.load_partitions())
            self.manifest.save(self.storage)
            run.done = True
            log.info("snapshot read", extra={"snapshot": run.snapshot.id, "namespaces": run.snapshot.namespaces,
                                             "documents": run.snapshot.documents, "end": ts_text(end)})
        except BaseException as exc:
            run.error = exc
        finally:
            reporter.close()
            if run.sink is not None:
                run.sink.close()

    def finish_snapshot(self) -> bool:
        """Once the archive has passed a read snapshot's end: its oplog.bson, then complete."""
        run = self.run
        if run is None or not run.done or self.sink is None:
            return False
        snap = run.snapshot
        assert snap.end is not None
        self.sink.reach = snap.end
        if self.sink.saved < snap.end and (self.manifest.covered is None or self.manifest.covered < snap.end):
            return False
        self.sink.reach = None
        entries = snapshot_entries(self.storage, self.manifest, snap.start, snap.end)
        progress = run.progress or SnapshotProgress(self.storage, snap.id)
        copied = {c["_id"]: c.get("copiedAt") for c in progress.load_collections()}
        renames = harmful_renames(entries, self.nsmap, copied)
        if renames:
            snap.state = "abandoned"
            snap.reason = "renamed while it was read: " + "; ".join(renames[:5])
            self.manifest.save(self.storage)
            log.warning("snapshot abandoned: a collection was renamed while it was read; taking a new one",
                        extra={"snapshot": snap.id, "renames": renames[:5]})
            self.run = None
            self.start_snapshot(None)
            return False
        # mongodump --gzip writes its oplog gzip'd under the plain name oplog.bson, the only name
        # mongorestore --gzip --oplogReplay reads (restore replays the archive's chunks, not this file)
        compression = self.manifest.compression
        name = "oplog.bson" + (SUFFIX[compression] if compression == "zstd" else "")
        self.storage.put(snapshot_key(snap.id, name), compress(b"".join(entries), compression))
        snap.state = "complete"
        self.manifest.save(self.storage)
        self.completed += 1
        self.run = None
        log.info("snapshot complete: restorable from its end", extra={
            "snapshot": snap.id, "end": ts_text(snap.end), "oplogEntries": len(entries)})
        return True

    def snapshot_due(self) -> bool:
        if self.run is not None or self.s.snapshot_every is None:
            return False
        # from when the last one began (on an idle source its oplog start can be long before that)
        newest = max((s.started or s.start.time for s in self.manifest.snapshots if s.state != "abandoned"),
                     default=0.0)
        return time.time() - newest >= self.s.snapshot_every

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        assert self.pipeline is not None
        try:
            self.pipeline.step()
        except HistoryLostError as exc:
            raise HistoryLostError(
                f"{self.label}: {exc.message}", "the archive cannot continue without a gap: start a new backup "
                "into a new --to (this one stays restorable up to where it ends); enlarge the oplog") from None
        if self.run is not None and self.run.error is not None:
            error, self.run = self.run.error, None
            raise error
        self.finish_snapshot()
        if self.snapshot_due():
            self.start_snapshot(None)

    def flush(self) -> None:
        """Store what is pending (a stop, or --once): the archive then reaches the last position read."""
        if self.pipeline is None or self.sink is None:
            return
        self.pipeline.close()
        self.sink.flush()

    def close(self) -> None:
        if self.run is not None and self.run.thread is not None:
            self.run.thread.join(timeout=30)
        if self.pipeline is not None:
            self.pipeline.close()
        if self.sink is not None and not (self.run is not None and self.run.thread is not None
                                          and self.run.thread.is_alive()):
            self.manifest.save(self.storage, running=False)  # the last save: stopped (a kill never gets here)


def run_backup(settings: BackupSettings) -> int:
    sources = parse_sources(settings.src)
    for _, uri in sources:
        validate_uri(uri, "--src")
    if not settings.to:
        raise UsageError("--to is required", "give a directory or s3://BUCKET/PREFIX for the backup")
    if settings.filter:
        # An update that makes a document match carries only its change: an archive of the matching
        # documents cannot rebuild it at a point in time. The whole collection can, and restore filters.
        raise UsageError("backup --filter: a point-in-time backup of part of a collection cannot be exact (an "
                         "update that makes a document match holds only the change, not the document)",
                         "back up the whole collection (--include DB.COLL) and restore the subset with "
                         "`mongoferry restore --filter DB.COLL=QUERY`; nothing was written")
    nsmap = NamespaceMap.build(settings.include, settings.exclude, [], buckets=True)
    bind = parse_bind(settings.http)
    root = open_storage(settings.to, "--to", create=True)
    status = JobStatus()
    status.set(state="SNAPSHOT")
    clients: list[Client] = []
    backups: list[SourceBackup] = []
    health = SourceHealth()  # watches each source as it connects
    throttle = job_throttle(settings, health)
    shown = resolve_format(settings.log_format)  # one terminal holds one live display: rich for one source only
    shown = shown if shown == "json" or (shown == "rich" and len(sources) == 1) else "quiet"
    # built (and its address and token checked) before anything is written; started once open
    http = HttpServer(backup_app(status, lambda: describe(backups), throttle), *bind,
                      token=secret(settings.http_token), guarded=True) if bind else None
    try:
        with stop_on_signals() as stop:
            for name, uri in sources:
                client = connect(uri, f"source {name}" if name else "source", settings.connect_timeout)
                clients.append(client)
                health.clients.append(client)
                storage = Prefixed(root, name) if name else root
                backup = SourceBackup(settings, name, uri, client, storage, nsmap, stop, JobStatus(), throttle=throttle,
                                      progress_format=shown)
                backup.check()
                backups.append(backup)
            if len(sources) > 1:
                root.put(CLUSTER_FILE, _cluster_doc([n for n, _ in sources]))
            for backup in backups:
                backup.open()
            if http is not None:
                http.start()
            return _follow(settings, backups, status, stop)
    finally:
        for backup in backups:
            backup.close()
        if http is not None:
            http.stop()
        for client in clients:
            client.close()


def _cluster_doc(names: list[str]) -> bytes:
    from mongoferry.sinks.archive.layout import dumps

    return dumps({"format": "mongoferry-cluster-backup/1", "sources": names})


def _follow(settings: BackupSettings, backups: list[SourceBackup], status: JobStatus, stop: threading.Event) -> int:
    """Each source's pipeline in a thread of its own, until stopped (or, with --once, until every
    source's snapshot is complete and archived to its end)."""
    errors: list[BaseException] = []

    def follow(backup: SourceBackup) -> None:
        try:
            while not stop.is_set() and not (settings.once and backup.completed):
                backup.step()
            backup.flush()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=follow, args=(b,), name=f"backup-{b.name or 'source'}", daemon=True)
               for b in backups]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        status.set(state="SNAPSHOT" if any(b.run is not None for b in backups) else "ARCHIVING",
                   lag=max(b.status.lag for b in backups), sinks={b.name or "archive": b.sink.stats.snapshot()
                                                                for b in backups if b.sink is not None})
        for thread in threads:
            thread.join(timeout=0.5)
    if errors:
        raise errors[0]
    if settings.once and all(b.completed for b in backups):
        log.info("backup complete (--once)", extra={"to": settings.to})
        return EXIT_OK
    log.info("backup stopped; the same command continues it")
    return EXIT_UNEXPECTED if settings.once else EXIT_OK


def describe(backups: list[SourceBackup]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in backups:
        m = b.manifest
        out[b.name or "source"] = {
            "snapshots": [{"id": s.id, "state": s.state, "documents": s.documents} for s in m.snapshots],
            "chunks": len(m.chunks), "covered": ts_text(m.covered) if m.covered else None,
            "restorable": [r.describe() for r in m.ranges()],
        }
    return out
