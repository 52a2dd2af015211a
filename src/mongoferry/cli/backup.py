"""`mongoferry backup` (with `backup list` and `backup prune`) and `mongoferry restore`."""

from __future__ import annotations

from typing import Any

import click

from mongoferry.cli.support import (
    common_options,
    env_help,
    filter_option,
    http_token_option,
    run_guarded,
    settings_from,
    source_guard_options,
    throttle_options,
)
from mongoferry.infra.config import BackupListSettings, BackupSettings, RestoreSettings


def _selection(verb: str) -> list[Any]:
    return [
        click.option("--include", multiple=True, help=env_help(f"{verb} only this DB or DB.COLL (repeatable).",
                                                               "include")),
        click.option("--exclude", multiple=True, help=env_help("Skip this DB or DB.COLL (repeatable).", "exclude")),
    ]


def _apply(fn: Any, opts: list[Any]) -> Any:
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


BACKUP_OPTIONS = [
    click.option("--src", multiple=True,
                 help=env_help("Source replica set URI; for a sharded cluster NAME=URI once per shard and the "
                               "config server (repeatable).", "src")),
    click.option("--to", help=env_help("A directory, or s3://BUCKET/PREFIX (endpoint and credentials from "
                                       "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).", "to")),
    click.option("--once", is_flag=True, default=None,
                 help=env_help("One snapshot, its oplog archived to its end, then exit.", "once")),
    click.option("--snapshot-every", metavar="DURATION",
                 help=env_help("Take a new snapshot this often, e.g. 1d or 6h (default: only the first).",
                               "snapshot_every")),
    click.option("--chunk", metavar="DURATION",
                 help=env_help("Cut an oplog chunk at least this often (default 60s).", "chunk")),
    click.option("--chunk-size", metavar="SIZE",
                 help=env_help("Cut an oplog chunk at this size (default 16MB).", "chunk_size")),
    click.option("--compress", type=click.Choice(["gzip", "zstd", "none"]),
                 help=env_help("Compression of data and oplog files (default gzip: mongorestore --gzip reads "
                               "it).", "compress")),
    *_selection("Back up"),
    click.option("--filter", multiple=True, metavar="DB.COLL=QUERY",
                 help="Refused, with the reason: a point-in-time backup of part of a collection cannot be exact. "
                      "Back up the collection and give the filter to `mongoferry restore --filter`."),
    click.option("--workers", type=int, help=env_help("Collections read at once for a snapshot (default 4).",
                                                      "workers")),
    click.option("--batch-size", type=int, help=env_help("Documents per read batch (default 1000).", "batch_size")),
    click.option("--connect-timeout", type=float,
                 help=env_help("Seconds to wait for each server to answer (default 10).", "connect_timeout")),
    click.option("--http", help=env_help("Status API HOST:PORT (GET /api/v1/progress, /metrics, the dashboard "
                                         "at /), or 'off' (the default).", "http")),
    http_token_option(),
    *throttle_options("documents a snapshot reads"),
    *source_guard_options(),
]


def _backup(ctx: click.Context, /, **values: Any) -> None:
    """Back up continuously: a snapshot in mongodump's layout, then the oplog in chunks.

    \b
    mongoferry backup --src URI --to DIR|s3://BUCKET/PREFIX [--once]
    mongoferry backup list --from DIR|s3://…
    mongoferry backup prune --from DIR|s3://… --keep-days N

    Killed at any moment, the same command continues from the manifest; no
    chunk is ever partial. Restore with `mongoferry restore` (or a snapshot
    with `mongorestore --gzip --oplogReplay DIR/snapshots/ID`).
    """
    if ctx.invoked_subcommand is not None:
        return
    from mongoferry.jobs.backup import run_backup

    run_guarded(lambda: run_backup(settings_from(ctx, BackupSettings, values)))


backup_command = click.group("backup", invoke_without_command=True)(
    _apply(click.pass_context(_backup), [*BACKUP_OPTIONS, common_options]))

FROM = click.option("--from", "backup", help=env_help("The backup: a directory or s3://BUCKET/PREFIX.", "backup"))


@backup_command.command("list")
@FROM
@common_options
@click.pass_context
def backup_list(ctx: click.Context, /, **values: Any) -> None:
    """Show the snapshots, the oplog chunks and the times the backup can restore to."""
    from mongoferry.jobs.backup_admin import run_list

    run_guarded(lambda: run_list(settings_from(ctx, BackupListSettings, values)))


@backup_command.command("prune")
@FROM
@click.option("--keep-days", type=float, help=env_help("Keep every restore point of the last N days.", "keep_days"))
@click.option("--dry-run", is_flag=True, default=None, help=env_help("Say what would be deleted, delete nothing.",
                                                                     "dry_run"))
@common_options
@click.pass_context
def backup_prune(ctx: click.Context, /, **values: Any) -> None:
    """Delete the snapshots and oplog chunks that no restore point inside the window needs."""
    from mongoferry.jobs.backup_admin import run_prune_backup

    run_guarded(lambda: run_prune_backup(settings_from(ctx, BackupListSettings, values)))


RESTORE_OPTIONS = [
    click.option("--from", "backup", help=env_help("The backup (a directory or s3://BUCKET/PREFIX), or a "
                                                   "mongodump directory.", "backup")),
    click.option("--dst", multiple=True, help=env_help("Destination URI; NAME=URI for each source of a cluster "
                                                       "backup.", "dst")),
    click.option("--to-time", metavar="TIME",
                 help=env_help("Restore up to and including this time: ISO 8601 (the whole second) or "
                               "SECONDS:ORDINAL (default: the latest restorable time).", "to_time")),
    *_selection("Restore"),
    click.option("--rename", multiple=True,
                 help=env_help("Restore OLD_DB=NEW_DB or DB.COLL=DB2.COLL2 under another name (repeatable).",
                               "rename")),
    filter_option("Restore"),
    click.option("--drop", is_flag=True, default=None,
                 help=env_help("Drop destination namespaces first (without it, one that holds data is refused).",
                               "drop")),
    click.option("--dry-run", is_flag=True, default=None,
                 help=env_help("Print the plan (snapshot, chunks, documents, entries) and write nothing.", "dry_run")),
    click.option("--workers", type=int, help=env_help("Namespaces restored at once (default 4).", "workers")),
    *throttle_options("documents restored and oplog entries replayed"),
    click.option("--connect-timeout", type=float,
                 help=env_help("Seconds to wait for each server to answer (default 10).", "connect_timeout")),
    common_options,
]


def _restore(ctx: click.Context, /, **values: Any) -> None:
    """Restore a backup (or a mongodump directory) into a deployment, up to a time.

    Picks the newest snapshot at or before the time, restores it (raw BSON,
    indexes after the data), then replays the archived oplog up to and
    including the time. A time outside the restorable range, a gap, a damaged
    chunk, or a destination namespace that holds data (without --drop) is
    refused before anything is written.
    """
    from mongoferry.jobs.restore import run_restore

    run_guarded(lambda: run_restore(settings_from(ctx, RestoreSettings, values)))


restore_command = click.command("restore")(_apply(click.pass_context(_restore), RESTORE_OPTIONS))
