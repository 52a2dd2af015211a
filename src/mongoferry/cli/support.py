"""What every command shares: option groups, settings loading, and the error guard.

Kept apart from :mod:`mongoferry.cli.main` so that commands defined next to their job
(``verify``, ``publish-redis``) use the same options without importing the command tree.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from mongoferry.core.errors import EXIT_UNEXPECTED, MongoferryError
from mongoferry.infra.config import Settings, load_settings
from mongoferry.infra.logs import resolve_format, setup_logging
from mongoferry.infra.redact import redact

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=Settings)
log = logging.getLogger("mongoferry")


def given(ctx: click.Context, **values: Any) -> dict[str, Any]:
    """Only the options the user typed, so env and file values are not overridden by defaults."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "config":
            continue
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def settings_from(ctx: click.Context, cls: type[S], values: dict[str, Any]) -> S:
    config = values.get("config")
    settings = load_settings(cls, given(ctx, **values), Path(config) if config else None)
    fmt = resolve_format(settings.log_format)
    setup_logging("json" if fmt == "json" else "text", settings.log_level)
    return settings


def run_guarded(fn: Callable[[], int]) -> None:
    """Run a job; every error becomes one line on stderr and its documented exit code."""
    try:
        code = fn()
    except MongoferryError as exc:
        click.echo(f"error: {redact(exc.one_line())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_UNEXPECTED)
    except Exception as exc:  # the last line of defence: one line, no secrets
        log.debug("unexpected error", exc_info=True)
        click.echo(f"error: unexpected {type(exc).__name__}: {redact(str(exc))} — "
                   "rerun with --log-level debug for details, and report it", err=True)
        sys.exit(EXIT_UNEXPECTED)
    sys.exit(code)


def env_help(text: str, name: str, also: str | None = None) -> str:
    """Help text naming the option's environment variable (and ``also``, another one it reads)."""
    return f"{text} [env: MONGOFERRY_{name.upper()}" + (f", {also}]" if also else "]")


def common_options(fn: F) -> F:
    opts = [
        click.option("--config", type=click.Path(dir_okay=False), help="YAML file of options (lowest precedence)."),
        click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text"]),
                     help=env_help("Progress and log style; auto = rich on a terminal, json otherwise.",
                                   "log_format")),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                     help=env_help("Log level (default info).", "log_level")),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def connection_options(verb: str, dst_help: str | None = None) -> Callable[[F], F]:
    """--src/--dst/--meta/… and the namespace selection; ``verb`` words the selection help.
    With ``dst_help``, --dst is repeatable (one per destination, in order)."""

    def decorate(fn: F) -> F:
        for opt in reversed(_connection_option_list(verb, dst_help)):
            fn = opt(fn)
        return fn

    return decorate


def _connection_option_list(verb: str, dst_help: str | None) -> list[Callable[[F], F]]:
    dst = (click.option("--dst", multiple=True, help=env_help(dst_help, "dst")) if dst_help else
           click.option("--dst", help=env_help("Destination connection string.", "dst")))
    return [
        click.option("--src", help=env_help("Source connection string (mongodb://…).", "src")),
        dst,
        click.option("--meta", help=env_help("Where progress is kept (default: the destination).", "meta")),
        click.option("--meta-db", help=env_help("Metadata database name (default mongoferry_meta).", "meta_db")),
        click.option("--connect-timeout", type=float,
                     help=env_help("Seconds to wait for each server to answer (default 10).", "connect_timeout")),
        click.option("--include", multiple=True,
                     help=env_help(f"{verb} only this DB or DB.COLL (repeatable; env: comma list).", "include")),
        click.option("--exclude", multiple=True, help=env_help("Skip this DB or DB.COLL (repeatable).", "exclude")),
        click.option("--rename", multiple=True,
                     help=env_help("Rename OLD_DB=NEW_DB or DB.COLL=DB2.COLL2 (repeatable).", "rename")),
        filter_option(verb),
    ]


def filter_option(verb: str) -> Callable[[F], F]:
    return click.option("--filter", multiple=True, metavar="DB.COLL=QUERY",
                        help=env_help(f"{verb} only the documents of DB.COLL matching QUERY, a MongoDB query in "
                                      "extended JSON (repeatable, one per collection; env: one per line).",
                                      "filter"))


def http_token_option() -> Callable[[F], F]:
    return click.option("--http-token", metavar="TOKEN",
                        help=env_help("Token the HTTP controls (POST) need; required when --http is not a loopback "
                                      "address. Send it as Authorization: Bearer TOKEN.", "http_token"))


def throttle_options(what: str) -> list[Callable[[F], F]]:
    """--max-docs-per-s and --max-bytes-per-s; `what` says what they count for this command."""
    return [click.option("--max-docs-per-s", type=float,
                         help=env_help(f"Write at most this many documents per second ({what}; default: no "
                                       "limit; POST /api/v1/throttle changes it while running).", "max_docs_per_s")),
            click.option("--max-bytes-per-s", type=float,
                         help=env_help("Copy at most this many bytes per second (default: no limit).",
                                       "max_bytes_per_s"))]


def source_guard_options() -> list[Callable[[F], F]]:
    """--max-source-latency and --max-source-lag: hold the job while production suffers."""
    return [click.option("--max-source-latency", type=float, metavar="MS",
                         help=env_help("Hold while the source's mean read/write latency is above MS milliseconds "
                                       "(serverStatus opLatencies, sampled each second; default: not watched).",
                                       "max_source_latency")),
            click.option("--max-source-lag", type=float, metavar="SECONDS",
                         help=env_help("Hold while the source's secondaries are more than SECONDS behind its "
                                       "primary (replSetGetStatus; default: not watched).", "max_source_lag"))]
