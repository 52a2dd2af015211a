"""`mongoferry status` and `mongoferry commit`: talk to a job through its metadata database."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from mongoferry.core.errors import EXIT_OK, EXIT_UNEXPECTED, UsageError
from mongoferry.infra.clients import connect, driver_errors, validate_uri
from mongoferry.infra.config import StatusSettings
from mongoferry.state.meta import MetaStore

STALE_AFTER_S = 10


def _meta(s: StatusSettings) -> MetaStore:
    """The job's store: --job, or the only job the metadata database holds."""
    uri = validate_uri(s.meta or s.dst, "--meta" if s.meta else "--dst")
    meta = MetaStore(connect(uri, "metadata server", s.connect_timeout), s.meta_db)
    with driver_errors("reading the jobs"):
        names = meta.job_names()
    if s.job is None and len(names) > 1:
        raise UsageError(f"the metadata database '{meta.db.name}' holds {len(names)} jobs ({', '.join(names)})",
                         "name one with --job NAME")
    return MetaStore(meta.db.client, s.meta_db, s.job or (names[0] if names else "sync"))


def _job(meta: MetaStore) -> dict[str, Any]:
    with driver_errors("reading the job"):
        doc = meta.job_doc()
    if doc is None:
        raise UsageError(f"no job {meta.job_name!r} in the metadata database '{meta.db.name}'",
                         "point --dst (or --meta) at the destination the job writes to (and --job at its name)")
    return doc


def run_status(s: StatusSettings, as_json: bool) -> int:
    if s.backup:  # a backup keeps no metadata database: its manifest says how it is doing
        from mongoferry.jobs.backup_admin import run_backup_status

        return run_backup_status(s.backup, as_json)
    meta = _meta(s)
    doc = _job(meta)
    snap: dict[str, Any] = dict(doc.get("extra", {}).get("status") or {})
    snap.setdefault("state", doc["state"].upper())
    snap["job"] = {"kind": doc["kind"], "state": doc["state"], "updated": str(doc.get("updated"))}
    updated = snap.get("updated")
    if isinstance(updated, str):
        age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(updated)).total_seconds()
        snap["secondsSinceUpdate"] = round(age, 1)
    if as_json:
        print(json.dumps(snap, default=str))
        return EXIT_OK
    console = Console()
    if doc["kind"] == "prune":
        return _print_prune(console, snap)
    stale = snap.get("secondsSinceUpdate", 0) > STALE_AFTER_S and snap.get("state") not in ("COMMITTED",)
    console.print(f"[bold]{doc['kind']}[/] state [bold]{snap.get('state')}[/]"
                  f"  canCommit {snap.get('canCommit', False)}  lag {snap.get('lagTimeSeconds', 0)}s"
                  + ("  [yellow](not updated for a while: is the process running?)[/]" if stale else ""))
    copy = snap.get("copy", {})
    if copy:
        console.print(f"copy {copy.get('copiedDocs', 0):,}/{copy.get('totalDocs', 0):,} docs")
    events = snap.get("events", {})
    if events:
        console.print("events " + "  ".join(f"{k} {v:,}" for k, v in events.items()))
    table = Table()
    rows = snap.get("namespaces", [])
    split = any("part" in n for n in rows)  # a split: one row per namespace and destination
    for col in ("source", *(["part"] if split else []), "destination", "source count", "destination count",
                "delta"):
        table.add_column(col)
    for n in rows:
        table.add_row(n["source"], *([str(n.get("part", ""))] if split else []), n["destination"],
                      _count(n.get("sourceCount")), _count(n.get("destinationCount")), str(n.get("delta", "")))
    console.print(table)
    if snap.get("lastError"):
        console.print(f"[red]last error:[/] {snap['lastError']}")
    return EXIT_OK


def run_commit(s: StatusSettings, timeout_s: float = 3600, write_block: bool = True) -> int:
    meta = _meta(s)
    doc = _job(meta)
    if doc["kind"] != "sync":
        raise UsageError(f"the job is a {doc['kind']}, not a sync", "only a sync can be committed")
    if doc["state"] == "committed":
        print("already COMMITTED")
        return EXIT_OK
    meta.set_extra(commitRequested=True, commitWriteBlock=write_block)
    print("commit requested; waiting for the sync to drain and verify …")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = _job(meta)
        status = doc.get("extra", {}).get("status", {})
        if doc["state"] == "committed":
            print("COMMITTED")
            return EXIT_OK
        if not doc.get("extra", {}).get("commitRequested") and status.get("lastError", "").startswith("commit"):
            print(f"commit failed: {status['lastError']}")
            return EXIT_UNEXPECTED
        time.sleep(0.5)
    print("timed out waiting for the commit; the request stays pending")
    return EXIT_UNEXPECTED


def _print_prune(console: Console, snap: dict[str, Any]) -> int:
    rate = snap.get("rateLimit")
    console.print(f"[bold]prune[/] state [bold]{snap.get('state')}[/]"
                  + (f" (waiting: {snap['waitingFor']})" if snap.get("waitingFor") else "")
                  + f"  deleted {snap.get('deleted', 0):,}  rate limit {f'{rate:g}/s' if rate else 'none'}"
                  + f"  average {snap.get('averageRate', 0):g}/s  eta {snap.get('etaSeconds') or '-'}s")
    table = Table()
    for col in ("namespace", "documents", "read", "deleted", "kept (key changed)", "kept (no key)", "done"):
        table.add_column(col)
    for n in snap.get("namespaces", []):
        table.add_row(n["ns"], f"{n['estimated']:,}", f"{n['scanned']:,}", f"{n['deleted']:,}",
                      f"{n['keptChanged']:,}", f"{n['unroutable']:,}", "yes" if n["done"] else "no")
    console.print(table)
    pauses = snap.get("pauses", {})
    if pauses:
        console.print("pauses " + "  ".join(f"{r} {p['times']}x {p['seconds']}s" for r, p in pauses.items()))
    if snap.get("lastError"):
        console.print(f"[red]last error:[/] {snap['lastError']}")
    return EXIT_OK


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"
