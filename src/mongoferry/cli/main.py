"""The command tree: parse → settings → one library call → exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from mongoferry import __version__
from mongoferry.cli.support import (
    F,
    common_options,
    connection_options,
    env_help,
    given,
    http_token_option,
    run_guarded,
    settings_from,
    source_guard_options,
    throttle_options,
)
from mongoferry.infra.config import CopySettings, ReplayOplogSettings, StatusSettings, SyncSettings
from mongoferry.infra.logs import resolve_format, setup_logging

__all__ = ["given", "main", "run_guarded", "settings_from"]


def copy_options(fn: F) -> F:
    opts = [
        click.option("--workers", metavar="N|auto",
                     help=env_help("Readers in parallel; auto (the default): up to 4, one per collection, "
                                   "plus a second for a collection where it was measured faster.", "workers")),
        click.option("--ranges", type=click.Choice(["auto", "on", "off"]),
                     help=env_help("Readers within one collection: auto (the default) adds a second from its "
                                   "end where opening a cursor is cheap and keeps it if the copy got faster; "
                                   "on plans _id ranges up front; off keeps one.", "ranges")),
        click.option("--batch-size", type=int, help=env_help("Documents per read/insert batch (default 1000).",
                                                              "batch_size")),
        click.option("--partition-docs", type=int,
                     help=env_help("Target documents per _id range (default 50000).", "partition_docs")),
        click.option("--drop-dst", is_flag=True, default=None,
                     help=env_help("Drop destination namespaces that already hold data.", "drop_dst")),
        click.option("--job", metavar="NAME",
                     help=env_help("Name of this job in the metadata database (default: the command's name); "
                                   "jobs of other names there are left alone.", "job")),
        *throttle_options("copied documents; for sync and split also the change events applied"),
        *source_guard_options(),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="mongoferry")
def main() -> None:
    """Move MongoDB data while applications keep writing.

    Exit codes: 0 done, 1 unexpected, 2 usage or configuration,
    3 cannot connect or authenticate, 4 data inconsistency found.
    Options come from flags, MONGOFERRY_* environment variables, or a
    YAML file (--config); flags win over env, env over the file.
    """


@main.command()
@connection_options("Copy")
@copy_options
@common_options
@click.pass_context
def copy(ctx: click.Context, /, **values: Any) -> None:
    """Copy every database and collection (data, options, views, indexes) once.

    Resumable: killed at any moment, the same command continues where it
    stopped. A destination namespace that already holds data is refused
    unless --drop-dst. Exits 4 if the counts differ at the end.
    """
    from mongoferry.jobs.copy import run_copy

    def job() -> int:
        return run_copy(settings_from(ctx, CopySettings, values))

    run_guarded(job)


def follow_options(no_verify_help: str) -> list[Callable[[F], F]]:
    """The options of every command that follows the source until a commit (sync, split)."""
    return [
        click.option("--capture", type=click.Choice(["change-stream", "oplog"]),
                     help=env_help("Change streams (default; works through mongos) or tailing local.oplog.rs.",
                                   "capture")),
        click.option("--http", help=env_help("Status/control API HOST:PORT, or 'off' (default 127.0.0.1:27182).",
                                             "http")),
        http_token_option(),
        click.option("--no-write-block", is_flag=True, default=None,
                     help=env_help("At commit, do not block writes on the source (you stop the writers).",
                                   "no_write_block")),
        click.option("--no-verify", is_flag=True, default=None, help=env_help(no_verify_help, "no_verify")),
    ]


def sync_options(fn: F) -> F:
    opts = [
        *follow_options("At commit, skip the final verification."),
        click.option("--reverse", is_flag=True, default=None,
                     help=env_help("After commit keep running, replaying destination → source.", "reverse")),
        click.option("--max-batch", type=int, help=env_help("Events per applied batch (default 1000).", "max_batch")),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@connection_options("Replicate")
@copy_options
@sync_options
@common_options
@click.pass_context
def sync(ctx: click.Context, /, **values: Any) -> None:
    """Copy, then keep the destination identical to the live source until commit.

    The change capture starts before the copy, so nothing written meanwhile is
    lost. Runs until committed (POST /api/v1/commit or `mongoferry commit`) or
    stopped (SIGTERM/Ctrl-C: applies what it read, saves its position, exits 0;
    the same command resumes). Status: GET /api/v1/progress or `mongoferry status`.
    """
    from mongoferry.jobs.sync import run_sync

    run_guarded(lambda: run_sync(settings_from(ctx, SyncSettings, values)))


def routing_options(parts_help: str) -> list[Callable[[F], F]]:
    """The rule's options, shared by split and prune."""
    return [
        click.option("--key", multiple=True, metavar="FIELD|DB.COLL=FIELD",
                     help=env_help("The routing key: a field or dotted path; DB.COLL=FIELD for one namespace "
                                   "(repeatable).", "key")),
        click.option("--by", type=click.Choice(["mod", "hash", "range"]),
                     help=env_help(f"mod (key mod {parts_help}, the default), hash (sha256 of the key mod "
                                   f"{parts_help}), or range (--bound values).", "by")),
        click.option("--bound", multiple=True, metavar="VALUE",
                     help=env_help("--by range: the first key of each part after the first, in order "
                                   "(extended JSON: 100, '\"m\"', '{\"$date\": \"2024-01-01T00:00:00Z\"}').",
                                   "bound")),
        click.option("--broadcast", multiple=True, metavar="DB|DB.COLL",
                     help=env_help("A namespace every part holds whole (repeatable).", "broadcast")),
        click.option("--unrouted", type=int, metavar="I",
                     help=env_help("The part that takes documents whose key is missing or not routable "
                                   "(default none: split refuses them, prune keeps them).", "unrouted")),
    ]


def split_options(fn: F) -> F:
    opts = [
        *routing_options("N"),
        click.option("--explain", is_flag=True, default=None,
                     help="Print the rule and each namespace's share per destination, then stop (writes nothing)."),
        *follow_options("At commit, skip the verifier's comparison of each destination with its share."),
        click.option("--max-batch", type=int, help=env_help("Events per applied batch (default 1000).", "max_batch")),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@connection_options("Split", dst_help="A destination (repeat: one per part, in order; part 0 first).")
@copy_options
@split_options
@common_options
@click.pass_context
def split(ctx: click.Context, /, **values: Any) -> None:
    """Split one deployment into N by a key, live: sync with one --dst per part.

    Each document goes to the destination its key routes to (--key userId
    --by mod: userId mod N); updates that change the key move it; deletes and
    DDL reach every destination. Documents the rule cannot route are refused
    before anything is written (or sent to --unrouted I). Runs until committed
    (POST /api/v1/commit or `mongoferry commit --dst DST0`); resumable.
    """
    from mongoferry.infra.config import SplitSettings
    from mongoferry.jobs.split import run_split

    run_guarded(lambda: run_split(settings_from(ctx, SplitSettings, values)))


def rule_options(parts_help: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        for opt in reversed(routing_options(parts_help)):
            fn = opt(fn)
        return fn

    return decorate


@main.command()
@click.option("--uri", help=env_help("The deployment to prune.", "uri"))
@click.option("--meta", help=env_help("Where progress is kept (default: --uri).", "meta"))
@click.option("--meta-db", help=env_help("Metadata database name (default mongoferry_meta).", "meta_db"))
@click.option("--job", metavar="NAME", help=env_help("Name of this job in the metadata database (default prune).",
                                                     "job"))
@click.option("--connect-timeout", type=float, help=env_help("Seconds to wait for the server (default 10).",
                                                             "connect_timeout"))
@click.option("--include", multiple=True, help=env_help("Prune only this DB or DB.COLL (repeatable).", "include"))
@click.option("--exclude", multiple=True, help=env_help("Leave this DB or DB.COLL alone (repeatable).", "exclude"))
@rule_options("--parts")
@click.option("--parts", type=int, help=env_help("How many parts the rule divides the data into.", "parts"))
@click.option("--keep", type=int, metavar="I", help=env_help("The part this deployment keeps (from 0).", "keep"))
@click.option("--from-split", metavar="NAME",
              help=env_help("Reuse the rule of split job NAME (give --meta one of its destinations).", "from_split"))
@click.option("--filter", multiple=True, metavar="DB.COLL=QUERY",
              help=env_help("Prune only the documents of DB.COLL matching QUERY (extended JSON; repeatable); the "
                            "others are kept. --from-split brings the split's own filters.", "filter"))
@click.option("--rate", type=float, metavar="DOCS/S",
              help=env_help("Delete at most this many documents per second (default 1000; 0: no limit; "
                            "POST /api/v1/rate changes it while running).", "rate"))
@click.option("--window", multiple=True, metavar="HH:MM-HH:MM",
              help=env_help("Delete only inside this daily window (repeatable; may cross midnight).", "window"))
@click.option("--timezone", metavar="NAME", help=env_help("Time zone of --window (default UTC).", "timezone"))
@click.option("--max-lag", type=float, metavar="SECONDS",
              help=env_help("Wait while a secondary is this far behind (default 10; 0: never).", "max_lag"))
@click.option("--batch-size", type=int, help=env_help("Documents read per batch (default 1000).", "batch_size"))
@click.option("--http", help=env_help("Status/control API HOST:PORT with --execute, or 'off' "
                                      "(default 127.0.0.1:27183).", "http"))
@http_token_option()
@click.option("--execute", is_flag=True, default=None, help="Delete. Without it: a dry run that writes nothing.")
@common_options
@click.pass_context
def prune(ctx: click.Context, /, **values: Any) -> None:
    """Delete from one deployment what a split rule gives to other parts, gently.

    A dry run by default: per namespace, how many documents would go, how long
    at --rate, and a sample of their _ids. With --execute it deletes, each
    delete carrying the rule's check so an owned document is never deleted,
    within --window, waiting for lagging secondaries and a slow server.
    Resumable: the same command continues; a finished prune run again starts a
    new pass. Status and rate: /api/v1/progress, /api/v1/rate.
    """
    from mongoferry.infra.config import PruneSettings
    from mongoferry.jobs.prune import run_prune

    run_guarded(lambda: run_prune(settings_from(ctx, PruneSettings, values)))


def status_options(fn: F) -> F:
    opts = [
        click.option("--dst", help=env_help("Destination URI (where the metadata lives by default).", "dst")),
        click.option("--meta", help=env_help("Metadata URI, if the job was given --meta.", "meta")),
        click.option("--meta-db", help=env_help("Metadata database name (default mongoferry_meta).", "meta_db")),
        click.option("--job", metavar="NAME", help=env_help("The job's name (default: the only job there).", "job")),
        click.option("--connect-timeout", type=float, help=env_help("Seconds to wait for the server.",
                                                                    "connect_timeout")),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@status_options
@click.option("--from", "backup", metavar="BACKUP",
              help=env_help("A backup (directory or s3://BUCKET/PREFIX): show its status from its manifest.",
                            "backup"))
@click.option("--json", "as_json", is_flag=True, help="Print the progress document as JSON.")
@common_options
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, **values: Any) -> None:
    """Show a job's state, lag, counts and events from its metadata database
    (sync, split, copy, prune), or a backup's from its manifest (--from).

    Works whether or not the job's HTTP server is reachable.
    """
    from mongoferry.jobs.status import run_status

    run_guarded(lambda: run_status(settings_from(ctx, StatusSettings, values), as_json))


@main.command()
@status_options
@click.option("--no-write-block", "no_write_block", is_flag=True,
              help="Do not block the source's writes for this commit (stop the writers yourself first).")
@common_options
@click.pass_context
def commit(ctx: click.Context, /, no_write_block: bool, **values: Any) -> None:
    """Ask a running sync to commit (same as POST /api/v1/commit), and wait for the outcome."""
    from mongoferry.jobs.status import run_commit

    run_guarded(lambda: run_commit(settings_from(ctx, StatusSettings, values), write_block=not no_write_block))


@main.command("replay-oplog")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--dst", help=env_help("Destination connection string.", "dst"))
@click.option("--oplog-limit", help=env_help("Apply only entries before SECONDS[:ORDINAL] (exclusive), like "
                                             "mongorestore --oplogLimit.", "oplog_limit"))
@click.option("--include", multiple=True, help=env_help("Apply only this DB or DB.COLL (repeatable).", "include"))
@click.option("--exclude", multiple=True, help=env_help("Skip this DB or DB.COLL (repeatable).", "exclude"))
@click.option("--rename", multiple=True, help=env_help("Rename OLD_DB=NEW_DB or DB.COLL=DB2.COLL2.", "rename"))
@click.option("--connect-timeout", type=float, help=env_help("Seconds to wait for the server.", "connect_timeout"))
@common_options
@click.pass_context
def replay_oplog(ctx: click.Context, /, files: tuple[str, ...], **values: Any) -> None:
    """Apply BSON files of oplog entries (mongodump's oplog.bson, or a dump of
    local.oplog.rs) to a destination, in timestamp order, with sync's applier.

    Every entry is checked before anything is written; entries with fromMigrate
    are skipped, no-ops ignored, unknown operations refused (exit 4).
    """
    from mongoferry.jobs.replay_oplog import run_replay_oplog

    run_guarded(lambda: run_replay_oplog(settings_from(ctx, ReplayOplogSettings, values), list(files)))


@main.command()
@click.option("--docs", type=int, help="Documents in the sample data set (default 200000; 30000 with --split).")
@click.option("--workers", default="auto", show_default=True, metavar="N|auto", help="Copy readers (as for copy).")
@click.option("--keep", is_flag=True, help="Keep the servers' data directory and print its path.")
@click.option("--copy-only", is_flag=True, help="Run a one-off copy instead of the live sync and commit.")
@click.option("--split", "split_", is_flag=True,
              help="A live split into two by userId mod 2, its commit, then a prune of the source.")
@click.option("--backup", "backup_", is_flag=True,
              help="A continuous backup, an accidental deleteMany, and a restore to the second before it.")
@click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text"]), default="auto",
              show_default=True, help="Progress style.")
def demo(docs: int | None, workers: str, keep: bool, copy_only: bool, split_: bool, backup_: bool,
         log_format: str) -> None:
    """A live migration between two embedded SecantusDB servers, start to finish.

    Loads a realistic sample, runs `sync` while a writer keeps changing the
    source, shows state, lag and deltas, commits, and proves both sides identical.
    With --split: one source into two parts by userId mod 2 while a writer moves
    users between them, the commit's per-part verification, and a prune.
    With --backup: a backup while a writer runs, an accidental deleteMany, and a
    restore to the second before it, proven byte-identical to the source then.
    """
    from mongoferry.dev.demo import run_demo

    setup_logging("json" if resolve_format(log_format) == "json" else "text")
    run_guarded(functools.partial(run_demo, docs=docs or (30_000 if split_ or backup_ else 200_000),
                                  workers=workers, keep=keep, log_format=log_format, copy_only=copy_only,
                                  split=split_, backup=backup_))


# Registered last: its heavy imports load only when the command runs.
from mongoferry.cli.backup import backup_command, restore_command  # noqa: E402
from mongoferry.cli.publish_redis import publish_redis_command  # noqa: E402
from mongoferry.cli.verify import verify_command  # noqa: E402

main.add_command(backup_command)
main.add_command(restore_command)

main.add_command(publish_redis_command)
main.add_command(verify_command)
