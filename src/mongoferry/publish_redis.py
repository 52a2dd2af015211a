"""`mongoferry publish-redis`: what tulip/oplogtoredis does, byte for byte, through mongos too.

Every insert, update, replace and delete (also inside transactions) is published to
``<db>.<coll>`` and then ``<db>.<coll>::<id>`` in redis-oplog's format (built by
:mod:`mongoferry.redis_format`), through one atomic Lua script per batch that publishes
only what no other instance published before (:mod:`mongoferry.redis_sink`).

Capture: a change stream on the whole deployment (the default; it works through
mongos) or, with ``--capture oplog``, tailing ``local.oplog.rs`` of a replica-set member
as OTR does (:mod:`mongoferry.publish_redis_readers`). Change events carry no transaction
index, so it is counted as OTR counts it in an ``applyOps`` entry: 0 outside transactions;
within a transaction, consecutive events with the same ``lsid`` + ``txnNumber`` +
``clusterTime`` get 0, 1, 2, ...

Resume: after publishing, the position of the last accepted publication is stored in
Redis as OTR stores it (``<prefix>lastProcessedEntry.0`` = ``(T<<32)|I``), plus the
change stream resume token under ``<prefix>resumeToken``. At start, a position younger
than the max catch-up is resumed from (right after the token; from the timestamp itself
when the last publication was inside a transaction, whose indexes must be counted from
its first event, or when there is no token: the dedupe keys absorb what is sent again).
An older position, or none, starts at the end; a skipped span is logged and exported.

Configuration layers: flags > MONGOFERRY_* > OTR_* (oplogtoredis's own variables) >
config file > defaults (:mod:`mongoferry.publish_redis_settings`).

This module holds the job (read, format, queue for every Redis), the HTTP app and the
click command.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click
from bson import json_util
from bson.timestamp import Timestamp

from mongoferry.cli_support import env_help, given, run_guarded
from mongoferry.config import load_settings
from mongoferry.errors import EXIT_OK, ConnectError, MongoferryError, UsageError
from mongoferry.publish_redis_readers import ChangeStreamReader, HistoryLost, OplogReader, StartPoint
from mongoferry.publish_redis_settings import PublishRedisSettings
from mongoferry.redact import redact
from mongoferry.redis_format import (
    PROBLEM_UNPROCESSABLE_FIELD,
    Publication,
    dedupe_key,
    flattened_update_fields,
    last_processed_key,
    parse_resume_value,
    publications_from_change_event,
    publications_from_oplog_entry,
    resume_value,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from mongoferry.clients import Client
    from mongoferry.redis_sink import Outgoing, PublishMetrics, RedisClient, RedisPublisher

log = logging.getLogger("mongoferry.publish_redis")

__all__ = [
    "PublishJob",
    "PublishRedisSettings",
    "http_app",
    "publish_redis_command",
    "run_publish_redis",
]

DRAIN_TIMEOUT_S: Final = 15.0
RECONNECT_MAX_S: Final = 5.0
HEALTH_TIMEOUT_S: Final = 2.0
INVALID_TOKEN_CODES: Final = (9, 260)  # FailedToParse, InvalidResumeToken

# --------------------------------------------------------------------------- the job


def _epoch(wall: Any, ts: Timestamp) -> float:
    import datetime as dt

    if isinstance(wall, dt.datetime):
        return (wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)).timestamp()
    return float(ts.time)


class PublishJob:
    def __init__(self, settings: PublishRedisSettings, mongo: Client, publishers: list[RedisPublisher],
                 metrics: PublishMetrics, stop: threading.Event) -> None:
        self.s = settings
        self.mongo = mongo
        self.publishers = publishers
        self.metrics = metrics
        self.stop = stop
        self.reader: ChangeStreamReader | OplogReader = (
            OplogReader(mongo) if settings.capture == "oplog" else ChangeStreamReader(mongo))

    # ------------------------------------------------------------ start position
    def initial_start(self) -> StartPoint:
        """OTR's rule: resume from the stored position if younger than the max catch-up, else the end."""
        from redis.exceptions import RedisError

        from mongoferry.redis_sink import read_position

        first = self.publishers[0]
        key = last_processed_key(0, self.s.metadata_prefix)
        for attempt in range(5):
            try:
                stored = read_position(first.client, self.s.metadata_prefix)
                break
            except RedisError as exc:
                if attempt == 4:
                    raise ConnectError(f"cannot read {key} from Redis {first.target.shown}: {redact(str(exc))}",
                                       "check the Redis server; rerun the same command") from None
                time.sleep(0.5 * (attempt + 1))
        if stored.raw is None:
            log.info("no stored position: starting at the end", extra={"key": key})
            return StartPoint()
        try:
            ts = parse_resume_value(stored.raw)
        except ValueError as exc:
            log.error("the stored position is unusable, starting at the end: %s", exc, extra={"key": key})
            return StartPoint()
        age = time.time() - ts.time
        if age > self.s.max_catch_up_s:
            self.report_skip(ts, f"the stored position is {age:.1f}s old, more than the max catch-up of "
                                 f"{self.s.max_catch_up_s:g}s")
            return StartPoint()
        if self.s.capture == "change-stream" and stored.token:
            try:
                token = json_util.loads(stored.token)
                if isinstance(token, Mapping):
                    return StartPoint(ts=ts, token=token)
            except ValueError:
                log.warning("the stored resume token is unusable; resuming from the stored timestamp")
        return StartPoint(ts=ts)

    def report_skip(self, since: Timestamp | None, why: str) -> None:
        span = max(0.0, time.time() - since.time) if since is not None else 0.0
        log.warning("starting at the end, skipping %.1fs of changes: %s", span, why,
                    extra={"skippedSeconds": round(span, 3),
                           "skippedFrom": resume_value(since) if since is not None else None})
        self.metrics.catch_up_skipped.set(span)
        self.metrics.catch_up_skips.inc()

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        from pymongo.errors import OperationFailure, PyMongoError

        start = self.initial_start()
        announced = False
        pause = 0.2
        failing_since: float | None = None
        last_log = 0.0
        while not self.stop.is_set():
            opened = False
            try:
                self.open(start)
                opened = True
                if not announced:
                    announced = True
                    log.info("publishing to Redis %s", start.describe(),
                             extra={"capture": self.s.capture, "redis": [p.target.shown for p in self.publishers],
                                    "start": resume_value(start.ts) if start.ts is not None else None})
                if failing_since is not None:
                    log.warning("MongoDB is back: reading again after %.1fs", time.time() - failing_since)
                    failing_since, pause = None, 0.2
                self.pump()
            except HistoryLost as exc:
                self.report_skip(self.reader.last_ts or start.ts, f"MongoDB no longer holds the position ({exc})")
                self.reader.close()
                start = StartPoint()
            except PyMongoError as exc:
                if (not opened and isinstance(exc, OperationFailure) and start.token is not None
                        and start.ts is not None and exc.code in INVALID_TOKEN_CODES):
                    log.warning("cannot resume after the stored token (%s); resuming from its timestamp",
                                redact(str((exc.details or {}).get("errmsg", exc))))
                    start = StartPoint(ts=start.ts)
                    continue
                start = self.reader.resume_point(start)
                self.reader.close()
                now = time.time()
                if failing_since is None:
                    failing_since = last_log = now
                    log.warning("lost MongoDB, retrying: %s", redact(str(exc)))
                elif now - last_log >= 30:
                    last_log = now
                    log.warning("still cannot read from MongoDB after %.0fs: %s", now - failing_since,
                                redact(str(exc)))
                self.stop.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)
        self.reader.close()
        return EXIT_OK

    def open(self, start: StartPoint) -> None:
        self.reader.close()
        self.reader.open(start)

    def pump(self) -> None:
        """Read and queue until stopped; errors propagate to :meth:`run`."""
        while not self.stop.is_set():
            doc = self.reader.next()
            if doc is None:
                self.check_publishers()
                continue
            self.handle(doc)

    def check_publishers(self) -> None:
        for p in self.publishers:
            if not p.thread.is_alive():
                raise MongoferryError(f"the publisher for Redis {p.target.shown} stopped",
                                      "see the log above; rerun the same command to resume")

    def handle(self, doc: Mapping[str, Any]) -> None:
        from mongoferry.redis_sink import Outgoing

        self.metrics.events_received.inc()
        token: str | None = None
        if isinstance(self.reader, ChangeStreamReader):
            tx_index = self.reader.indexer.index(doc)
            if self.s.deep_fields:
                doc = flattened_update_fields(doc)
            pubs, problems = publications_from_change_event(
                doc, tx_index=tx_index, deep_fields=self.s.deep_fields, meteor_ids=self.s.meteor_ids,
                metadata_prefix=self.s.metadata_prefix)
            ts, wall = doc.get("clusterTime"), doc.get("wallTime")
            if "lsid" not in doc and isinstance(doc.get("_id"), Mapping):
                token = json_util.dumps(doc["_id"])
        else:
            offset = self.reader.tx_offset(doc)
            pubs, problems = publications_from_oplog_entry(
                doc, deep_fields=self.s.deep_fields, meteor_ids=self.s.meteor_ids,
                metadata_prefix=self.s.metadata_prefix)
            if offset:
                pubs = [_shifted(p, offset, self.s.metadata_prefix) for p in pubs]
            ts, wall = doc.get("ts"), doc.get("wall")
        if isinstance(ts, Timestamp):
            written_at = _epoch(wall, ts)
            self.metrics.last_received_staleness.set(max(0.0, time.time() - written_at))
        self.report(problems)
        for p in pubs:
            item: Outgoing = Outgoing(p, _epoch(wall, p.ts), token)
            for publisher in self.publishers:
                if not publisher.put(item, self.stop):
                    if not self.stop.is_set():
                        self.check_publishers()
                    return

    def report(self, problems: list[str]) -> None:
        for problem in problems:
            category = problem.partition(":")[0]
            if category == PROBLEM_UNPROCESSABLE_FIELD:
                self.metrics.unprocessable_fields.inc()
                log.warning("published without a changed field: %s", problem, extra={"problem": category})
            else:
                self.metrics.unpublishable.labels(category).inc()
                self.metrics.processed.labels("skipped").inc()
                log.error("not published: %s", problem, extra={"problem": category})


def _shifted(p: Publication, offset: int, prefix: str) -> Publication:
    index = p.tx_index + offset
    return replace(p, tx_index=index, dedupe_key=dedupe_key(p.ts, index, prefix))


# --------------------------------------------------------------------------- HTTP


def http_app(mongo: Client, health_clients: list[RedisClient], metrics: PublishMetrics) -> Starlette:
    """``/healthz`` (any method) and ``/metrics``, as OTR serves them."""
    import pymongo
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from redis.exceptions import RedisError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def mongo_ok() -> bool:
        try:
            with pymongo.timeout(HEALTH_TIMEOUT_S):
                mongo.admin.command("ping")
            return True
        except Exception:
            return False

    def redis_ok() -> bool:
        try:
            return all(bool(c.ping()) for c in health_clients)
        except (RedisError, OSError):
            return False

    def healthz(request: Request) -> Response:  # sync: starlette runs it in a worker thread
        state = {"mongoOK": mongo_ok(), "redisOK": redis_ok()}
        body = json.dumps(state, sort_keys=True, separators=(",", ":")) + "\n"
        return Response(body, status_code=200 if all(state.values()) else 500, media_type="application/json")

    def metrics_page(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    any_method = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return Starlette(routes=[Route("/healthz", healthz, methods=any_method),
                             Route("/metrics", metrics_page, methods=["GET", "HEAD"])])


# --------------------------------------------------------------------------- entry point


def run_publish_redis(settings: PublishRedisSettings) -> int:
    """Validate, connect, publish until SIGTERM/SIGINT. Exit 2 on bad input, 3 when unreachable."""
    from mongoferry.clients import connect, validate_uri
    from mongoferry.redact import redact_uri
    from mongoferry.redis_sink import (
        PublishMetrics,
        RedisPublisher,
        check_redis,
        open_redis,
        parse_redis_urls,
    )
    from mongoferry.runtime import stop_on_signals
    from mongoferry.server import HttpServer, parse_bind

    # 1. Everything that can be checked without a server.
    targets = parse_redis_urls(settings.redis_url)
    mongo_uri = validate_uri(settings.mongo_url, "--mongo-url")
    http_text = settings.http
    bind = parse_bind("0.0.0.0" + http_text if http_text.startswith(":") else http_text, "--http")
    timeout = settings.connect_timeout
    redis_timeout = min(timeout, 5.0)
    clients = [open_redis(t, redis_timeout) for t in targets]
    health = [open_redis(t, HEALTH_TIMEOUT_S) for t in targets]  # one quick retry: a restart breaks pooled sockets

    # 2. The servers.
    from bson.raw_bson import RawBSONDocument

    # Raw documents, decoded here with surrogateescape: invalid UTF-8 then reaches the channel
    # names and messages as OTR writes it, instead of failing the decoding.
    mongo = connect(mongo_uri, "MongoDB server", timeout, document_class=RawBSONDocument)
    http: HttpServer | None = None
    publishers: list[RedisPublisher] = []
    try:
        for target, client in zip(targets, clients, strict=True):
            check_redis(client, target, redis_timeout)
        _check_capture(mongo, settings)
        metrics = PublishMetrics()
        publishers = [RedisPublisher(t, c, metrics, ttl_s=settings.dedupe_ttl_s,
                                     metadata_prefix=settings.metadata_prefix,
                                     max_catch_up_s=settings.max_catch_up_s,
                                     flush_interval_s=settings.flush_interval_s, batch_size=settings.batch_size)
                      for t, c in zip(targets, clients, strict=True)]
        if bind is not None:
            http = HttpServer(http_app(mongo, health, metrics), *bind).start()
        for p in publishers:
            p.start()
        log.info("publish-redis started", extra={"mongo": redact_uri(mongo_uri),
                                                 "redis": [t.shown for t in targets],
                                                 "http": f"{bind[0]}:{bind[1]}" if bind else "off"})
        with stop_on_signals() as stop:
            job = PublishJob(settings, mongo, publishers, metrics, stop)
            try:
                code = job.run()
            finally:
                stop.set()
                complete = all([p.finish(DRAIN_TIMEOUT_S) for p in publishers])
                if not complete:
                    log.warning("stopped before Redis took every message; a restart publishes them")
        log.info("publish-redis stopped; run the same command to continue")
        return code
    finally:
        if http is not None:
            http.stop()
        mongo.close()
        for c in clients + health:
            c.close()


def _check_capture(mongo: Client, settings: PublishRedisSettings) -> None:
    from pymongo.errors import OperationFailure

    from mongoferry.clients import driver_errors

    with driver_errors("opening the change capture"):
        if settings.capture == "oplog":
            if mongo.local["oplog.rs"].find_one({}, projection={"ts": 1}) is None:
                raise UsageError("--capture oplog needs a replica-set member with an oplog",
                                 "connect to a replica-set member, or use the default change streams")
            return
        try:
            mongo.watch(max_await_time_ms=10).close()
        except OperationFailure as exc:
            raise UsageError(f"MongoDB cannot open a change stream: {(exc.details or {}).get('errmsg', exc)}",
                             "change streams need a replica set or a sharded cluster (MongoDB 4.0+)") from None


def configure_logging(settings: PublishRedisSettings) -> None:
    from mongoferry.logs import resolve_format, setup_logging

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


if __name__ == "__main__":  # before it is wired into the CLI: python -m mongoferry.publish_redis …
    publish_redis_command()
