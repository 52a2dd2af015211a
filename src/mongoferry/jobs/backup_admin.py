"""`mongoferry backup list` and `mongoferry backup prune`: what a backup holds, and retention."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from bson import Timestamp

from mongoferry.core.errors import EXIT_OK, UsageError
from mongoferry.infra.config import BackupListSettings
from mongoferry.infra.storage import Prefixed, Storage, open_storage
from mongoferry.sinks.archive.layout import snapshot_key, ts_text
from mongoferry.sinks.archive.manifest import Manifest, Snapshot

log = logging.getLogger("mongoferry.backup")


def backup_sources(url: str | None) -> list[tuple[str, Storage, Manifest]]:
    """Each source's part of a backup (one, or one per shard of a cluster backup) and its manifest."""
    from mongoferry.jobs.restore import cluster_names

    if not url:
        raise UsageError("--from is required", "give the backup: a directory or s3://BUCKET/PREFIX")
    root = open_storage(url, "--from")
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
    for name, storage, m in backup_sources(settings.backup):
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


def backup_status(name: str, m: Manifest, now: float) -> dict[str, Any]:
    """What `mongoferry status --from` shows of one source's backup (pure: the manifest and the time)."""
    age = None if m.heartbeat is None else round(now - m.heartbeat, 1)
    ranges = sorted(m.ranges(), key=lambda r: r.start)
    reading = [s for s in m.snapshots if s.state == "copying"]
    return {
        "source": name or None, "hosts": m.source.get("hosts", []),
        "state": ("STOPPED" if m.stopped_at is not None else
                  "RUNNING" if age is not None and age < m.busy_for() else "NOT RUNNING"),
        "secondsSinceUpdate": age if m.stopped_at is None else round(now - m.stopped_at, 1),
        "archivedUpTo": ts_text(m.covered) if m.covered else None,
        "archiveLagSeconds": round(now - m.covered.time, 1) if m.covered else None,
        "latestRestorable": ts_text(ranges[-1].end) if ranges else None,
        "restorable": [r.describe() for r in ranges],
        "snapshots": {"complete": sum(1 for s in m.snapshots if s.state == "complete"),
                      "reading": [s.id for s in reading]},
        "gaps": [g.describe() for g in m.gaps()],
        "oplog": {"chunks": sum(1 for c in m.chunks if c.key), "entries": sum(c.entries for c in m.chunks),
                  "bytes": sum(c.bytes for c in m.chunks)},
    }


def run_backup_status(url: str | None, as_json: bool) -> int:
    rows = [backup_status(name, m, time.time()) for name, _, m in backup_sources(url)]
    if as_json:
        print(json.dumps(rows[0] if len(rows) == 1 else {"sources": rows}))
        return EXIT_OK
    for r in rows:
        stale = ("  (not updated for a while, and not stopped cleanly: is the backup running?)"
                 if r["state"] == "NOT RUNNING" else "")
        print(f"backup{' of ' + r['source'] if r['source'] else ''} state {r['state']}{stale}")
        print(f"  archived up to {r['archivedUpTo'] or '-'}"
              + (f" ({r['archiveLagSeconds']:g}s ago)" if r["archiveLagSeconds"] is not None else ""))
        print(f"  latest restore point {r['latestRestorable'] or 'none yet (the first snapshot is not complete)'}")
        print(f"  snapshots: {r['snapshots']['complete']} complete"
              + (f", reading {', '.join(r['snapshots']['reading'])}" if r["snapshots"]["reading"] else ""))
        for gap in r["gaps"]:
            print(f"  GAP in the oplog archive {gap}")
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
    for name, storage, m in backup_sources(settings.backup):
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
        m.save(storage, running=None)  # unlisted first: a reader never sees a listed file that is gone
        for s in snapshots:
            for key in storage.list(snapshot_key(s.id, "")):
                storage.delete(key)
        for c in chunks:
            if c.key:
                storage.delete(c.key)
        log.info("backup pruned", extra={"source": name or "-", "snapshots": len(snapshots), "chunks": len(chunks)})
    return EXIT_OK
