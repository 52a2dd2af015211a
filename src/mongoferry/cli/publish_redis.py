"""`mongoferry publish-redis`: the click command (flags, MONGOFERRY_* and OTR_* variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mongoferry.cli.support import env_help, given, run_guarded
from mongoferry.infra.config import load_settings
from mongoferry.jobs.publish_redis import run_publish_redis
from mongoferry.jobs.publish_redis_settings import PublishRedisSettings


def configure_logging(settings: PublishRedisSettings) -> None:
    from mongoferry.infra.logs import resolve_format, setup_logging

    fmt = resolve_format(settings.log_format)
    setup_logging("json" if fmt == "json" else "text", "critical" if settings.quiet else settings.log_level)


@click.command("publish-redis", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--mongo-url", "--src", "mongo_url", metavar="URI",
              help=env_help("MongoDB connection string (mongos or replica set).", "mongo_url", "OTR_MONGO_URL"))
@click.option("--redis-url", metavar="URL[,URL...]",
              help=env_help("Redis URL(s), comma-separated; each gets every message. redis://, rediss:// or "
                        "redis-sentinel://.", "redis_url", "OTR_REDIS_URL"))
@click.option("--http", metavar="HOST:PORT",
              help=env_help("Serve /healthz and /metrics here, or 'off' (default 127.0.0.1:9000).", "http",
                        "OTR_HTTP_SERVER_ADDR"))
@click.option("--capture", type=click.Choice(["change-stream", "oplog"]),
              help=env_help("Change streams (default; works through mongos) or tailing local.oplog.rs.", "capture"))
@click.option("--max-catch-up", "max_catch_up_s", metavar="DURATION",
              help=env_help("Resume only from a stored position younger than this (default 120s; seconds or Go "
                        "duration).", "max_catch_up_s", "OTR_MAX_CATCH_UP"))
@click.option("--dedupe-ttl", "dedupe_ttl_s", metavar="DURATION",
              help=env_help("Lifetime of the dedupe keys (default 150s).", "dedupe_ttl_s",
                            "OTR_REDIS_DEDUPE_EXPIRATION"))
@click.option("--metadata-prefix", help=env_help("Prefix of the dedupe and position keys (default oplogtoredis::).",
                                             "metadata_prefix", "OTR_REDIS_METADATA_PREFIX"))
@click.option("--deep-fields/--no-deep-fields", default=None,
              help=env_help("List dotted changed paths, not top-level names.", "deep_fields",
                        "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES"))
@click.option("--meteor-ids/--no-meteor-ids", default=None,
              help=env_help("Name per-document channels with Meteor's MongoID.idStringify (and publish numeric ids).",
                        "meteor_ids"))
@click.option("--flush-interval", "flush_interval_s", metavar="DURATION",
              help=env_help("How often the position is stored (default 1s).", "flush_interval_s",
                        "OTR_TIMESTAMP_FLUSH_INTERVAL"))
@click.option("--batch-size", type=int,
              help=env_help("Most publications per script call (default 100).", "batch_size", "OTR_REDIS_BATCH_SIZE"))
@click.option("--connect-timeout", metavar="SECONDS",
              help=env_help("Seconds to wait for each server (default 10).", "connect_timeout",
                        "OTR_MONGO_CONNECT_TIMEOUT"))
@click.option("--config", type=click.Path(dir_okay=False), help="YAML file of options (lowest precedence).")
@click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text"]),
              help=env_help("Log style (default json).", "log_format"))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help=env_help("Log level (default info).", "log_level", "OTR_LOG_DEBUG"))
@click.option("--quiet", is_flag=True, default=None, help=env_help("Log nothing.", "quiet", "OTR_LOG_QUIET"))
@click.pass_context
def publish_redis_command(ctx: click.Context, /, **values: Any) -> None:
    """Publish every insert, update, replace and delete to Redis for Meteor's redis-oplog,
    byte-compatible with tulip/oplogtoredis (a drop-in: it also reads its OTR_* variables).

    Run two or three instances for high availability: a Lua script publishes each
    message once. Stops on SIGTERM/Ctrl-C after storing its position; the same
    command resumes. GET /healthz and /metrics on --http.
    """
    def job() -> int:
        config = values.get("config")
        settings = load_settings(PublishRedisSettings, given(ctx, **values), Path(config) if config else None)
        configure_logging(settings)
        return run_publish_redis(settings)

    run_guarded(job)
