"""Split and prune against ceilings measured in the same run.

split: (a) ceiling: a bare pymongo loop reading the source once in raw batches and insert_many'ing
each document into the part `userId mod 2` names; (b) `mongoferry split` into the same two
servers, timed from start until its state is RUNNING (every part copied and caught up), then
committed with the per-part verification, timed too.
prune: (c) ceiling: a bare loop of bulk `DeleteOne({_id})` on the documents of part 1;
(d) `mongoferry prune --rate 0` (no limit); (e) `--rate R`: the achieved rate against R;
(f) the latency a concurrent reader (`find_one` by a random `_id`) sees without prune running and
while (e) runs (p50 and p99).
Not a test: run it with `python bench/split.py`.
"""

from __future__ import annotations

import sys

# bench/copy.py would shadow the standard library's `copy` for everything imported below.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bson
import httpx
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, MongoClient

from mongoferry.dev.embedded import EmbeddedServer, child_env, free_port

RAW = bson.CodecOptions(document_class=RawBSONDocument)
Client = MongoClient[dict[str, Any]]


def seed(uri: str, n: int, db: str = "bench") -> None:
    c: Client
    with MongoClient(uri) as c:
        c.drop_database(db)
        batch = []
        for i in range(n):
            batch.append({"_id": i, "userId": i, "profile": {"name": "x" * 120, "tags": ["a", "b"]},
                          "history": [{"at": i + k, "what": "z" * 60} for k in range(5)]})
            if len(batch) == 2000:
                c[db].docs.insert_many(batch)
                batch = []
        if batch:
            c[db].docs.insert_many(batch)


def split_ceiling(src_uri: str, dst_uris: list[str]) -> float:
    src: Client = MongoClient(src_uri)
    dsts: list[Client] = [MongoClient(u) for u in dst_uris]
    for d in dsts:
        d.drop_database("ceiling")
    started = time.perf_counter()
    n = 0
    for raw in src.bench.docs.find_raw_batches(batch_size=1000):
        parts: list[list[RawBSONDocument]] = [[] for _ in dsts]
        for doc in bson.decode_all(raw, RAW):
            parts[doc["userId"] % len(dsts)].append(doc)
        for d, docs in zip(dsts, parts, strict=True):
            if docs:
                d.ceiling.docs.insert_many(docs, ordered=False)
        n += sum(len(p) for p in parts)
    elapsed = time.perf_counter() - started
    for d in dsts:
        d.drop_database("ceiling")
        d.close()
    src.close()
    return n / elapsed


def progress(port: int) -> dict[str, Any] | None:
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/api/v1/progress", timeout=5).json())
    except httpx.HTTPError:
        return None


def run_split(src_uri: str, dst_uris: list[str], n: int, root: Path) -> tuple[float, float]:
    port = free_port()
    args = [sys.executable, "-m", "mongoferry", "split", "--src", src_uri, *[a for u in dst_uris for a in ("--dst", u)],
            "--key", "userId", "--include", "bench", "--http", f"127.0.0.1:{port}", "--no-write-block",
            "--log-format", "json"]
    with (root / "split.log").open("ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        while (progress(port) or {}).get("state") != "RUNNING":
            assert proc.poll() is None, f"split exited early; see {root / 'split.log'}"
            time.sleep(0.2)
        copied = time.perf_counter() - started
        started = time.perf_counter()
        httpx.post(f"http://127.0.0.1:{port}/api/v1/commit", timeout=10)
        assert proc.wait(1800) == 0, f"split failed; see {root / 'split.log'}"
        committed = time.perf_counter() - started
    return n / copied, committed


def delete_ceiling(uri: str, n: int) -> float:
    c: Client
    with MongoClient(uri) as c:
        started = time.perf_counter()
        ids = [i for i in range(n) if i % 2 == 1]
        for k in range(0, len(ids), 250):
            c.bench.docs.bulk_write([DeleteOne({"_id": i}) for i in ids[k:k + 250]], ordered=False)
        return len(ids) / (time.perf_counter() - started)


class Reader(threading.Thread):
    """A client reading one document at a time by `_id`, recording each latency."""

    def __init__(self, uri: str, n: int) -> None:
        super().__init__(daemon=True)
        self.uri, self.n = uri, n
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        rng = random.Random(5)
        c: Client
        with MongoClient(self.uri) as c:
            while not self.stop.is_set():
                started = time.perf_counter()
                c.bench.docs.find_one({"_id": rng.randrange(self.n)})
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.01)


def percentiles(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=100)
    return f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms ({len(xs)} reads)"


def run_prune(uri: str, rate: float) -> tuple[float, int]:
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mongoferry", "prune", "--uri", uri, "--key", "userId", "--parts", "2",
                        "--keep", "0", "--include", "bench", "--rate", str(rate), "--execute", "--http", "off",
                        "--job", f"bench{rate:g}", "--log-format", "json"],
                       capture_output=True, text=True, env=child_env(), check=True)
    elapsed = time.perf_counter() - started
    deleted = int(r.stdout.split("deleted ", 1)[1].split(" ", 1)[0])
    return deleted / elapsed, deleted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=60_000)
    ap.add_argument("--prune-docs", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=500.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mongoferry-bench-split-"))
    servers = [EmbeddedServer(root / name).start() for name in ("src", "dst0", "dst1")]
    src, d0, d1 = servers
    try:
        print(f"{os.cpu_count()} cores; Python {platform.python_version()}; {args.docs:,} docs of ~0.6 KB")
        seed(src.uri, args.docs)
        ceil = split_ceiling(src.uri, [d0.uri, d1.uri])
        rate, commit_s = run_split(src.uri, [d0.uri, d1.uri], args.docs, root)
        print(f"{'run':<52}{'docs/s':>10}{'ratio':>8}")
        print(f"{'(a) split ceiling: one read, insert_many per part':<52}{ceil:>10,.0f}{1.0:>8.2f}")
        print(f"{'(b) mongoferry split, start to RUNNING':<52}{rate:>10,.0f}{rate / ceil:>8.2f}"
              f"   commit (drain, counts, verify): {commit_s:.1f}s")

        seed(d0.uri, args.prune_docs)
        dceil = delete_ceiling(d0.uri, args.prune_docs)
        seed(d0.uri, args.prune_docs)
        unlimited, _ = run_prune(d0.uri, 0)
        print(f"{'(c) delete ceiling: bulk DeleteOne by _id, 250 a bulk':<52}{dceil:>10,.0f}{1.0:>8.2f}")
        print(f"{'(d) mongoferry prune --rate 0':<52}{unlimited:>10,.0f}{unlimited / dceil:>8.2f}")

        seed(d0.uri, args.prune_docs)
        idle = Reader(d0.uri, args.prune_docs)
        idle.start()
        time.sleep(10)
        idle.stop.set()
        idle.join()
        busy = Reader(d0.uri, args.prune_docs)
        busy.start()
        achieved, deleted = run_prune(d0.uri, args.rate)
        busy.stop.set()
        busy.join()
        print(f"(e) mongoferry prune --rate {args.rate:g}: {achieved:,.0f} docs/s achieved "
              f"({achieved / args.rate:.2f} of the requested rate, {deleted:,} deleted; the whole command, "
              "process start and the final pass included)")
        print(f"(f) reader latency without prune: {percentiles(idle.latencies)}")
        print(f"    reader latency during (e):    {percentiles(busy.latencies)}")
        print(f"date {dt.date.today()}")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
