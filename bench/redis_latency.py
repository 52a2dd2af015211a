"""publish-redis latency and throughput, measured end to end against real servers.

Starts a SecantusDB server, a redis-server and `mongoferry publish-redis`, then:

(a) fire-and-forget: sequential insert_one calls, nothing waited for (the write's own cost);
(b) write then wait: sequential insert_one calls, each followed by waiting until a PSUBSCRIBE
    subscriber has received both of its messages (collection channel, then document
    channel); the difference to (a) is what waiting for Redis costs per write;
(c) sustained: insert_many of many small documents as fast as MongoDB takes them, then the
    messages/s the subscriber receives from the first write until the last message.

Prints median and p99 per row and a throughput table. Not a test: run it with
`python bench/redis_latency.py` (needs redis-server on the PATH).
"""

from __future__ import annotations

import sys

# bench/copy.py would shadow the standard library's `copy` (imported by redis and bson):
# this folder must not be on the path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from mongoferry.dev.embedded import EmbeddedServer, child_env, free_port


def publish_redis_cmd(*args: str) -> list[str]:
    from mongoferry.cli.main import main

    if "publish-redis" in main.commands:
        return [sys.executable, "-m", "mongoferry", "publish-redis", *args]
    return [sys.executable, "-m", "mongoferry.jobs.publish_redis", *args]


class Receiver:
    """PSUBSCRIBE * in a thread; wakes waiters on every message."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port)
        self.pubsub = self.client.pubsub()
        self.cond = threading.Condition()
        self.count = 0
        self.last_channel: bytes = b""
        self.seen: set[bytes] = set()
        self.last_at = 0.0
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Receiver:
        self.pubsub.psubscribe("*")
        self.thread.start()
        assert self.subscribed.wait(10)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.pubsub.get_message(timeout=0.05)
            if m is None:
                continue
            if m["type"] == "psubscribe":
                self.subscribed.set()
            elif m["type"] == "pmessage":
                with self.cond:
                    self.count += 1
                    self.seen.add(m["channel"])
                    self.last_at = time.perf_counter()
                    self.cond.notify_all()

    def wait_channel(self, channel: bytes, timeout: float = 30) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: channel in self.seen, timeout):
                raise RuntimeError(f"no message on {channel!r} within {timeout}s")

    def wait_count(self, n: int, timeout: float = 300) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= n, timeout):
                raise RuntimeError(f"only {self.count} of {n} messages within {timeout}s")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.pubsub.close()
        self.client.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=500, help="sequential writes for (a) and (b)")
    ap.add_argument("--sustained", type=int, default=20_000, help="documents written for (c)")
    ap.add_argument("--batch-size", type=int, default=100, help="publish-redis --batch-size")
    ap.add_argument("--deep-fields", action="store_true", help="run publish-redis with --deep-fields")
    args = ap.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("redis-server is not on the PATH (apt-get install redis-server)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mf-redis-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        mongo = EmbeddedServer(tmp / "mongo").start()
        rport = free_port()
        rproc = subprocess.Popen([redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
        pub: subprocess.Popen[bytes] | None = None
        receiver: Receiver | None = None
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis(port=rport) as probe:
                        probe.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            log = tmp / "publish-redis.log"
            extra = ["--deep-fields"] if args.deep_fields else []
            with log.open("wb") as out:
                pub = subprocess.Popen(publish_redis_cmd("--mongo-url", mongo.uri,
                                                         "--redis-url", f"redis://127.0.0.1:{rport}",
                                                         "--http", "off", "--batch-size", str(args.batch_size),
                                                         *extra),
                                       stdout=out, stderr=subprocess.STDOUT, env=child_env())
            deadline = time.monotonic() + 30
            while b"publishing to Redis" not in log.read_bytes():
                if pub.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"publish-redis did not start:\n{log.read_text()}")
                time.sleep(0.05)
            receiver = Receiver(rport).start()
            results = run(mongo, receiver, args)
        finally:
            if receiver is not None:
                receiver.close()
            if pub is not None:
                pub.send_signal(signal.SIGTERM)
                pub.wait(30)
            rproc.terminate()
            rproc.wait(10)
            mongo.stop()
    report(results, args)
    return 0


def run(mongo: EmbeddedServer, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        coll = client.bench.latency
        for i in range(50):  # warm up connections, caches and the script
            coll.insert_one({"_id": f"warm{i}", "v": i})
            receiver.wait_channel(f"bench.latency::warm{i}".encode())

        forget: list[float] = []
        for i in range(args.samples):
            t0 = time.perf_counter()
            coll.insert_one({"_id": f"f{i}", "v": i})
            forget.append(time.perf_counter() - t0)
        receiver.wait_channel(f"bench.latency::f{args.samples - 1}".encode())

        waited: list[float] = []
        delivery: list[float] = []
        for i in range(args.samples):
            t0 = time.perf_counter()
            coll.insert_one({"_id": f"w{i}", "v": i})
            t1 = time.perf_counter()
            receiver.wait_channel(f"bench.latency::w{i}".encode())
            t2 = time.perf_counter()
            waited.append(t2 - t0)
            delivery.append(t2 - t1)

        n = args.sustained
        docs = client.bench.sustained
        base = receiver.count
        t0 = time.perf_counter()
        for start in range(0, n, 500):
            docs.insert_many([{"_id": f"s{i}", "v": i} for i in range(start, min(n, start + 500))], ordered=False)
        write_s = time.perf_counter() - t0
        receiver.wait_count(base + 2 * n)
        total_s = receiver.last_at - t0
    finally:
        client.close()
    return {"forget": forget, "waited": waited, "delivery": delivery, "n": n, "write_s": write_s,
            "total_s": total_s}


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    ms = 1000.0
    print(f"publish-redis bench: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"batch size {args.batch_size}{', deep fields' if args.deep_fields else ''}, {dt.date.today()}")
    print()
    print(f"{'sequential writes (' + str(args.samples) + ' each)':<46}{'median ms':>10}{'p99 ms':>10}")
    rows = [("(a) insert_one, fire-and-forget", r["forget"]),
            ("(b) insert_one + wait for both messages", r["waited"]),
            ("    of which: write acked -> last message", r["delivery"])]
    for name, values in rows:
        print(f"{name:<46}{statistics.median(values) * ms:>10.2f}{pct(values, 0.99) * ms:>10.2f}")
    overhead = statistics.median(r["waited"]) - statistics.median(r["forget"])
    print(f"{'    waiting overhead (b) - (a), median':<46}{overhead * ms:>10.2f}")
    print()
    n = r["n"]
    print(f"{'sustained (' + format(n, ',') + ' inserts, insert_many)':<46}{'per s':>10}{'seconds':>10}")
    print(f"{'MongoDB writes (fire-and-forget)':<46}{n / r['write_s']:>10,.0f}{r['write_s']:>10.2f}")
    print(f"{'messages received (2 per write)':<46}{2 * n / r['total_s']:>10,.0f}{r['total_s']:>10.2f}")
    print(f"{'publications (writes) published':<46}{n / r['total_s']:>10,.0f}{'':>10}")


if __name__ == "__main__":
    sys.exit(main())
