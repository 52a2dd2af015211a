"""`mongoferry publish-redis` end to end: real redis-server processes, real SecantusDB, the CLI.

A PSUBSCRIBE * subscriber records every (channel, message) pair in arrival order, as
oplogtoredis's acceptance harness does, ignoring channels whose names contain
"sentinel": the tests publish to those to know when everything before has arrived.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from bson import Binary, ObjectId
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from mongoferry.core.errors import EXIT_CONNECT, EXIT_USAGE
from mongoferry.dev.embedded import EmbeddedServer, child_env, free_port
from mongoferry.sinks.redis.format import dedupe_key, parse_resume_value
from tests.integration.conftest import Result, run_cli, wait_for

PASSWORD = "s3cret-Pw!"
REDIS_SERVER = shutil.which("redis-server") or "redis-server"
Pair = tuple[bytes, bytes]


def cli_prefix() -> list[str]:
    """`python -m mongoferry publish-redis` once the command is wired into the CLI, else the module."""
    from mongoferry.cli.main import main

    if "publish-redis" in main.commands:
        return ["publish-redis"]
    return []


def publish_redis_args(*args: str) -> list[str]:
    prefix = cli_prefix()
    module = ["-m", "mongoferry", *prefix] if prefix else ["-m", "mongoferry.jobs.publish_redis"]
    return [sys.executable, *module, *args]


def run_publish_redis(*args: str, env: dict[str, str] | None = None) -> Result:
    prefix = cli_prefix()
    if prefix:
        return run_cli(*prefix, *args, env=env, timeout=60)
    full_env = child_env()
    full_env.update(env or {})
    p = subprocess.run(publish_redis_args(*args), capture_output=True, text=True, env=full_env, timeout=60)
    return Result(p.returncode, p.stdout, p.stderr)


# --------------------------------------------------------------------------- servers


class RedisServer:
    """One redis-server process without persistence, restartable on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        password = extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else None
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client(password=password) as c:
                    c.ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self, password: str | None = None) -> redis.Redis:
        """A client whose errors surface at once (no retries of its own)."""
        return redis.Redis(port=self.port, password=password, socket_timeout=5, retry=Retry(NoBackoff(), 0))


class Subscriber:
    """PSUBSCRIBE * in a thread; records every pmessage; reconnects when the server restarts."""

    def __init__(self, server: RedisServer, password: str | None = None) -> None:
        self.server = server
        self.password = password
        self.received: list[Pair] = []
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Subscriber:
        self._thread.start()
        assert self.subscribed.wait(10), "the subscriber could not subscribe"
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            client = self.server.client(self.password)
            pubsub = client.pubsub()
            try:
                pubsub.psubscribe("*")
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.05)
                    if msg is None:
                        continue
                    if msg["type"] == "psubscribe":
                        self.subscribed.set()
                    elif msg["type"] == "pmessage":
                        self.received.append((msg["channel"], msg["data"]))
            except (redis.RedisError, OSError):
                self.subscribed.clear()
                time.sleep(0.02)
            finally:
                pubsub.close()
                client.close()

    def messages(self) -> list[Pair]:
        return [(c, m) for c, m in list(self.received) if b"sentinel" not in c]


_barrier_ids = itertools.count()


def barrier(mongo: EmbeddedServer, *subscribers: Subscriber, timeout: float = 30) -> None:
    """Write to a sentinel collection and wait until every subscriber got it: all before has arrived."""
    marker = f"b{next(_barrier_ids)}-{uuid.uuid4().hex[:8]}"
    with mongo.client() as c:
        c.sentinel.ping.insert_one({"_id": marker})
    channel = f"sentinel.ping::{marker}".encode()
    for sub in subscribers:
        wait_for(lambda s=sub: any(ch == channel for ch, _ in list(s.received)), timeout=timeout)


class Publisher:
    """One `mongoferry publish-redis` process, its log file and its HTTP port."""

    _ids = itertools.count()

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, http: bool = True) -> None:
        self.port = free_port()
        self.args = [*args, "--http", f"127.0.0.1:{self.port}"] if http else list(args)
        self.env = env or {}
        self.log = tmp / f"publisher-{next(self._ids)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: bool = True) -> Publisher:
        env = child_env()
        env.update(self.env)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(publish_redis_args(*self.args), stdout=out, stderr=subprocess.STDOUT,
                                         env=env)
        if ready:
            wait_for(lambda: self._ready(offset), timeout=30)
        return self

    def _ready(self, offset: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"publish-redis exited with {self.proc.returncode}:\n{self.text()}")
        with self.log.open("rb") as f:
            f.seek(offset)
            return b"publishing to Redis" in f.read()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.get(f"http://127.0.0.1:{self.port}{path}")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as {"name{label=value,...}": value}."""
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path_factory.mktemp("publish-redis") / "mongo", extra_args=["--sync-on-commit"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Things to close at the end of a test, whatever happens (publishers, subscribers, servers)."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            thing.close() if hasattr(thing, "close") else thing.stop()


def subscriber(server: RedisServer, cleanup: list[Any], password: str | None = None) -> Subscriber:
    sub = Subscriber(server, password).start()
    cleanup.append(sub)
    return sub


def publisher(tmp: Path, cleanup: list[Any], *args: str, env: dict[str, str] | None = None,
              ready: bool = True) -> Publisher:
    p = Publisher(tmp, *args, env=env)
    cleanup.append(p)
    return p.start(ready=ready)


def msg(event: str, id_json: str, *fields: str) -> bytes:
    return ('{"e":"' + event + '","d":{"_id":' + id_json + '},"f":[' + ",".join(f'"{f}"' for f in fields)
            + "]}").encode()


def both(ns: str, suffix: str, message: bytes) -> list[Pair]:
    """The two publications of one write: collection channel, then the document channel."""
    return [(ns.encode(), message), (f"{ns}::{suffix}".encode(), message)]


def insert_ids(client: Any, ns: str, ids: Iterable[str]) -> list[Pair]:
    """Insert ``{_id: id}`` documents one by one; the publications they must give."""
    db, coll = ns.split(".", 1)
    expected: list[Pair] = []
    for doc_id in ids:
        client[db][coll].insert_one({"_id": doc_id})
        expected += both(ns, doc_id, msg("i", f'"{doc_id}"', "_id"))
    return expected


def by_channel(pairs: list[Pair]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for channel, message in pairs:
        out.setdefault(channel, []).append(message)
    return out


def assert_once_each(got: list[Pair], expected: list[Pair]) -> None:
    """Every expected pair exactly once, nothing else, each channel in order."""
    dupes = [p for p, n in Counter(got).items() if n > 1]
    assert not dupes, f"published more than once: {dupes[:5]}"
    assert by_channel(got) == by_channel(expected)


# --------------------------------------------------------------------------- format


def test_every_kind_of_write_is_published_byte_for_byte(mongo: EmbeddedServer, redis_server: RedisServer,
                                                        tmp_path: Path, cleanup: list[Any]) -> None:
    sub = subscriber(redis_server, cleanup)
    pub = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri, "--redis-url", redis_server.url)
    oid = ObjectId("5f2b8c3e9d1e4a6b7c8d9e0f")
    with mongo.client() as c:
        items = c.fmt.items
        items.insert_one({"_id": "s1", "a": 1, "sub": {"k": 1, "deep": {"z": 1}}, "arr": [1, 2, 3],
                          "objs": [{"v": 1}, {"v": 2}]})
        items.update_one({"_id": "s1"}, {"$set": {"sub.deep.z": 5, "b": 1}, "$unset": {"a": 1}})
        items.update_one({"_id": "s1"}, {"$push": {"arr": 4}})
        items.update_one({"_id": "s1"}, {"$inc": {"objs.1.v": 1}})
        items.update_one({"_id": "s1"}, {"$push": {"arr": {"$each": [25], "$position": 1}}})
        items.replace_one({"_id": "s1"}, {"w": 1, "z": 2})
        items.insert_one({"_id": oid, "x": 1})
        items.update_one({"_id": oid}, {"$set": {"x": 2}})
        items.insert_one({"_id": "ü<&>\u2028", "x": 1})
        items.insert_one({"_id": "-abc"})
        items.insert_one({"_id": "deadbeefdeadbeefdeadbeef"})
        for other in (7, 1.5, Binary(uuid.UUID(int=1).bytes, 4), {"compound": 1}):  # not publishable
            items.insert_one({"_id": other})
        items.delete_one({"_id": oid})
        items.delete_one({"_id": "s1"})
        with c.start_session() as session, session.start_transaction():
            c.fmt.items.insert_one({"_id": "t1", "n": 1}, session=session)
            c.fmt.other.insert_one({"_id": "t2"}, session=session)
            c.fmt.items.update_one({"_id": "t1"}, {"$set": {"n": 2}}, session=session)
            c.fmt.other.delete_one({"_id": "t2"}, session=session)
        txn_ts = c.local["oplog.rs"].find_one({"ns": "fmt.other", "op": "d"})["ts"]
    barrier(mongo, sub)
    hex_id = '{"$type":"oid","$value":"5f2b8c3e9d1e4a6b7c8d9e0f"}'
    expected = [
        *both("fmt.items", "s1", msg("i", '"s1"', "_id", "a", "sub", "arr", "objs")),
        *both("fmt.items", "s1", msg("u", '"s1"', "sub", "b", "a")),
        *both("fmt.items", "s1", msg("u", '"s1"', "arr")),
        *both("fmt.items", "s1", msg("u", '"s1"', "objs")),
        *both("fmt.items", "s1", msg("u", '"s1"', "arr")),
        *both("fmt.items", "s1", msg("u", '"s1"', "_id", "w", "z")),
        *both("fmt.items", "5f2b8c3e9d1e4a6b7c8d9e0f", msg("i", hex_id, "_id", "x")),
        *both("fmt.items", "5f2b8c3e9d1e4a6b7c8d9e0f", msg("u", hex_id, "x")),
        *both("fmt.items", "ü<&>\u2028", msg("i", '"ü\\u003c\\u0026\\u003e\\u2028"', "_id", "x")),
        *both("fmt.items", "-abc", msg("i", '"-abc"', "_id")),
        *both("fmt.items", "deadbeefdeadbeefdeadbeef", msg("i", '"deadbeefdeadbeefdeadbeef"', "_id")),
        *both("fmt.items", "5f2b8c3e9d1e4a6b7c8d9e0f", msg("r", hex_id)),
        *both("fmt.items", "s1", msg("r", '"s1"')),
        *both("fmt.items", "t1", msg("i", '"t1"', "_id", "n")),
        *both("fmt.other", "t2", msg("i", '"t2"', "_id")),
        *both("fmt.items", "t1", msg("u", '"t1"', "n")),
        *both("fmt.other", "t2", msg("r", '"t2"')),
    ]
    got = sub.messages()
    assert got == expected, "channels, bytes and order differ"

    # The four operations of the transaction share its timestamp and take indexes 0..3.
    with redis_server.client() as r:
        for index in range(4):
            key = dedupe_key(txn_ts, index)
            assert r.get(key) == b"1", key
            assert 140 <= r.ttl(key) <= 150
        assert not r.exists(dedupe_key(txn_ts, 4))
        wait_for(lambda: r.get("oplogtoredis::lastProcessedEntry.0") is not None, timeout=10)

    publications = len(expected) // 2 + 1  # + the sentinel
    # The counters move when the script call returns, a moment after the subscriber got the messages.
    wait_for(lambda: pub.metrics()['mongoferry_redis_processed_messages_total{status=sent}'] == publications,
             timeout=10)
    metrics = pub.metrics()
    assert metrics['mongoferry_redis_processed_messages_total{status=skipped}'] == 4
    assert metrics['mongoferry_redis_processed_messages_total{status=failed}'] == 0
    assert metrics['mongoferry_redis_unpublishable_events_total{reason=unsupported-id}'] == 4
    assert metrics['mongoferry_redis_dedupe_hits_total'] == 0
    assert metrics['mongoferry_redis_publish_latency_seconds_count'] == publications
    assert metrics['mongoferry_redis_catch_up_skipped_seconds'] == 0
    assert 0 <= metrics['mongoferry_redis_last_event_staleness_seconds'] < 30
    for name in ("mongoferry_redis_command_duration_seconds_count", "mongoferry_redis_events_received_total",
                 "mongoferry_redis_temporary_send_failures_total", "mongoferry_redis_queue_length{redis=0}",
                 "mongoferry_redis_last_received_staleness_seconds", "process_cpu_seconds_total"):
        assert name in metrics, name
    unsupported = [line for line in pub.lines() if line.get("problem") == "unsupported-id"]
    assert len(unsupported) == 4 and all(line["level"] == "error" for line in unsupported)
    assert "expected string or ObjectID, got int instead" in unsupported[0]["msg"]

    health = pub.get("/healthz")
    assert (health.status_code, health.text) == (200, '{"mongoOK":true,"redisOK":true}\n')
    assert health.headers["content-type"] == "application/json"
    assert pub.stop() == 0
    with redis_server.client() as r:  # a clean stop stores the position of the last publication
        stored = parse_resume_value(r.get("oplogtoredis::lastProcessedEntry.0"))
        assert stored > txn_ts
        assert r.get("oplogtoredis::resumeToken") is not None


def test_deep_fields_meteor_ids_and_oplogtoredis_variables(mongo: EmbeddedServer, redis_server: RedisServer,
                                                           tmp_path: Path, cleanup: list[Any]) -> None:
    sub = subscriber(redis_server, cleanup)
    http_port = free_port()
    env = {
        "OTR_MONGO_URL": mongo.uri,
        "OTR_REDIS_URL": redis_server.url,
        "OTR_HTTP_SERVER_ADDR": f"127.0.0.1:{http_port}",
        "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES": "true",
        "OTR_REDIS_METADATA_PREFIX": "otr-test::",
        "OTR_REDIS_DEDUPE_EXPIRATION": "1m",
        "OTR_TIMESTAMP_FLUSH_INTERVAL": "200ms",
    }
    pub = Publisher(tmp_path, "--meteor-ids", env=env, http=False)
    cleanup.append(pub)
    pub.port = http_port
    pub.start()
    oid = ObjectId("5f2b8c3e9d1e4a6b7c8d9e0f")
    with mongo.client() as c:
        deep = c.deep.docs
        deep.insert_one({"_id": "n1", "sub": {"k": 1, "deep": {"z": 1}}, "arr": [1, 2, 3],
                         "objs": [{"v": 1}, {"v": 2}]})
        deep.update_one({"_id": "n1"}, {"$set": {"sub.deep.z": 5}, "$unset": {"sub.k": 1}})
        deep.update_one({"_id": "n1"}, {"$push": {"arr": 4}})
        deep.update_one({"_id": "n1"}, {"$inc": {"objs.1.v": 1}})
        deep.update_one({"_id": "n1", "arr": 2}, {"$set": {"arr.$": 20}})
        deep.update_one({"_id": "n1"}, {"$set": {"objs.$[].v": 0}})
        deep.update_one({"_id": "n1"}, {"$push": {"arr": {"$each": [25], "$position": 1}}})
        deep.update_one({"_id": "n1"}, {"$set": {"sub.new": {"a": {"b": 1}, "e": {}, "l": [{"x": 1}]}}})
        deep.insert_one({"_id": 7})
        deep.insert_one({"_id": 2.5})
        deep.insert_one({"_id": "-abc"})
        deep.insert_one({"_id": "deadbeefdeadbeefdeadbeef"})
        deep.insert_one({"_id": oid})
        deep.delete_one({"_id": 7})
        deep.insert_one({"_id": {"not": "meteor"}})  # Meteor cannot name it either
    barrier(mongo, sub)
    expected = [
        *both("deep.docs", "n1", msg("i", '"n1"', "_id", "sub", "arr", "objs")),
        *both("deep.docs", "n1", msg("u", '"n1"', "sub.deep.z", "sub.k")),
        *both("deep.docs", "n1", msg("u", '"n1"', "arr.3")),
        *both("deep.docs", "n1", msg("u", '"n1"', "objs.1.v")),
        *both("deep.docs", "n1", msg("u", '"n1"', "arr.1")),
        *both("deep.docs", "n1", msg("u", '"n1"', "objs.0.v", "objs.1.v")),
        *both("deep.docs", "n1", msg("u", '"n1"', "arr")),
        *both("deep.docs", "n1", msg("u", '"n1"', "sub.new.a.b", "sub.new.e", "sub.new.l")),
        *both("deep.docs", "~7", msg("i", "7", "_id")),
        *both("deep.docs", "~2.5", msg("i", "2.5", "_id")),
        *both("deep.docs", "--abc", msg("i", '"-abc"', "_id")),
        *both("deep.docs", "-deadbeefdeadbeefdeadbeef", msg("i", '"deadbeefdeadbeefdeadbeef"', "_id")),
        *both("deep.docs", str(oid), msg("i", '{"$type":"oid","$value":"5f2b8c3e9d1e4a6b7c8d9e0f"}', "_id")),
        *both("deep.docs", "~7", msg("r", "7")),
    ]
    assert sub.messages() == expected
    with redis_server.client() as r:
        keys = r.keys("otr-test::processed::*")
        assert len(keys) == len(expected) // 2 + 1
        assert all(50 <= r.ttl(k) <= 60 for k in keys)
        wait_for(lambda: r.get("otr-test::lastProcessedEntry.0") is not None, timeout=5)
        assert not r.keys("oplogtoredis::*")
    assert pub.metrics()['mongoferry_redis_unpublishable_events_total{reason=unsupported-id}'] == 1


def test_configuration_layers_and_oplogtoredis_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mongoferry.core.errors import UsageError
    from mongoferry.infra.config import load_settings
    from mongoferry.jobs.publish_redis_settings import OTR_VARIABLES, PublishRedisSettings, parse_go_duration

    for name in list(os.environ):
        if name.startswith(("MONGOFERRY_", "OTR_")):
            monkeypatch.delenv(name)
    defaults = load_settings(PublishRedisSettings, {})
    assert (defaults.http, defaults.max_catch_up_s, defaults.dedupe_ttl_s, defaults.metadata_prefix) == (
        "127.0.0.1:9000", 120.0, 150, "oplogtoredis::")
    assert (defaults.deep_fields, defaults.meteor_ids, defaults.capture, defaults.flush_interval_s) == (
        False, False, "change-stream", 1.0)
    assert defaults.log_format == "json" and defaults.quiet is False

    config = tmp_path / "publish.yaml"
    config.write_text("max_catch_up_s: 50\nsrc: mongodb://file\nredis_url: redis://file:1,redis://file:2\n"
                      "dedupe_ttl_s: 2m\n")
    s = load_settings(PublishRedisSettings, {}, config)
    assert (s.max_catch_up_s, s.mongo_url, s.redis_url, s.dedupe_ttl_s) == (
        50, "mongodb://file", ["redis://file:1", "redis://file:2"], 120)

    monkeypatch.setenv("OTR_MAX_CATCH_UP", "30s")
    monkeypatch.setenv("OTR_MONGO_URL", "mongodb://otr")
    monkeypatch.setenv("OTR_DEDUPE_EXPIRATION", "90s")
    monkeypatch.setenv("OTR_REDIS_DEDUPE_EXPIRATION", "2m30.9s")  # the real name wins; whole seconds
    monkeypatch.setenv("OTR_TIMESTAMP_FLUSH_INTERVAL", "500ms")
    monkeypatch.setenv("OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES", "T")
    monkeypatch.setenv("OTR_LOG_DEBUG", "1")
    monkeypatch.setenv("OTR_HTTP_SERVER_ADDR", ":9100")
    s = load_settings(PublishRedisSettings, {}, config)
    assert (s.max_catch_up_s, s.mongo_url, s.dedupe_ttl_s, s.flush_interval_s) == (30, "mongodb://otr", 150, 0.5)
    assert (s.deep_fields, s.log_level, s.http, s.redis_url) == (
        True, "debug", "0.0.0.0:9100", ["redis://file:1", "redis://file:2"])

    monkeypatch.setenv("MONGOFERRY_MAX_CATCH_UP_S", "40")
    monkeypatch.setenv("MONGOFERRY_SRC", "mongodb://mongoferry")
    monkeypatch.setenv("MONGOFERRY_LOG_LEVEL", "warning")
    s = load_settings(PublishRedisSettings, {}, config)
    assert (s.max_catch_up_s, s.mongo_url, s.log_level) == (40, "mongodb://mongoferry", "warning")

    s = load_settings(PublishRedisSettings, {"max_catch_up_s": "1m", "mongo_url": "mongodb://flag"}, config)
    assert (s.max_catch_up_s, s.mongo_url) == (60, "mongodb://flag")

    monkeypatch.setenv("OTR_LOG_QUIET", "yes")
    assert load_settings(PublishRedisSettings, {}).quiet is True

    assert [parse_go_duration(t) for t in ("0", "1s", "500ms", "2m", "1h30m", "1.5s", "300us", "-2s")] == [
        0, 1, 0.5, 120, 5400, 1.5, 0.0003, -2]
    for bad in ("", "2", "2 minutes", "1d", ".s", "s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    monkeypatch.setenv("OTR_MAX_CATCH_UP", "2 minutes")
    with pytest.raises(UsageError, match="OTR_MAX_CATCH_UP='2 minutes' is not a Go duration"):
        load_settings(PublishRedisSettings, {})
    monkeypatch.setenv("OTR_MAX_CATCH_UP", "2m")
    monkeypatch.setenv("OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES", "yes")
    with pytest.raises(UsageError, match="not a boolean"):
        load_settings(PublishRedisSettings, {})
    assert "OTR_REDIS_URL" in OTR_VARIABLES and "OTR_LOG_QUIET" in OTR_VARIABLES


# --------------------------------------------------------------------------- exactly once


def test_two_instances_publish_each_message_once(mongo: EmbeddedServer, tmp_path: Path,
                                                 cleanup: list[Any]) -> None:
    server = RedisServer(tmp_path / "redis-auth").start("--requirepass", PASSWORD)
    cleanup.append(server)
    sub = subscriber(server, cleanup, password=PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}"
    args = ("--mongo-url", mongo.uri, "--redis-url", url, "--batch-size", "1")
    a = publisher(tmp_path, cleanup, *args)
    b = publisher(tmp_path, cleanup, *args)
    expected: list[Pair] = []
    with mongo.client() as c:
        for i in range(40):
            c.ha.docs.insert_one({"_id": f"d{i}", "i": i})
            expected += both("ha.docs", f"d{i}", msg("i", f'"d{i}"', "_id", "i"))
        c.ha.docs.update_many({"i": {"$lt": 10}}, {"$set": {"j": 1}})
        expected += [p for i in range(10) for p in both("ha.docs", f"d{i}", msg("u", f'"d{i}"', "j"))]
        with c.start_session() as session, session.start_transaction():
            c.ha.docs.delete_one({"_id": "d0"}, session=session)
            c.ha.docs.delete_one({"_id": "d1"}, session=session)
        expected += both("ha.docs", "d0", msg("r", '"d0"')) + both("ha.docs", "d1", msg("r", '"d1"'))
    barrier(mongo, sub)
    publications = len(expected) // 2 + 1

    def done(p: Publisher) -> bool:
        m = p.metrics()
        return m['mongoferry_redis_processed_messages_total{status=sent}'] + m[
            'mongoferry_redis_processed_messages_total{status=skipped}'] == publications

    wait_for(lambda: done(a) and done(b), timeout=30)
    time.sleep(0.3)  # anything published twice would have arrived by now
    assert_once_each(sub.messages(), expected)
    ma, mb = a.metrics(), b.metrics()
    sent = ma['mongoferry_redis_processed_messages_total{status=sent}'] + mb[
        'mongoferry_redis_processed_messages_total{status=sent}']
    hits = ma['mongoferry_redis_dedupe_hits_total'] + mb['mongoferry_redis_dedupe_hits_total']
    assert (sent, hits) == (publications, publications)
    assert a.stop() == 0 and b.stop() == 0
    for p in (a, b):
        assert PASSWORD not in p.text() and "s3cret" not in p.text()
        assert any("redis://:***@127.0.0.1" in str(line.get("redis")) for line in p.lines())


def test_sigkill_then_restart_publishes_everything_once(mongo: EmbeddedServer, redis_server: RedisServer,
                                                        tmp_path: Path, cleanup: list[Any]) -> None:
    sub = subscriber(redis_server, cleanup)
    p = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri, "--redis-url", redis_server.url,
                  "--flush-interval", "3s")
    expected: list[Pair] = []

    def write(c: Any, first: int, last: int, txn: bool = False) -> None:
        expected.extend(insert_ids(c, "crash.docs", (f"k{i}" for i in range(first, last))))
        if txn:
            with c.start_session() as session, session.start_transaction():
                for i in range(first, last):
                    c.crash.docs.update_one({"_id": f"k{i}"}, {"$set": {"t": 1}}, session=session)
                    expected.extend(both("crash.docs", f"k{i}", msg("u", f'"k{i}"', "t")))

    with mongo.client() as c, redis_server.client() as r:
        write(c, 0, 10)
        barrier(mongo, sub)
        wait_for(lambda: r.get("oplogtoredis::lastProcessedEntry.0") is not None, timeout=10, interval=0.01)
        write(c, 10, 20, txn=True)  # published; its position is normally not stored yet (flushes are 3 s apart)
        barrier(mongo, sub)
        p.kill()
        stored = parse_resume_value(r.get("oplogtoredis::lastProcessedEntry.0"))
        published_after = c.local["oplog.rs"].count_documents(
            {"ns": "crash.docs", "ts": {"$gt": stored}, "o._id": {"$in": [f"k{i}" for i in range(10, 20)]}})
        published_after += c.local["oplog.rs"].count_documents(
            {"ns": "crash.docs", "ts": {"$gt": stored}, "o2._id": {"$in": [f"k{i}" for i in range(10, 20)]},
             "op": "u"})
        write(c, 20, 30, txn=True)  # while nothing runs
    p.start()
    barrier(mongo, sub)
    time.sleep(0.3)
    assert_once_each(sub.messages(), expected)
    # What was published after the stored position is sent again, and the dedupe keys absorb it.
    wait_for(lambda: p.metrics()['mongoferry_redis_dedupe_hits_total'] >= published_after, timeout=10)
    assert p.metrics()['mongoferry_redis_catch_up_skipped_seconds'] == 0
    assert p.stop() == 0


def test_redis_down_then_back_loses_nothing(mongo: EmbeddedServer, redis_server: RedisServer, tmp_path: Path,
                                            cleanup: list[Any]) -> None:
    sub = subscriber(redis_server, cleanup)
    p = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri, "--redis-url", redis_server.url)
    expected: list[Pair] = []
    with mongo.client() as c:
        expected += insert_ids(c, "outage.docs", (f"a{i}" for i in range(5)))
        barrier(mongo, sub)
        redis_server.stop()
        expected += insert_ids(c, "outage.docs", (f"b{i}" for i in range(5)))
        with c.start_session() as session, session.start_transaction():
            c.outage.docs.delete_one({"_id": "a0"}, session=session)
            c.outage.docs.update_one({"_id": "a1"}, {"$set": {"x": 1}}, session=session)
        expected += both("outage.docs", "a0", msg("r", '"a0"')) + both("outage.docs", "a1", msg("u", '"a1"', "x"))
    health = p.get("/healthz")
    assert (health.status_code, health.text) == (500, '{"mongoOK":true,"redisOK":false}\n')
    wait_for(lambda: p.metrics()['mongoferry_redis_temporary_send_failures_total'] > 0, timeout=10)
    time.sleep(1.5)

    # Back, but refusing commands until the subscriber is in again (it would miss messages otherwise).
    redis_server.start("--requirepass", "gate")
    sub.password = "gate"
    with redis_server.client("gate") as r:
        wait_for(lambda: r.execute_command("PUBSUB", "NUMPAT") == 1, timeout=10)
        r.config_set("requirepass", "")
    wait_for(lambda: len(sub.messages()) >= len(expected), timeout=30)
    barrier(mongo, sub)
    assert_once_each(sub.messages(), expected)
    metrics = p.metrics()
    assert metrics['mongoferry_redis_processed_messages_total{status=failed}'] == 0
    assert (p.get("/healthz").status_code) == 200
    assert any("cannot publish to Redis, retrying" in line["msg"] for line in p.lines())
    assert any("Redis is back" in line["msg"] for line in p.lines())
    assert p.stop() == 0


def test_a_redis_that_was_behind_at_shutdown_gets_what_it_missed_after_a_restart(
        mongo: EmbeddedServer, tmp_path: Path, cleanup: list[Any]) -> None:
    """Two Redis; the second is down while writes happen and while publish-redis stops, so its stored
    position is behind. The restart resumes from the lowest stored position: the second gets what it
    missed, the first drops the replay by its dedupe keys (each message once on each)."""
    first = RedisServer(tmp_path / "r1").start()
    second = RedisServer(tmp_path / "r2")
    second.start("--appendonly", "yes")  # its stored position survives its own restart
    cleanup.extend([first, second])
    sub1, sub2 = subscriber(first, cleanup), subscriber(second, cleanup)
    args = ("--mongo-url", mongo.uri, "--redis-url", f"{first.url},{second.url}", "--flush-interval", "0.1s")
    p = publisher(tmp_path, cleanup, *args)
    expected: list[Pair] = []
    with mongo.client() as c:
        expected += insert_ids(c, "behind.docs", (f"a{i}" for i in range(5)))
        barrier(mongo, sub1, sub2)
        time.sleep(0.5)  # both positions stored
        second.stop()
        missed = insert_ids(c, "behind.docs", (f"b{i}" for i in range(5)))
        expected += missed
    wait_for(lambda: len(sub1.messages()) >= len(expected), timeout=30)
    assert p.stop() == 0  # the second Redis is still down: its position stays where it was
    second.start("--appendonly", "yes")
    with second.client() as r:
        wait_for(lambda: r.execute_command("PUBSUB", "NUMPAT") == 1, timeout=10)
        assert r.get("oplogtoredis::lastProcessedEntry.0") is not None
    p2 = publisher(tmp_path, cleanup, *args)
    barrier(mongo, sub1, sub2)
    got2 = [m for m in sub2.messages() if b"behind.docs" in m[0]]
    assert_once_each(got2, expected)
    assert_once_each([m for m in sub1.messages() if b"behind.docs" in m[0]], expected)
    assert p2.stop() == 0


def test_mongodb_restart_is_resumed(tmp_path: Path, redis_server: RedisServer, cleanup: list[Any]) -> None:
    mongo = EmbeddedServer(tmp_path / "mongo-restart", extra_args=["--sync-on-commit"]).start()
    cleanup.append(mongo)
    sub = subscriber(redis_server, cleanup)
    # A short connect timeout: the outage outlasts the driver's own single resume attempt.
    p = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri, "--redis-url", redis_server.url,
                  "--connect-timeout", "1")
    expected: list[Pair] = []
    with mongo.client() as c:
        expected += insert_ids(c, "restart.docs", (f"a{i}" for i in range(5)))
    barrier(mongo, sub)
    mongo.kill()
    health = p.get("/healthz")
    assert (health.status_code, health.text) == (500, '{"mongoOK":false,"redisOK":true}\n')
    wait_for(lambda: any("the source is not answering" in line["msg"] for line in p.lines()), timeout=15)
    mongo.start()
    with mongo.client() as c:
        expected += insert_ids(c, "restart.docs", (f"b{i}" for i in range(5)))
    barrier(mongo, sub)
    assert_once_each(sub.messages(), expected)
    assert p.get("/healthz").status_code == 200
    assert any("the source answers again" in line["msg"] for line in p.lines())
    assert p.stop() == 0


def test_a_stored_position_older_than_the_max_catch_up_starts_at_the_end(
        mongo: EmbeddedServer, redis_server: RedisServer, tmp_path: Path, cleanup: list[Any]) -> None:
    sub = subscriber(redis_server, cleanup)
    p = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri, "--redis-url", redis_server.url,
                  "--max-catch-up", "2", "--flush-interval", "0.2")
    with mongo.client() as c:
        c.late.docs.insert_one({"_id": "before"})
        barrier(mongo, sub)
        assert p.stop() == 0
        c.late.docs.insert_one({"_id": "skipped"})
        time.sleep(3)
        p.start()
        c.late.docs.insert_one({"_id": "after"})
    barrier(mongo, sub)
    assert sub.messages() == [*both("late.docs", "before", msg("i", '"before"', "_id")),
                              *both("late.docs", "after", msg("i", '"after"', "_id"))]
    skips = [line for line in p.lines() if "skipping" in line["msg"]]
    assert len(skips) == 1 and skips[0]["level"] == "warning"
    assert 3 <= skips[0]["skippedSeconds"] < 30
    assert "more than the max catch-up of 2s" in skips[0]["msg"]
    assert p.metrics()['mongoferry_redis_catch_up_skipped_seconds'] >= 3
    assert p.stop() == 0


# --------------------------------------------------------------------------- oplog, several Redis


def test_oplog_capture_and_every_redis_gets_every_message(mongo: EmbeddedServer, redis_server: RedisServer,
                                                          tmp_path: Path, cleanup: list[Any]) -> None:
    second = RedisServer(tmp_path / "redis-2").start()
    cleanup.append(second)
    subs = [subscriber(redis_server, cleanup), subscriber(second, cleanup)]
    p = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri, "--capture", "oplog",
                  "--redis-url", f"{redis_server.url},{second.url}")
    with mongo.client() as c:
        c.op.docs.insert_one({"_id": "o1", "a": 1})
        c.op.docs.delete_one({"_id": "o1"})
        with c.start_session() as session, session.start_transaction():
            c.op.docs.insert_one({"_id": "o2"}, session=session)
            c.op.more.insert_one({"_id": "o3"}, session=session)
            c.op.docs.delete_one({"_id": "o2"}, session=session)
        txn_ts = c.local["oplog.rs"].find_one({"ns": "op.more"})["ts"]
    barrier(mongo, *subs)
    expected = [*both("op.docs", "o1", msg("i", '"o1"', "_id", "a")), *both("op.docs", "o1", msg("r", '"o1"')),
                *both("op.docs", "o2", msg("i", '"o2"', "_id")), *both("op.more", "o3", msg("i", '"o3"', "_id")),
                *both("op.docs", "o2", msg("r", '"o2"'))]
    for sub, server in zip(subs, (redis_server, second), strict=True):
        assert sub.messages() == expected
        with server.client() as r:
            assert [r.exists(dedupe_key(txn_ts, i)) for i in range(4)] == [1, 1, 1, 0]
    assert p.stop() == 0
    for server in (redis_server, second):
        with server.client() as r:
            assert parse_resume_value(r.get("oplogtoredis::lastProcessedEntry.0")) > txn_ts
            assert r.get("oplogtoredis::resumeToken") is None


def test_redis_sentinel_url(mongo: EmbeddedServer, tmp_path: Path, cleanup: list[Any]) -> None:
    master = RedisServer(tmp_path / "master").start("--requirepass", PASSWORD)
    cleanup.append(master)
    sentinel = RedisServer(tmp_path / "sentinel")
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel.port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {master.port} 1\n"
                    f"sentinel auth-pass main {PASSWORD}\n")
    sentinel.proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    cleanup.append(sentinel)

    def knows_master() -> bool:
        try:
            with sentinel.client() as s:
                return s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main") is not None
        except redis.RedisError:
            return False

    wait_for(knows_master, timeout=10)
    sub = subscriber(master, cleanup, password=PASSWORD)
    p = publisher(tmp_path, cleanup, "--mongo-url", mongo.uri,
                  "--redis-url", f"redis-sentinel://{PASSWORD}@127.0.0.1:{sentinel.port}?sentinelMasterId=main")
    with mongo.client() as c:
        c.sent.docs.insert_one({"_id": "via-watcher"})
    barrier(mongo, sub)
    assert sub.messages() == both("sent.docs", "via-watcher", msg("i", '"via-watcher"', "_id"))
    assert p.stop() == 0
    assert PASSWORD not in p.text()


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_never_shows_a_password(mongo: EmbeddedServer, redis_server: RedisServer,
                                                          tmp_path: Path, cleanup: list[Any]) -> None:
    closed = free_port()
    guarded = RedisServer(tmp_path / "redis-guarded").start("--requirepass", "another-one")
    cleanup.append(guarded)
    cases: list[tuple[list[str], dict[str, str], int, str]] = [
        (["--mongo-url", mongo.uri, "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:notaport"], {}, EXIT_USAGE,
         "is not a valid Redis URL"),
        (["--mongo-url", mongo.uri, "--redis-url", f"http://user:{PASSWORD}@127.0.0.1:6379"], {}, EXIT_USAGE,
         "unknown scheme 'http'"),
        (["--mongo-url", mongo.uri], {}, EXIT_USAGE, "--redis-url is required"),
        (["--redis-url", redis_server.url], {}, EXIT_USAGE, "--mongo-url is required"),
        (["--mongo-url", f"mongodb://admin:{PASSWORD}@127.0.0.1:{closed}/?directConnection=true",
          "--redis-url", redis_server.url, "--connect-timeout", "1"], {}, EXIT_CONNECT, "cannot reach"),
        (["--mongo-url", mongo.uri, "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{closed}/0"], {}, EXIT_CONNECT,
         "cannot reach Redis at redis://:***@127.0.0.1"),
        ([], {"OTR_MONGO_URL": mongo.uri, "OTR_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{guarded.port}"},
         EXIT_CONNECT, "authentication failed for Redis"),
        ([], {"OTR_MONGO_URL": mongo.uri, "OTR_REDIS_URL": redis_server.url, "OTR_MAX_CATCH_UP": "2 minutes"},
         EXIT_USAGE, "OTR_MAX_CATCH_UP='2 minutes' is not a Go duration"),
        (["--mongo-url", mongo.uri, "--redis-url", redis_server.url, "--http", "nowhere"], {}, EXIT_USAGE,
         "--http 'nowhere' is not HOST:PORT"),
        (["--mongo-url", mongo.uri, "--redis-url", redis_server.url, "--dedupe-ttl", "0"], {}, EXIT_USAGE,
         "dedupe_ttl_s"),
    ]
    for args, env, code, text in cases:
        r = run_publish_redis(*args, env=env)
        assert r.code == code, (args, env, r.text)
        lines = [line for line in r.err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and text in lines[0], (args, r.text)
        assert PASSWORD not in r.text and "s3cret" not in r.text, r.text
