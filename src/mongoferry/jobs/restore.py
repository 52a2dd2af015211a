"""`mongoferry restore`: a backup (or a mongodump directory) into a deployment, up to a time.

Order of work (nothing is written before step 4, so a bad request writes nothing):
1. read the manifest and plan: the newest complete snapshot whose range holds the target time,
   and the oplog chunks from its start to the target (a gap, or a time outside every range, is
   refused with the bounds);
2. fetch every chunk needed and check it against the manifest (checksum, entries): a corrupt or
   truncated chunk is refused by name;
3. check the destination: a namespace to restore that holds data is refused unless --drop;
4. restore the snapshot's namespaces in parallel (raw BSON as stored, indexes after the data),
   views last;
5. replay the oplog from the snapshot's start up to and including the target, through the same
   pipeline and MongoDB sink as `sync` and `replay-oplog` (idempotent, as mongorestore --oplogReplay).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument

from mongoferry.core.doc_filter import Filters, parse_filters
from mongoferry.core.errors import EXIT_OK, EXIT_UNEXPECTED, UsageError
from mongoferry.core.events import Batch, Position
from mongoferry.core.model import CollectionSpec
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import RAW, Client, connect, driver_errors, validate_uri
from mongoferry.infra.config import RestoreSettings
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.infra.storage import Prefixed, Storage, open_storage
from mongoferry.pipeline.loop import Pipeline
from mongoferry.pipeline.throttle import Throttle
from mongoferry.sinks.archive.layout import (
    CLUSTER_FILE,
    MANIFEST,
    BadArchiveFile,
    compression_of,
    decompress,
    iter_bson,
    loads,
    open_reader,
    read_metadata,
    snapshot_key,
    spec_from_metadata,
    ts_text,
)
from mongoferry.sinks.archive.manifest import Chunk, Manifest
from mongoferry.sinks.mongo import MongoWriter
from mongoferry.sinks.mongo_apply import Applier
from mongoferry.source import catalog
from mongoferry.source.capture import OplogFileCapture
from mongoferry.state.status import JobStatus

log = logging.getLogger("mongoferry.restore")

LAST_ORDINAL = 2**32 - 1
_TS = re.compile(r"(\d+):(\d+)")


def parse_time(text: str) -> Timestamp:
    """`SECONDS:ORDINAL` (a BSON timestamp, exact) or ISO 8601 (the whole second: every operation
    in it). Naive times are UTC."""
    value = text.strip()
    match = _TS.fullmatch(value)
    if match:
        seconds, ordinal = int(match[1]), int(match[2])
        if seconds > LAST_ORDINAL or ordinal > LAST_ORDINAL:
            raise UsageError(f"--to-time {text!r}: seconds and ordinal must each fit in 32 bits",
                             "write SECONDS:ORDINAL, for example 1765000000:3")
        return Timestamp(seconds, ordinal)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--to-time {text!r} is neither ISO 8601 nor SECONDS:ORDINAL",
                         "write 2026-12-07T10:15:00Z, or a BSON timestamp such as 1765000000:3") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Timestamp(int(when.timestamp()), LAST_ORDINAL)


def after(ts: Timestamp) -> Timestamp:
    """The first timestamp after `ts` (OplogFileCapture's limit is exclusive, ours inclusive)."""
    return Timestamp(ts.time, ts.inc + 1) if ts.inc < LAST_ORDINAL else Timestamp(ts.time + 1, 0)


# ------------------------------------------------------------------ what to restore
@dataclass
class Plan:
    """One source's restore: the namespaces of a snapshot, then its oplog up to the target."""

    storage: Storage
    label: str
    snapshot: str | None  # None: a mongodump directory (its files are at the root)
    files: dict[str, tuple[str | None, str]]  # source ns -> (data key or None for a view, metadata key)
    start: Timestamp | None  # replay entries after this (None: every entry of the files)
    target: Timestamp | None
    chunks: list[Chunk] = field(default_factory=list)
    dump_oplog: str | None = None  # a mongodump directory's oplog.bson
    documents: int = 0
    selection: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> list[str]:
        lines = [f"{self.label}: snapshot {self.snapshot or '(mongodump directory)'}, {len(self.files)} namespace(s)"
                 + (f", about {self.documents} document(s)" if self.documents else "")]
        files = [c for c in self.chunks if c.key]
        if files:
            lines.append(f"  oplog: {len(files)} chunk(s) from {files[0].key} to {files[-1].key}, "
                         f"{sum(c.entries for c in self.chunks)} entries, replayed after "
                         f"{ts_text(self.start) if self.start else 'the start'} up to "
                         f"{ts_text(self.target) if self.target else 'the end'}")
        elif self.dump_oplog:
            upto = ts_text(self.target) if self.target else "its end"
            lines.append(f"  oplog: {self.dump_oplog}, replayed up to {upto}")
        return lines


def _snapshot_files(storage: Storage, prefix: str) -> dict[str, tuple[str | None, str]]:
    """The namespaces under `prefix` (mongodump's layout): ns -> (data key, metadata key)."""
    keys = storage.list(prefix)
    data = {k for k in keys if re.search(r"\.bson(\.gz|\.zst)?$", k)}
    out: dict[str, tuple[str | None, str]] = {}
    for key in keys:
        rel = key[len(prefix):]
        if not rel.endswith((".metadata.json", ".metadata.json.gz")) or rel.count("/") != 1:
            continue
        db, name = rel.removesuffix(".gz").removesuffix(".metadata.json").split("/")
        base = prefix + f"{db}/{name}.bson"
        found = next((k for k in (base, base + ".gz", base + ".zst") if k in data), None)
        out[f"{db}.{name}"] = (found, key)
    for key in data:  # a .bson without metadata (mongodump --db x --collection y writes both; be lenient)
        rel = key[len(prefix):]
        if rel.count("/") == 1 and not rel.startswith("oplog"):
            db, name = re.sub(r"\.bson(\.gz|\.zst)?$", "", rel).split("/")
            out.setdefault(f"{db}.{name}", (key, ""))
    return out


def plan_source(storage: Storage, label: str, target: Timestamp | None) -> Plan:
    try:
        manifest = Manifest.load(storage)
    except ValueError as exc:
        raise UsageError(f"{storage.url}: {exc}", "give a mongoferry backup or a mongodump directory") from None
    if manifest is None:
        return _plan_dump(storage, label, target)
    try:
        chosen = manifest.plan(target)
    except ValueError as exc:
        raise UsageError(f"{label}: cannot restore: {exc}",
                         "pick a time inside the range `mongoferry backup list` shows") from None
    end = target if target is not None else chosen.end
    chunks = [c for c in chosen.chunks if c.until > chosen.snapshot.start and c.after < end]
    files = _snapshot_files(storage, snapshot_key(chosen.snapshot.id, ""))
    return Plan(storage, label, chosen.snapshot.id, files, chosen.snapshot.start, end, chunks,
                documents=chosen.snapshot.documents, selection=manifest.selection)


def _plan_dump(storage: Storage, label: str, target: Timestamp | None) -> Plan:
    files = _snapshot_files(storage, "")
    oplog = next((k for k in ("oplog.bson", "oplog.bson.gz") if k in storage.list("oplog.bson")), None)
    if not files and oplog is None:
        raise UsageError(f"{storage.url} holds neither a mongoferry backup ({MANIFEST}) nor a mongodump directory",
                         "give the directory `mongoferry backup --to` or `mongodump --out` wrote")
    return Plan(storage, label, None, files, None, target, dump_oplog=oplog)


# ------------------------------------------------------------------ reading the archive
def fetch_oplog(plan: Plan, into: Path) -> list[Path]:
    """Every chunk the plan replays, checked and decompressed into local BSON files."""
    paths = []
    for i, chunk in enumerate(c for c in plan.chunks if c.key):  # an empty span has no file
        data = plan.storage.get(chunk.key)
        if data is None:
            raise UsageError(f"{plan.label}: oplog chunk {chunk.key} is listed in the manifest but missing",
                             "restore to a time before it, or copy the missing file back into the backup")
        if hashlib.sha256(data).hexdigest() != chunk.sha256 or len(data) != chunk.bytes:
            raise UsageError(f"{plan.label}: oplog chunk {chunk.key} is corrupt (its checksum differs from the "
                             "manifest's)", "restore to a time before it, or copy a good copy of the file back")
        try:
            body = decompress(data, compression_of(chunk.key))
            entries = sum(1 for _ in iter_bson(io.BytesIO(body)))
        except (BadArchiveFile, OSError, EOFError) as exc:
            raise UsageError(f"{plan.label}: oplog chunk {chunk.key} cannot be read ({exc})",
                             "restore to a time before it") from None
        if entries != chunk.entries:
            raise UsageError(f"{plan.label}: oplog chunk {chunk.key} holds {entries} entries, the manifest "
                             f"{chunk.entries}", "restore to a time before it")
        path = into / f"{i:06d}.bson"
        path.write_bytes(body)
        paths.append(path)
    if plan.dump_oplog:
        path = into / "oplog.bson"
        data = plan.storage.get(plan.dump_oplog) or b""
        # mongodump --gzip writes a gzip'd oplog.bson under that plain name: its magic bytes say so
        body = decompress(data, "gzip" if data[:2] == b"\x1f\x8b" else compression_of(plan.dump_oplog))
        path.write_bytes(body)
        paths.append(path)
    return paths


def refuse_filtered_renames(plan: Plan, paths: list[Path], filters: Filters) -> None:
    """A --filter belongs to a name at --to-time's end; a rename the replay would apply to or onto a
    filtered collection would carry its documents past the filter. Refused before anything is written."""
    if not filters:
        return
    for path in paths:
        with path.open("rb") as f:
            for raw in iter_bson(f):
                entry = RawBSONDocument(raw)
                if entry.get("op") != "c" or "renameCollection" not in entry.get("o", {}):
                    continue
                ts = entry["ts"]
                if (plan.start is not None and ts <= plan.start) or (plan.target is not None and ts > plan.target):
                    continue
                old, new = str(entry["o"]["renameCollection"]), str(entry["o"].get("to", ""))
                for ns in (old, new):
                    if ns in filters:
                        raise UsageError(f"{plan.label}: the oplog renames {old} to {new} at {ts_text(ts)}, and "
                                         f"--filter applies to {ns}: a filter by name cannot follow the rename",
                                         "restore to a time before the rename, or without --filter; nothing was "
                                         "written")


def _spec(plan: Plan, ns: str) -> CollectionSpec:
    meta_key = plan.files[ns][1]
    data = plan.storage.get(meta_key) if meta_key else None
    if meta_key and data is None:
        raise UsageError(f"{plan.label}: {meta_key} is missing", "the backup is incomplete")
    try:
        if not data:
            return CollectionSpec(ns=ns, kind="collection")
        return spec_from_metadata(ns, read_metadata(meta_key, data))
    except (ValueError, OSError, EOFError, bson.errors.InvalidBSON) as exc:
        raise UsageError(f"{plan.label}: {meta_key} is not valid metadata JSON ({exc})",
                         "the backup is damaged") from None


# ------------------------------------------------------------------ writing
@dataclass
class Restorer:
    plan: Plan
    dst: Client
    nsmap: NamespaceMap
    stop: threading.Event
    workers: int
    batch_docs: int = 1000
    restored: dict[str, int] = field(default_factory=dict)
    # --filter, by source namespace: restored whole, then the documents not matching are deleted at the
    # end, so an update that made a document match at any time before --to-time is replayed onto it.
    filters: Filters = field(default_factory=dict)
    throttle: Throttle = field(default_factory=Throttle)  # documents restored and entries replayed

    def namespaces(self) -> dict[str, str]:
        return {ns: self.nsmap.target(ns) for ns in sorted(self.plan.files) if self.nsmap.selected(ns)}

    def check_destination(self, drop: bool) -> None:
        writer = MongoWriter(self.dst)
        with driver_errors("checking the destination"):
            for dst_ns in self.namespaces().values():
                why = None if drop else catalog.holds_data(self.dst, dst_ns)
                if why:
                    raise UsageError(f"destination namespace {dst_ns} {why}",
                                     "pass --drop to replace it, or restore under another name with --rename")
            if drop:  # only once every namespace was checked: a refusal writes nothing
                for dst_ns in self.namespaces().values():
                    writer.drop(dst_ns)

    def check_filters(self) -> None:
        """Before anything is written: the server parses each filter this source restores."""
        todo = self.namespaces()
        with driver_errors("checking --filter"):
            for ns, query in self.filters.items():
                if ns in todo:
                    catalog.check_filter(self.dst, ns, query)

    def drop_unmatched(self) -> dict[str, int]:
        """The last step of a filtered restore: what does not match is deleted, per source namespace."""
        deleted: dict[str, int] = {}
        todo = self.namespaces()
        with driver_errors("deleting the documents --filter leaves out"):
            for ns, query in sorted((ns, q) for ns, q in self.filters.items() if ns in todo):
                db, _, coll = todo[ns].partition(".")
                deleted[ns] = int(self.dst[db][coll].delete_many({"$nor": [dict(query)]}).deleted_count)
                log.info("filter applied", extra={"ns": ns, "dst": todo[ns], "deleted": deleted[ns]})
        return deleted

    def restore_snapshot(self) -> None:
        todo = self.namespaces()
        specs = {ns: _spec(self.plan, ns) for ns in todo}
        collections = [ns for ns in todo if specs[ns].kind != "view"]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="restore") as pool:
            for future in [pool.submit(self._restore_collection, ns, todo[ns], specs[ns]) for ns in collections]:
                future.result()
        writer = MongoWriter(self.dst)
        for ns in [n for n in todo if specs[n].kind == "view"]:
            spec = specs[ns]
            view_on = str(spec.options.get("viewOn", ""))
            mapped = self.nsmap.target(f"{spec.db}.{view_on}").partition(".")[2]
            options = {k: v for k, v in spec.options.items() if k != "viewOn"}
            writer.create(todo[ns], CollectionSpec(ns=ns, kind="view", options=options), view_on=mapped)

    def _restore_collection(self, src_ns: str, dst_ns: str, spec: CollectionSpec) -> None:
        writer = MongoWriter(self.dst)
        options = {k: v for k, v in spec.options.items() if k != "uuid"}
        writer.create(dst_ns, CollectionSpec(ns=src_ns, kind=spec.kind, options=options))
        data_key = self.plan.files[src_ns][0]
        count = 0
        if data_key:
            with tempfile.TemporaryDirectory(prefix="mongoferry-restore-") as folder:
                local = Path(folder) / "data"
                self.plan.storage.get_file(data_key, local)
                reader = open_reader(local.open("rb"), compression_of(data_key))
                batch: list[RawBSONDocument] = []
                try:
                    for raw in iter_bson(reader):
                        batch.append(RawBSONDocument(raw, RAW))
                        if len(batch) >= self.batch_docs:
                            self.throttle.wait(len(batch), sum(len(d.raw) for d in batch), self.stop)
                            writer.insert_copied(dst_ns, batch)
                            count += len(batch)
                            batch = []
                            if self.stop.is_set():
                                return
                except (BadArchiveFile, OSError, EOFError) as exc:
                    raise UsageError(f"{self.plan.label}: {data_key} cannot be read ({exc})",
                                     "the backup is damaged; restore from another snapshot") from None
                if batch:
                    self.throttle.wait(len(batch), sum(len(d.raw) for d in batch), self.stop)
                    writer.insert_copied(dst_ns, batch)
                    count += len(batch)
        writer.create_indexes(dst_ns, spec.secondary_indexes())
        self.restored[src_ns] = count
        log.info("namespace restored", extra={"ns": src_ns, "dst": dst_ns, "documents": count,
                                              "indexes": len(spec.secondary_indexes())})

    def replay(self, paths: list[Path]) -> dict[str, int]:
        if not paths:
            return {}
        selection = NamespaceMap.build(self.plan.selection.get("include", []), self.plan.selection.get("exclude", []))
        limit = after(self.plan.target) if self.plan.target is not None else None
        start = Position(self.plan.start) if self.plan.start is not None else None
        applier = Applier(None, self.dst, self.nsmap)

        def open_files(position: Position) -> OplogFileCapture:
            return OplogFileCapture(paths, start=position if position.ts != Timestamp(0, 0) else start, limit=limit)

        def backed_up(batch: Batch) -> dict[str, Batch]:
            """Only what the backup selected (a namespace it left out has no snapshot to replay onto)."""
            units = [[e for e in u if selection.selected(e.ns) or e.ns.endswith(".$cmd")] for u in batch.units]
            return {applier.name: Batch(units=[u for u in units if u], position=batch.position, idle=batch.idle,
                                        exhausted=batch.exhausted)}

        pipeline = Pipeline(open_files, [applier], start or Position(Timestamp(0, 0)), JobStatus(), self.stop,
                            route=backed_up, max_batch=1000, throttle=self.throttle)
        with driver_errors("replaying the oplog"):
            pipeline.run_to_end()
            pipeline.close()
        return {k: int(v) for k, v in applier.stats.events.items()}


# ------------------------------------------------------------------ the command
def parse_destinations(values: list[str], names: list[str]) -> dict[str, str]:
    if not values:
        raise UsageError("--dst is required", "give the deployment to restore into: --dst mongodb://HOST/")
    if not names:
        if len(values) != 1 or "=" in values[0].split("://")[0]:
            raise UsageError("this backup has one source: give one --dst URI", "write --dst mongodb://HOST/")
        return {"": values[0]}
    out = {}
    for value in values:
        name, sep, uri = value.partition("=")
        if not sep or "://" in name:
            raise UsageError(f"this is a cluster backup of {', '.join(names)}: give --dst NAME=URI for each",
                             f"write --dst {names[0]}=mongodb://…")
        out[name] = uri
    missing = [n for n in names if n not in out]
    unknown = [n for n in out if n not in names]
    if missing or unknown:
        raise UsageError(f"--dst must name each source of the backup ({', '.join(names)})"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""), "give one --dst NAME=URI each")
    return out


def cluster_names(root: Storage) -> list[str]:
    data = root.get(CLUSTER_FILE)
    return list(loads(data).get("sources", [])) if data else []


def common_target(root: Storage, names: list[str], target: Timestamp | None) -> Timestamp | None:
    """A cluster's restore time: one every source's archive can restore to (default: the latest)."""
    if target is not None or not names:
        return target
    ends, starts = [], []
    for name in names:
        manifest = Manifest.load(Prefixed(root, name))
        ranges = manifest.ranges() if manifest else []
        if not ranges:
            raise UsageError(f"source {name} of the cluster backup has no restorable snapshot yet",
                             "wait for its first snapshot to complete")
        ends.append(max(r.end for r in ranges))
        starts.append(min(r.start for r in ranges))
    if min(ends) < max(starts):
        raise UsageError("the sources of the cluster backup share no restorable time", "see `mongoferry backup list`")
    return min(ends)


def run_restore(settings: RestoreSettings) -> int:
    if not settings.backup:
        raise UsageError("--from is required", "give the backup: a directory or s3://BUCKET/PREFIX")
    root = open_storage(settings.backup, "--from")
    target = parse_time(settings.to_time) if settings.to_time else None
    nsmap = NamespaceMap.build(settings.include, settings.exclude, settings.rename, buckets=True)
    filters = parse_filters(settings.filter)
    names = cluster_names(root)
    target = common_target(root, names, target)
    plans = [plan_source(Prefixed(root, n) if n else root, f"source {n}" if n else "the backup", target)
             for n in (names or [""])]
    if settings.dry_run:
        for plan in plans:
            for line in plan.describe():
                print(line)
        return EXIT_OK
    destinations = parse_destinations(settings.dst, names)
    for uri in destinations.values():
        validate_uri(uri, "--dst")
    with tempfile.TemporaryDirectory(prefix="mongoferry-restore-") as tmp:
        oplogs = []
        for i, plan in enumerate(plans):  # every chunk checked before anything is written
            folder = Path(tmp) / str(i)
            folder.mkdir()
            oplogs.append(fetch_oplog(plan, folder))
        clients: list[Client] = []
        try:
            with stop_on_signals() as stop:
                restorers = []
                throttle = Throttle(settings.max_docs_per_s, settings.max_bytes_per_s)  # one limit for all
                for plan, name in zip(plans, names or [""], strict=True):
                    client = connect(destinations[name], f"destination {name}".strip(), settings.connect_timeout)
                    clients.append(client)
                    restorer = Restorer(plan, client, nsmap, stop, settings.workers, throttle=throttle,
                                        filters=filters)
                    restorer.check_filters()
                    restorers.append(restorer)
                written = {ns for r in restorers for ns in r.namespaces() if _spec(r.plan, ns).kind != "view"}
                for ns in sorted(set(filters) - written):
                    raise UsageError(f"--filter names {ns}, which is not a collection this restore writes",
                                     "check the name (a filter is keyed by the backed-up namespace, before --rename)")
                for restorer, paths in zip(restorers, oplogs, strict=True):
                    refuse_filtered_renames(restorer.plan, paths, filters)
                for restorer in restorers:  # the first write: --drop
                    restorer.check_destination(settings.drop)
                for restorer, paths in zip(restorers, oplogs, strict=True):
                    with driver_errors("restoring the snapshot"):
                        restorer.restore_snapshot()
                    events = restorer.replay(paths)
                    if stop.is_set():
                        log.warning("restore stopped before the end; run it again with --drop")
                        return EXIT_UNEXPECTED
                    left_out = restorer.drop_unmatched()
                    docs = sum(restorer.restored.values())
                    plan = restorer.plan
                    filtered = f"; --filter then deleted {sum(left_out.values())}" if left_out else ""
                    print(f"{plan.label}: restored {docs} document(s) in {len(restorer.namespaces())} namespace(s) "
                          f"from snapshot {plan.snapshot or '(mongodump directory)'}, replayed "
                          f"{sum(v for k, v in events.items() if k not in ('skipped',))} operation(s) up to "
                          f"{ts_text(plan.target) if plan.target else 'the end of the oplog'}{filtered}")
                    log.info("restore complete", extra={"source": plan.label, "documents": docs, **events})
        finally:
            for client in clients:
                client.close()
    return EXIT_OK
