"""`mongoferry publish-redis`: what tulip/oplogtoredis does, byte for byte, through mongos too.

Every insert, update, replace and delete (also inside transactions) is published to
``<db>.<coll>`` and then ``<db>.<coll>::<id>`` in redis-oplog's format (built by
:mod:`mongoferry.sinks.redis.format`), through one atomic Lua script per batch that publishes
only what no other instance published before (:mod:`mongoferry.sinks.redis.publisher`).

Capture: a change stream on the whole deployment (the default; it works through
mongos) or, with ``--capture oplog``, tailing ``local.oplog.rs`` of a replica-set member
as OTR does (:mod:`mongoferry.source.otr_readers`). Change events carry no transaction
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
config file > defaults (:mod:`mongoferry.jobs.publish_redis_settings`).

This module holds the job (read, format, queue for every Redis), the HTTP app and the
click command.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from bson import json_util
from bson.timestamp import Timestamp

from mongoferry.core.errors import EXIT_OK, ConnectError, HistoryLostError, MongoferryError
from mongoferry.core.events import Batch, Position
from mongoferry.infra.redact import redact
from mongoferry.jobs.publish_redis_settings import PublishRedisSettings
from mongoferry.sinks.redis.format import (
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

    from mongoferry.infra.clients import Client
    from mongoferry.sinks.redis.publisher import PublishMetrics, RedisClient, RedisPublisher
    from mongoferry.sinks.redis.sink import Formatted
    from mongoferry.state.status import JobStatus

log = logging.getLogger("mongoferry.publish_redis")

__all__ = [
    "PublishJob",
    "PublishRedisSettings",
    "http_app",
    "run_publish_redis",
]

DRAIN_TIMEOUT_S: Final = 15.0
HEALTH_TIMEOUT_S: Final = 2.0

# --------------------------------------------------------------------------- the job


def _epoch(wall: Any, ts: Timestamp) -> float:
    import datetime as dt

    if isinstance(wall, dt.datetime):
        return (wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)).timestamp()
    return float(ts.time)


class PublishJob:
    """publish-redis on the shared pipeline: OTR's capture → format once → one sink per Redis."""

    def __init__(self, settings: PublishRedisSettings, mongo: Client, publishers: list[RedisPublisher],
                 metrics: PublishMetrics, stop: threading.Event, status: JobStatus | None = None) -> None:
        from mongoferry.sinks.redis.sink import RedisSink
        from mongoferry.state.status import JobStatus

        self.s = settings
        self.mongo = mongo
        self.publishers = publishers
        self.metrics = metrics
        self.stop = stop
        self.sinks = [RedisSink(p, stop) for p in publishers]
        self.status = status or JobStatus()
        self.status.set(state="STARTING")

    # ------------------------------------------------------------ start position
    def initial_start(self) -> Position | None:
        """OTR's rule, over every Redis: resume from the lowest stored position (a Redis that was behind
        gets what it missed; the others drop the replay by its dedupe keys) if it is younger than the
        max catch-up; otherwise, or with none stored anywhere, start at the end (None)."""
        stored = [self._stored(p) for p in self.publishers]
        if any(s is None for s in stored):
            missing = [p.target.shown for p, s in zip(self.publishers, stored, strict=True) if s is None]
            if len(missing) == len(stored):
                log.info("no stored position: starting at the end",
                         extra={"key": last_processed_key(0, self.s.metadata_prefix)})
                return None
            log.warning("no stored position in %s: resuming from the others' lowest; it gets what they had",
                        ", ".join(missing))
        start = min((s for s in stored if s is not None), key=lambda p: (p.ts.time, p.ts.inc))
        age = time.time() - start.ts.time
        if age > self.s.max_catch_up_s:
            self.report_skip(start.ts, f"the stored position is {age:.1f}s old, more than the max catch-up of "
                                       f"{self.s.max_catch_up_s:g}s")
            return None
        return start

    def _stored(self, publisher: RedisPublisher) -> Position | None:
        from redis.exceptions import RedisError

        from mongoferry.sinks.redis.publisher import read_position

        key = last_processed_key(0, self.s.metadata_prefix)
        for attempt in range(5):
            try:
                stored = read_position(publisher.client, self.s.metadata_prefix)
                break
            except RedisError as exc:
                if attempt == 4:
                    raise ConnectError(f"cannot read {key} from Redis {publisher.target.shown}: {redact(str(exc))}",
                                       "check the Redis server; rerun the same command") from None
                time.sleep(0.5 * (attempt + 1))
        if stored.raw is None:
            return None
        try:
            ts = parse_resume_value(stored.raw)
        except ValueError as exc:
            log.error("the stored position is unusable: %s", exc, extra={"key": key, "redis": publisher.target.shown})
            return None
        if self.s.capture == "change-stream" and stored.token:
            try:
                token = json_util.loads(stored.token)
                if isinstance(token, Mapping):
                    return Position(ts, 0, dict(token))
            except ValueError:
                log.warning("the stored resume token is unusable; resuming from the stored timestamp")
        return Position(ts, 1)  # index > 0: at its time, inclusive (a transaction is counted again whole)

    def report_skip(self, since: Timestamp | None, why: str) -> None:
        span = max(0.0, time.time() - since.time) if since is not None else 0.0
        log.warning("starting at the end, skipping %.1fs of changes: %s", span, why,
                    extra={"skippedSeconds": round(span, 3),
                           "skippedFrom": resume_value(since) if since is not None else None})
        self.metrics.catch_up_skipped.set(span)
        self.metrics.catch_up_skips.inc()

    def at_end(self) -> Position:
        """The end, as a position: now (what is written from now on is read)."""
        from mongoferry.infra.clients import driver_errors
        from mongoferry.source.capture import current_time

        with driver_errors("reading MongoDB's cluster time"):
            return Position(current_time(self.mongo), 1)

    def history_lost(self, exc: HistoryLostError) -> Position:
        self.report_skip(self.pipeline.last_event["ts"] if self.pipeline.last_event else None,
                         f"MongoDB no longer holds the position ({exc.message})")
        return self.at_end()

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        from mongoferry.pipeline.loop import Pipeline
        from mongoferry.source.otr_capture import OtrCapture

        stored = self.initial_start()
        start = stored if stored is not None else self.at_end()
        self.pipeline = Pipeline(lambda position: OtrCapture(self.mongo, self.s.capture, position),
                                 list(self.sinks), start, self.status, self.stop, route=self.format,
                                 on_history_lost=self.history_lost, max_batch=self.s.batch_size)
        self.status.set(state="RUNNING")
        log.info("publishing to Redis %s", "at the end" if stored is None else f"from {resume_value(start.ts)}",
                 extra={"capture": self.s.capture, "redis": [p.target.shown for p in self.publishers],
                        "start": resume_value(start.ts) if stored is not None else None})
        try:
            while not self.stop.is_set():
                batch = self.pipeline.step()
                if batch.units:  # the dashboard's and progress's counts: the changes read, by type
                    self.status.set(events=self.status.events + Counter(read_kind(e.raw) for u in batch.units
                                                                         for e in u))
                self.check_publishers()
        finally:
            self.pipeline.close()
        return EXIT_OK

    def check_publishers(self) -> None:
        if self.stop.is_set():
            return
        for p in self.publishers:
            if not p.thread.is_alive():
                raise MongoferryError(f"the publisher for Redis {p.target.shown} stopped",
                                      "see the log above; rerun the same command to resume")

    # ------------------------------------------------------------ formatting (once, for every Redis)
    def format(self, batch: Batch) -> dict[str, Batch]:
        import dataclasses

        units = [[dataclasses.replace(e, raw=self.formatted(e.raw, e.position.index)) for e in unit]
                 for unit in batch.units]
        shared = Batch(units=units, idle=batch.idle, position=batch.position)
        return {sink.name: shared for sink in self.sinks}

    def formatted(self, doc: Mapping[str, Any], index: int) -> Formatted:
        from mongoferry.sinks.redis.sink import Formatted

        self.metrics.events_received.inc()
        token: str | None = None
        if self.s.capture == "change-stream":
            if self.s.deep_fields:
                doc = flattened_update_fields(doc)
            pubs, problems = publications_from_change_event(
                doc, tx_index=index, deep_fields=self.s.deep_fields, meteor_ids=self.s.meteor_ids,
                metadata_prefix=self.s.metadata_prefix)
            ts, wall = doc.get("clusterTime"), doc.get("wallTime")
            if "lsid" not in doc and isinstance(doc.get("_id"), Mapping):
                token = json_util.dumps(doc["_id"])
        else:
            pubs, problems = publications_from_oplog_entry(
                doc, deep_fields=self.s.deep_fields, meteor_ids=self.s.meteor_ids,
                metadata_prefix=self.s.metadata_prefix)
            if index:
                pubs = [_shifted(p, index, self.s.metadata_prefix) for p in pubs]
            ts, wall = doc.get("ts"), doc.get("wall")
        written_at = _epoch(wall, ts) if isinstance(ts, Timestamp) else time.time()
        self.metrics.last_received_staleness.set(max(0.0, time.time() - written_at))
        self.report(problems)
        return Formatted(pubs, written_at, token)

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


_OPLOG_KINDS = {"i": "insert", "u": "update", "d": "delete", "c": "ddl", "n": "noop"}


def read_kind(raw: Any) -> str:
    """The kind of change a raw change event or oplog entry is, in the status's event types."""
    if not isinstance(raw, Mapping):
        return "skipped"
    kind = raw.get("operationType") or _OPLOG_KINDS.get(str(raw.get("op")), "skipped")
    return kind if kind in ("insert", "update", "replace", "delete", "noop", "skipped") else "ddl"


# --------------------------------------------------------------------------- HTTP


def http_app(mongo: Client, health_clients: list[RedisClient], metrics: PublishMetrics,
             status: JobStatus | None = None) -> Starlette:
    """``/healthz`` (any method) and ``/metrics``, as OTR serves them; and mongoferry's own
    ``/api/v1/progress`` with the dashboard at ``/`` (read-only: publish-redis has no controls)."""
    import pymongo
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from redis.exceptions import RedisError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mongoferry.http.dashboard import dashboard_routes
    from mongoferry.state.health import HealthCollector

    if status is not None:  # the families every job has, beside oplogtoredis's own
        metrics.registry.register(HealthCollector(status, "publish-redis"))

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

    def progress(request: Request) -> Response:
        return JSONResponse(status.snapshot() if status is not None else {})

    any_method = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return Starlette(routes=[Route("/healthz", healthz, methods=any_method),
                             Route("/metrics", metrics_page, methods=["GET", "HEAD"]),
                             Route("/api/v1/progress", progress, methods=["GET"]),
                             *dashboard_routes("publish-redis", [])])


# --------------------------------------------------------------------------- entry point


def run_publish_redis(settings: PublishRedisSettings) -> int:
    """Validate, connect, publish until SIGTERM/SIGINT. Exit 2 on bad input, 3 when unreachable."""
    from mongoferry.http.server import HttpServer, parse_bind
    from mongoferry.infra.clients import connect, driver_errors, validate_uri
    from mongoferry.infra.redact import redact_uri
    from mongoferry.infra.runtime import stop_on_signals
    from mongoferry.sinks.redis.publisher import (
        PublishMetrics,
        RedisPublisher,
        check_redis,
        open_redis,
        parse_redis_urls,
    )
    from mongoferry.source.capture import check_capture
    from mongoferry.state.status import JobStatus

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
        with driver_errors("opening the change capture"):
            check_capture(mongo, settings.capture, "MongoDB")
        metrics = PublishMetrics()
        publishers = [RedisPublisher(t, c, metrics, ttl_s=settings.dedupe_ttl_s,
                                     metadata_prefix=settings.metadata_prefix,
                                     max_catch_up_s=settings.max_catch_up_s,
                                     flush_interval_s=settings.flush_interval_s, batch_size=settings.batch_size)
                      for t, c in zip(targets, clients, strict=True)]
        status = JobStatus()
        if bind is not None:
            http = HttpServer(http_app(mongo, health, metrics, status), *bind).start()
        for p in publishers:
            p.start()
        log.info("publish-redis started", extra={"mongo": redact_uri(mongo_uri),
                                                 "redis": [t.shown for t in targets],
                                                 "http": f"{bind[0]}:{bind[1]}" if bind else "off"})
        with stop_on_signals() as stop:
            job = PublishJob(settings, mongo, publishers, metrics, stop, status)
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
