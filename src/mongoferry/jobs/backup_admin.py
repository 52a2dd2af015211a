"""`mongoferry backup list` and `mongoferry backup prune`: what a backup holds, and retention."""

from __future__ import annotations

import logging
import time

from bson import Timestamp

from mongoferry.core.errors import EXIT_OK, UsageError
from mongoferry.infra.config import BackupListSettings
from mongoferry.infra.storage import Prefixed, Storage, open_storage
from mongoferry.sinks.archive.layout import snapshot_key, ts_text
from mongoferry.sinks.archive.manifest import Manifest, Snapshot

log = logging.getLogger("mongoferry.backup")


def _sources(settings: BackupListSettings) -> list[tuple[str, Storage, Manifest]]:
    from mongoferry.jobs.restore import cluster_names

    if not settings.backup:
        raise UsageError("--from is required", "give the backup: a directory or s3://BUCKET/PREFIX")
    root = open_storage(settings.backup, "--from")
    out = []
    for name in cluster_names(root) or [""]:
        storage = Prefixed(root, name) if name else root
        try:
            manifest = Manifest.load(storage)
        except ValueError as exc:
            raise UsageError(f"{storage.url}: {exc}", "give a mongoferry backup") from None
        if manifest is None:
            raise UsageError(f"{storage.url} holds no mongoferry backup (no manifest.json)",
                             "give the directory or prefix `mongoferry backup --to` wrote")
        out.append((name, storage, manifest))
    return out


def run_list(settings: BackupListSettings) -> int:
    for name, storage, m in _sources(settings):
        print(f"{'source ' + name if name else 'backup'} of {','.join(m.source.get('hosts', []))} "
              f"({storage.url}, {m.compression})")
        for s in m.snapshots:
            what = f"{s.documents} documents in {s.namespaces} namespaces" if s.end else "being read"
            end = f", ended {ts_text(s.end)}" if s.end else ""
            why = f" — {s.reason}" if s.reason else ""
            print(f"  snapshot {s.id}: {s.state}, started {ts_text(s.start)}{end}, {what}{why}")
        size = sum(c.bytes for c in m.chunks)
        files = sum(1 for c in m.chunks if c.key)
        print(f"  oplog: {files} chunk(s), {sum(c.entries for c in m.chunks)} entries, {size} bytes, "
              f"archived up to {ts_text(m.covered) if m.covered else '-'}")
        for gap in m.gaps():
            print(f"  GAP in the oplog archive {gap.describe()}")
        ranges = m.ranges()
        if not ranges:
            print("  restorable: nothing yet (the first snapshot is not complete)")
        for r in sorted(ranges, key=lambda r: r.start):
            print(f"  restorable: {r.describe()} (snapshot {r.snapshot.id})")
    return EXIT_OK


def keep_from(m: Manifest, window_start: Timestamp) -> Snapshot | None:
    """The oldest snapshot a restore point inside the window needs: the newest complete one that
    ended at or before the window's start (None: every snapshot is still needed)."""
    ended = [r.snapshot for r in m.ranges() if r.snapshot.end is not None and r.snapshot.end <= window_start]
    return max(ended, key=lambda s: s.start) if ended else None


def run_prune_backup(settings: BackupListSettings) -> int:
    if settings.keep_days is None:
        raise UsageError("--keep-days is required", "say how many days of restore points to keep: --keep-days 7")
    window_start = Timestamp(int(time.time() - settings.keep_days * 86400), 0)
    for name, storage, m in _sources(settings):
        label = f"source {name}" if name else "backup"
        if m.heartbeat is not None and time.time() - m.heartbeat < m.busy_for():
            raise UsageError(f"{storage.url} is being written by a running backup (updated "
                             f"{time.time() - m.heartbeat:.0f}s ago)",
                             "stop that backup first, then prune (its next manifest would list what was deleted)")
        keep = keep_from(m, window_start)
        if keep is None:
            print(f"{label}: nothing to delete (no snapshot ended before the window's start)")
            continue
        snapshots = [s for s in m.snapshots if s.start < keep.start]
        chunks = [c for c in m.chunks if c.until <= keep.start]
        print(f"{label}: {'would delete' if settings.dry_run else 'deleting'} {len(snapshots)} snapshot(s) and "
              f"{len(chunks)} chunk(s) before snapshot {keep.id}; restorable from {ts_text(keep.end or keep.start)}")
        if settings.dry_run:
            continue
        m.snapshots = [s for s in m.snapshots if s not in snapshots]
        m.chunks = [c for c in m.chunks if c not in chunks]
        m.start = keep.start
        m.save(storage)  # unlisted first: a reader never sees a listed file that is gone
        for s in snapshots:
            for key in storage.list(snapshot_key(s.id, "")):
                storage.delete(key)
        for c in chunks:
            if c.key:
                storage.delete(c.key)
        log.info("backup pruned", extra={"source": name or "-", "snapshots": len(snapshots), "chunks": len(chunks)})
    return EXIT_OK
