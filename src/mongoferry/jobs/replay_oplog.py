"""`mongoferry replay-oplog`: apply BSON files of oplog entries, like mongorestore --oplogReplay.

Every entry of every file is read and checked first (so a file we cannot apply
writes nothing), then entries are applied in timestamp order with the same
applier as sync, up to --oplog-limit (exclusive). fromMigrate entries are
skipped, no-ops ignored, unknown operations refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bson import Timestamp

from mongoferry.core.errors import EXIT_OK, EXIT_UNEXPECTED, UsageError
from mongoferry.core.events import Position
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.core.oplog import entry_to_events, parse_oplog_limit
from mongoferry.infra.clients import connect, driver_errors, validate_uri
from mongoferry.infra.config import ReplayOplogSettings
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.pipeline.loop import Pipeline
from mongoferry.sinks.mongo_apply import Applier
from mongoferry.source.capture import BadBsonFile, OplogFileCapture, read_oplog_file
from mongoferry.state.status import JobStatus

log = logging.getLogger("mongoferry.replay_oplog")
BATCH_EVENTS = 1000


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    try:
        yield from read_oplog_file(path)
    except BadBsonFile as exc:
        raise UsageError(f"{path}: {exc.why}, at byte {exc.offset} after {exc.documents} entries",
                         "give a complete oplog.bson (run mongodump again, or copy the file again); "
                         "nothing was replayed") from None


def _key(entry: dict[str, Any]) -> tuple[int, int]:
    ts = entry.get("ts")
    return (ts.time, ts.inc) if isinstance(ts, Timestamp) else (-1, -1)


def check_files(paths: list[Path], limit: Timestamp | None) -> dict[str, int]:
    """Read everything once: BSON valid, every entry understood, each file in ts order."""
    counts = {"entries": 0, "beyondLimit": 0}
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path} does not exist or is not a file", "give the path of a .bson oplog file")
        previous = (-1, -1)
        for entry in _entries(path):
            if not isinstance(entry.get("ts"), Timestamp):
                raise UsageError(f"{path}: an entry has no timestamp `ts`; this is not an oplog dump",
                                 "give mongodump's oplog.bson or a dump of local.oplog.rs")
            if _key(entry) < previous:
                raise UsageError(f"{path} is not in timestamp order", "sort it, or dump it with sort {$natural: 1}")
            previous = _key(entry)
            counts["entries"] += 1
            if limit is not None and entry["ts"] >= limit:
                counts["beyondLimit"] += 1
                continue
            entry_to_events(entry)  # raises UnsupportedOplogEntry for what cannot be applied
    return counts


def run_replay_oplog(settings: ReplayOplogSettings, files: list[str]) -> int:
    if not files:
        raise UsageError("no oplog file given", "mongoferry replay-oplog --dst URI FILE.bson …")
    paths = [Path(f) for f in files]
    limit = parse_oplog_limit(settings.oplog_limit) if settings.oplog_limit else None
    nsmap = NamespaceMap.build(settings.include, settings.exclude, settings.rename, buckets=True)
    dst_uri = validate_uri(settings.dst, "--dst")
    counts = check_files(paths, limit)
    dst = connect(dst_uri, "destination", settings.connect_timeout)
    applier = Applier(None, dst, nsmap)  # no source: an update we cannot reproduce is an error
    captures: list[OplogFileCapture] = []

    def open_files(position: Position) -> OplogFileCapture:  # reopened after a transient error
        captures.append(OplogFileCapture(paths, start=position, limit=limit))
        return captures[-1]

    try:
        with stop_on_signals() as stop, driver_errors("applying oplog entries"):
            pipeline = Pipeline(open_files, [applier], Position(Timestamp(0, 0)), JobStatus(), stop,
                                max_batch=BATCH_EVENTS)
            pipeline.run_to_end()
            pipeline.close()
            if stop.is_set():
                log.warning("stopped before the end; the same command replays the files again (harmlessly)")
                return EXIT_UNEXPECTED
    finally:
        dst.close()
    if captures and captures[-1].unfinished_transaction():
        log.warning("the files end inside a transaction whose commit was not found; it was not applied")
    applied = sum(c.events_read for c in captures)  # replays after a transient error included
    stats = {k: int(v) for k, v in applier.stats.events.items()}
    log.info("oplog replay complete", extra={"entries": counts["entries"], "events": applied,
                                             "stoppedAtLimit": counts["beyondLimit"], **stats})
    print(f"replayed {applied} operations from {counts['entries']} entries"
          + (f" ({counts['beyondLimit']} at or after the limit not applied)" if counts["beyondLimit"] else "")
          + ": " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    return EXIT_OK
