"""`mongoferry verify`: the click command (one-shot report, or the migration-verifier server)."""

from __future__ import annotations

from typing import Any

import click

from mongoferry.cli.support import F, common_options, connection_options, env_help, run_guarded, settings_from
from mongoferry.core.errors import UsageError
from mongoferry.infra.config import VerifySettings
from mongoferry.verify.oneshot import run_check_only
from mongoferry.verify.server import run_server


def _verify_options(fn: F) -> F:
    opts = [
        click.option("--src-namespace", multiple=True,
                     help=env_help("Verify exactly this DB.COLL (repeatable or comma list; not with "
                                   "--include/--exclude/--rename).", "src_namespace")),
        click.option("--dst-namespace", multiple=True,
                     help=env_help("Destination of the --src-namespace at the same position (default: same "
                                   "names).", "dst_namespace")),
        click.option("--check-only", is_flag=True, default=None,
                     help=env_help("Run one full pass, print a report and exit (0 identical, 4 different) "
                                   "instead of serving the HTTP API.", "check_only")),
        click.option("--compare", type=click.Choice(["binary", "ignore-order"]),
                     help=env_help("binary: field order matters; ignore-order (default): it does not.",
                                   "compare")),
        click.option("--failure-display-size", type=int,
                     help=env_help("Findings shown in the report (default 20); the rest are counted.",
                                   "failure_display_size")),
        click.option("--workers", type=int, help=env_help("Ranges compared in parallel (default 4).", "workers")),
        click.option("--partition-docs", type=int,
                     help=env_help("Target documents per _id range of big collections (default 50000).",
                                   "partition_docs")),
        click.option("--port", type=int,
                     help=env_help("Server mode: HTTP API port on 127.0.0.1 (default 27020; 0 = any).", "port")),
        click.option("--start", is_flag=True, default=None,
                     help=env_help("Server mode: start checking at once instead of waiting for "
                                   "POST /api/v1/check.", "start")),
        click.option("--clean", is_flag=True, default=None,
                     help=env_help("Server mode: forget a saved verification instead of resuming it.", "clean")),
        click.option("--index-spec-ignore", multiple=True,
                     help=env_help("With --check-only: tolerate index differences only in expireAfterSeconds "
                                   "and/or unique (repeatable or comma list).", "index_spec_ignore")),
        click.option("--json", "as_json", is_flag=True, help="With --check-only: print the report as one JSON "
                                                             "document on stdout."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.command("verify")
@connection_options("Verify")
@_verify_options
@common_options
@click.pass_context
def verify_command(ctx: click.Context, /, as_json: bool, **values: Any) -> None:
    """Prove the destination holds what the source holds: documents (type-exact, field by
    field), collection options, views and indexes.

    With --check-only: one full pass, exit 0 when identical, 4 with a report.
    Otherwise: a migration-verifier compatible HTTP API on 127.0.0.1:--port
    (POST /api/v1/check, POST /api/v1/writesOff, GET /api/v1/progress,
    /api/v1/summary, /api/v1/docMismatches, /api/v1/nsMismatches and
    /api/v1/mismatches) that tracks changes on both sides and rechecks them
    until writes are off; it resumes after a restart.
    """
    def job() -> int:
        settings = settings_from(ctx, VerifySettings, values)
        if settings.check_only:
            if settings.start or settings.clean:
                raise UsageError("--start and --clean are server-mode options; --check-only keeps no state",
                                 "drop them, or drop --check-only to run the server")
            return run_check_only(settings, as_json)
        if as_json:
            raise UsageError("--json needs --check-only", "the server mode answers in JSON on its HTTP API")
        if settings.index_spec_ignore:
            raise UsageError("--index-spec-ignore needs --check-only",
                             "in server mode ask GET /api/v1/nsMismatches?indexSpecIgnore=... instead")
        code: int = run_server(settings)
        return code

    run_guarded(job)
