"""The Redis side of ``publish-redis``: connections, the dedupe-and-publish script, metrics.

One :class:`RedisPublisher` per Redis URL. Each has a bounded FIFO queue served by one
thread, so publications reach Redis in the order they were read. The thread takes what is
queued (up to ``batch_size`` at once, without waiting for more) and runs
:data:`~mongoferry.sinks.redis.format.DEDUPE_PUBLISH_LUA` on it. Redis runs the script
atomically: the first caller that sets a publication's dedupe key publishes it, any other
caller (another instance, or this one replaying after a restart) gets a 0 and publishes
nothing.

Failures are retried with a growing pause (0.1 s doubling up to 2 s). A batch is given
up only once its oldest message is older than the max catch-up: a restart could not
bring such a message back either. The stored position (``<prefix>lastProcessedEntry.0``)
only ever moves to a publication Redis has accepted, so nothing that was read but not
published is ever behind it.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from bson.timestamp import Timestamp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from mongoferry.core.errors import AuthError, ConnectError, UsageError
from mongoferry.infra.redact import redact, redact_uri, register_secret, register_uri
from mongoferry.sinks.redis.format import (
    DEDUPE_PUBLISH_LUA,
    Publication,
    last_processed_key,
    resume_value,
    script_keys_and_args,
)

log = logging.getLogger("mongoferry.redis")

QUEUE_SIZE: Final = 10_000  # per Redis, as OTR
RETRY_FIRST_S: Final = 0.1
RETRY_MAX_S: Final = 2.0
STILL_FAILING_LOG_EVERY_S: Final = 10.0
SCHEMES: Final = ("redis", "rediss", "unix", "redis-sentinel")

RedisClient = redis.Redis


def resume_token_key(metadata_prefix: str) -> str:
    """Where the change stream resume token of the stored position is kept."""
    return f"{metadata_prefix}resumeToken"


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class RedisTarget:
    """One validated Redis URL. ``shown`` is safe to print."""

    index: int
    url: str
    shown: str


def _register_redis_secrets(url: str) -> None:
    """Remember every password a Redis URL can carry, before anything can print it."""
    register_uri(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        register_secret(parts.password)
        register_secret(unquote(parts.password))
    if parts.scheme == "redis-sentinel" and parts.username and not parts.password:
        # redis-sentinel://password@host: OTR reads the whole user part as the password.
        register_secret(parts.username)
        register_secret(unquote(parts.username))
    for name, values in parse_qs(parts.query).items():
        if name.lower() in ("password", "sentinelpassword"):
            for v in values:
                register_secret(v)


def parse_redis_urls(urls: Sequence[str], flag: str = "--redis-url") -> list[RedisTarget]:
    """Validate every URL of the list (each already split at commas); raise one UsageError line."""
    for url in urls:
        _register_redis_secrets(url)
    if not urls:
        raise UsageError(f"{flag} is required", f"give {flag} redis://HOST:PORT (a comma-separated list for several)")
    targets: list[RedisTarget] = []
    for index, url in enumerate(urls):
        shown = redact(redact_uri(url))
        hint = ("the form is redis://HOST[:PORT][/DB] with optional USER:PASSWORD@ before HOST; rediss:// for TLS, "
                "redis-sentinel://[PASSWORD@]HOST:PORT?sentinelMasterId=NAME for Sentinel")
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise UsageError(f"{flag} {shown} is not a valid Redis URL: {redact(str(exc))}", hint) from None
        if parts.scheme not in SCHEMES:
            raise UsageError(f"{flag} {shown} is not a valid Redis URL: unknown scheme {parts.scheme!r}", hint)
        if parts.scheme == "unix":
            if not parts.path:
                raise UsageError(f"{flag} {shown} is not a valid Redis URL: no socket path", hint)
        elif parts.scheme == "redis-sentinel":
            for host in parts.netloc.rpartition("@")[2].split(","):
                h, _, p = host.rpartition(":")
                if not h or not p.isdigit():
                    raise UsageError(f"{flag} {shown} is not a valid Redis URL: sentinel {host!r} is not HOST:PORT",
                                     hint)
            if not parse_qs(parts.query).get("sentinelMasterId"):
                raise UsageError(f"{flag} {shown} has no ?sentinelMasterId=NAME", hint)
        else:
            if not parts.hostname:
                raise UsageError(f"{flag} {shown} is not a valid Redis URL: no host", hint)
            if port == 0:
                raise UsageError(f"{flag} {shown} is not a valid Redis URL: port 0", hint)
        db = parts.path.lstrip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise UsageError(f"{flag} {shown} is not a valid Redis URL: database {db!r} is not a number", hint)
        targets.append(RedisTarget(index, url, shown))
    return targets


def open_redis(target: RedisTarget, timeout_s: float, *, retries: int = 1) -> RedisClient:
    """A client for ``target`` (nothing is sent yet). ``retries``: redis-py's own quick retries."""
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries) if retries else Retry(NoBackoff(), 0)
    common: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": retry,
                              "health_check_interval": 0}
    parts = urlsplit(target.url)
    try:
        if parts.scheme == "redis-sentinel":
            from redis.sentinel import Sentinel

            userinfo, _, hosts = parts.netloc.rpartition("@")
            password = unquote(userinfo.partition(":")[2] or userinfo) if userinfo else None
            addresses = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts.split(",")]
            db = int(parts.path.lstrip("/") or 0)
            master = parse_qs(parts.query)["sentinelMasterId"][0]
            sentinel = Sentinel(addresses, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s)
            client: RedisClient = sentinel.master_for(master, password=password, db=db,
                                                      **common)
            return client
        if parts.scheme == "rediss":
            common["ssl_min_version"] = ssl.TLSVersion.TLSv1_2
        client = redis.Redis.from_url(target.url, **common)
        return client
    except (ValueError, TypeError, RedisError) as exc:
        raise UsageError(f"--redis-url {target.shown} is not usable: {redact(str(exc))}",
                         "fix the Redis URL") from None


def check_redis(client: RedisClient, target: RedisTarget, timeout_s: float) -> None:
    """Prove the server answers (PING) and accepts scripts; errors become exit-3 errors."""
    try:
        client.ping()
    except AuthenticationError as exc:
        raise AuthError(f"authentication failed for Redis {target.shown}: {redact(str(exc))}",
                        "check the password in the Redis URL") from None
    except ResponseError as exc:  # redis-py raises AuthenticationError for NOAUTH and WRONGPASS
        raise ConnectError(f"Redis {target.shown} refused PING: {redact(str(exc))}",
                           "check the Redis server") from None
    except RedisError as exc:
        raise ConnectError(f"cannot reach Redis at {target.shown} within {timeout_s:g}s: {redact(str(exc))}",
                           "check host, port, TLS, and that redis-server is running") from None


# --------------------------------------------------------------------------- metrics


LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                          120.0)
COMMAND_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STATUSES: Final = ("sent", "skipped", "failed")


class PublishMetrics:
    """Every metric of ``publish-redis``, in a registry of its own (served on /metrics).

    ``processed_messages{status}`` counts one outcome per publication and Redis:
    ``sent`` (the script published it), ``skipped`` (not published: the dedupe key was
    already set, or the event could not be published at all, e.g. an unsupported ``_id``
    type) and ``failed`` (given up after retrying past the max catch-up).
    """

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.processed = Counter("mongoferry_redis_processed_messages", "Publications by outcome.", ["status"],
                                 registry=r)
        for status in STATUSES:
            self.processed.labels(status)
        self.dedupe_hits = Counter("mongoferry_redis_dedupe_hits",
                                   "Publications not published because their dedupe key was already set.",
                                   registry=r)
        self.publish_latency = Histogram(
            "mongoferry_redis_publish_latency_seconds",
            "From the MongoDB write (its wall time) until Redis confirmed the publish.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.command_duration = Histogram("mongoferry_redis_command_duration_seconds",
                                          "Duration of one successful dedupe-and-publish script call.",
                                          buckets=COMMAND_BUCKETS, registry=r)
        self.batch_size = Histogram("mongoferry_redis_batch_size", "Publications per script call.",
                                    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r)
        self.last_event_staleness = Gauge(
            "mongoferry_redis_last_event_staleness_seconds",
            "Age of the last published event (now - its MongoDB wall time) when it was published.", registry=r)
        self.last_received_staleness = Gauge(
            "mongoferry_redis_last_received_staleness_seconds",
            "Age of the last event read from MongoDB when it was read.", registry=r)
        self.events_received = Counter("mongoferry_redis_events_received",
                                       "Change events or oplog entries read from MongoDB.", registry=r)
        self.unpublishable = Counter("mongoferry_redis_unpublishable_events",
                                     "Writes that cannot be published (also counted as skipped), by reason.",
                                     ["reason"], registry=r)
        for reason in ("unsupported-id", "missing-id", "bad-update", "malformed-entry"):
            self.unpublishable.labels(reason)
        self.unprocessable_fields = Counter("mongoferry_redis_unprocessable_changed_fields",
                                            "Parts of updates whose changed fields could not be read.", registry=r)
        self.temporary_failures = Counter("mongoferry_redis_temporary_send_failures",
                                          "Publications whose script call failed and was retried.", registry=r)
        self.catch_up_skipped = Gauge(
            "mongoferry_redis_catch_up_skipped_seconds",
            "History skipped by the last start at the end (stored position older than the max catch-up, "
            "or lost), in seconds; 0 when nothing was skipped.", registry=r)
        self.catch_up_skips = Counter("mongoferry_redis_catch_up_skips",
                                      "Starts at the end that skipped history.", registry=r)
        self.stored_position = Gauge("mongoferry_redis_stored_position_seconds",
                                     "Seconds part of the last stored position, per Redis.", ["redis"], registry=r)
        self.queue_length = Gauge("mongoferry_redis_queue_length", "Publications waiting, per Redis.", ["redis"],
                                  registry=r)


# --------------------------------------------------------------------------- publisher


@dataclass(frozen=True)
class Outgoing:
    """One publication on its way to Redis.

    ``written_at``: epoch seconds of the MongoDB write (wall time, else the timestamp).
    ``resume_token``: extended JSON of the change event's resume token when a restart
    may resume right after it; None when it must resume from ``ts`` (the oplog, or an
    operation inside a transaction, whose index must be counted from its first event).
    """

    publication: Publication
    written_at: float
    resume_token: str | None = None


@dataclass(frozen=True)
class StoredPosition:
    raw: bytes | None
    token: str | None


def read_position(client: RedisClient, metadata_prefix: str) -> StoredPosition:
    """The stored position and resume token (raises RedisError)."""
    raw, token = client.mget([last_processed_key(0, metadata_prefix), resume_token_key(metadata_prefix)])
    raw_bytes = raw.encode() if isinstance(raw, str) else raw
    return StoredPosition(raw_bytes, token.decode("utf-8") if isinstance(token, bytes) else None)


class RedisPublisher:
    """Publishes to one Redis, in order, exactly once across instances (see the module doc)."""

    def __init__(self, target: RedisTarget, client: RedisClient, metrics: PublishMetrics, *, ttl_s: int,
                 metadata_prefix: str, max_catch_up_s: float, flush_interval_s: float, batch_size: int,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.target = target
        self.client = client
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.prefix = metadata_prefix
        self.max_catch_up_s = max_catch_up_s
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.queue: queue.Queue[Outgoing] = queue.Queue(maxsize=queue_size)
        self.script = client.register_script(DEDUPE_PUBLISH_LUA)
        self._finish = threading.Event()
        self._abort = threading.Event()
        self._pending: tuple[Timestamp, str | None] | None = None
        # The last publication Redis accepted: (ts, transaction index, resume token), for the pipeline.
        self.accepted: tuple[Timestamp, int, str | None] | None = None
        self._flushed: tuple[Timestamp, str | None] | None = None
        self._last_flush = time.monotonic()
        self._failing_since: float | None = None
        self._last_fail_log = 0.0
        label = str(target.index)
        metrics.queue_length.labels(label).set_function(self.queue.qsize)
        self._stored_gauge = metrics.stored_position.labels(label)
        self.thread = threading.Thread(target=self._run, name=f"redis-{target.index}", daemon=True)

    # ------------------------------------------------------------ capture side
    def start(self) -> RedisPublisher:
        self.thread.start()
        return self

    def put(self, item: Outgoing, stop: threading.Event) -> bool:
        """Queue ``item``; blocks while the queue is full. False if ``stop`` was set meanwhile."""
        while True:
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                if stop.is_set() or not self.thread.is_alive():
                    return False

    def finish(self, timeout_s: float) -> bool:
        """Publish what is queued, store the position, stop. False if Redis did not take it all in time."""
        self._finish.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self._abort.set()  # unpublished messages stay after the stored position: a restart sends them
            self.thread.join(5.0)
            return False
        return True

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    # ------------------------------------------------------------ publisher thread
    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                batch = self._take(min(0.1, self.flush_interval_s / 2))
                if batch:
                    self._publish(batch)
                elif self._finish.is_set() and self.queue.empty():
                    break
                if time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self._flush()
        except Exception:  # pragma: no cover - a bug; the main loop notices the dead thread
            log.exception("the Redis publisher stopped unexpectedly", extra={"redis": self.target.shown})
            raise
        finally:
            self._flush(final=True)

    def _take(self, timeout: float) -> list[Outgoing]:
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _publish(self, batch: list[Outgoing]) -> None:
        keys, args = script_keys_and_args([o.publication for o in batch], self.ttl_s)
        pause = RETRY_FIRST_S
        while True:
            started = time.perf_counter()
            try:
                results = self.script(keys=keys, args=args)
                if not isinstance(results, list) or len(results) != len(batch):
                    raise ResponseError(f"unexpected script reply {results!r}")
                break
            except RedisError as exc:
                self.metrics.temporary_failures.inc(len(batch))
                now = time.time()
                self._log_failure(exc, now)
                if self._abort.is_set():
                    return
                oldest_age = now - batch[0].written_at
                if oldest_age > self.max_catch_up_s:
                    self.metrics.processed.labels("failed").inc(len(batch))
                    log.error("dropped %d messages: Redis did not take them within the max catch-up (%gs)",
                              len(batch), self.max_catch_up_s,
                              extra={"redis": self.target.shown, "oldestAgeSeconds": round(oldest_age, 3)})
                    return
                if self._abort.wait(pause):
                    return
                pause = min(pause * 2, RETRY_MAX_S)
        now = time.time()
        self.metrics.command_duration.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        if self._failing_since is not None:
            log.warning("Redis is back: publishing again after %.1fs", now - self._failing_since,
                        extra={"redis": self.target.shown})
            self._failing_since = None
        sent = 0
        for item, published in zip(batch, results, strict=True):
            if int(published) == 1:
                sent += 1
                self.metrics.publish_latency.observe(max(0.0, now - item.written_at))
        if sent:
            self.metrics.processed.labels("sent").inc(sent)
        if len(batch) - sent:
            self.metrics.processed.labels("skipped").inc(len(batch) - sent)
            self.metrics.dedupe_hits.inc(len(batch) - sent)
        self.metrics.last_event_staleness.set(max(0.0, now - batch[-1].written_at))
        last = batch[-1]
        self._pending = (last.publication.ts, last.resume_token)
        self.accepted = (last.publication.ts, last.publication.tx_index, last.resume_token)

    def _log_failure(self, exc: RedisError, now: float) -> None:
        if self._failing_since is None:
            self._failing_since = now
            self._last_fail_log = now
            log.warning("cannot publish to Redis, retrying: %s", redact(str(exc)) or type(exc).__name__,
                        extra={"redis": self.target.shown})
        elif now - self._last_fail_log >= STILL_FAILING_LOG_EVERY_S:
            self._last_fail_log = now
            log.warning("still cannot publish to Redis after %.0fs: %s", now - self._failing_since,
                        redact(str(exc)) or type(exc).__name__, extra={"redis": self.target.shown})

    def _flush(self, final: bool = False) -> None:
        """Store the position of the last publication Redis accepted (and its resume token)."""
        self._last_flush = time.monotonic()
        pending = self._pending
        if pending is None or pending == self._flushed:
            return
        ts, token = pending
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(last_processed_key(0, self.prefix), resume_value(ts))
            if token is None:
                pipe.delete(resume_token_key(self.prefix))
            else:
                pipe.set(resume_token_key(self.prefix), token)
            pipe.execute()
        except RedisError as exc:
            (log.warning if final else log.debug)("cannot store the position in Redis yet: %s", redact(str(exc)),
                                                  extra={"redis": self.target.shown})
            return
        self._flushed = pending
        self._stored_gauge.set(ts.time)
