"""Change-apply throughput against the destination's own ceiling, and lag under load.

(a) ceiling: the workload's operations written straight to the destination with
    bulk_write (ordered, batches of 1000), in this run;
(b) mongoferry: the same operations performed on the source, then captured from
    its change stream and applied to the destination (events/s from start to idle);
(c) lag p50/p99: a writer at half the ceiling for --seconds while the replay runs;
    lag = when an event was applied minus when the source wrote it;
(d) as (b) with `--filter` on a field every update changes (`n`: each insert, replace and update
    is read back from the source with the filter), and (e) on a field no update touches (`user`:
    only inserts and replaces are read back). The destination holds the matching half.
Not a test: `python bench/apply.py`.
"""

from __future__ import annotations

import sys

# bench/copy.py would shadow the standard library's `copy`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import datetime as dt
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bson import json_util
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne

from mongoferry.core.events import Position
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.dev.embedded import EmbeddedServer
from mongoferry.pipeline.loop import Pipeline
from mongoferry.sinks.mongo_apply import Applier
from mongoferry.source import capture as cap
from mongoferry.state.meta import MetaStore
from mongoferry.state.status import JobStatus

Client = MongoClient[dict[str, Any]]


def doc(i: int) -> dict[str, Any]:
    return {"_id": i, "user": f"u{i % 500}", "n": i, "tags": ["a", "b"], "profile": {"name": "x" * 100, "k": i}}


def workload(n_ops: int, n_docs: int, seed: int = 3) -> list[Any]:
    """Mixed operations on existing and new documents: 30% insert, 40% update, 10% replace, 20% delete."""
    rng = random.Random(seed)
    ops: list[Any] = []
    next_id = n_docs
    live = list(range(n_docs))
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.3 or len(live) < 10:
            ops.append(InsertOne(doc(next_id)))
            live.append(next_id)
            next_id += 1
        elif r < 0.7:
            k = rng.choice(live)
            ops.append(UpdateOne({"_id": k}, {"$inc": {"n": 1}, "$set": {"profile.k": -k}, "$push": {"tags": "c"}}))
        elif r < 0.8:
            k = rng.choice(live)
            ops.append(ReplaceOne({"_id": k}, {"replaced": True, "n": k}))
        else:
            k = live.pop(rng.randrange(len(live)))
            ops.append(DeleteOne({"_id": k}))
    return ops


def seed(client: Client, coll: str, n: int) -> None:
    client.bench[coll].drop()
    for start in range(0, n, 2000):
        client.bench[coll].insert_many([doc(i) for i in range(start, min(n, start + 2000))])


def ceiling(dst: Client, ops: list[Any], n_docs: int) -> float:
    seed(dst, "ceiling", n_docs)
    started = time.perf_counter()
    for i in range(0, len(ops), 1000):
        dst.bench.ceiling.bulk_write(ops[i:i + 1000], ordered=True)
    rate = len(ops) / (time.perf_counter() - started)
    dst.bench.ceiling.drop()
    return rate


def replayer(src: Client, dst: Client, start: Position, status: JobStatus,
             stop: threading.Event, filters: list[str] | None = None) -> tuple[Pipeline, Applier]:
    applier = Applier(src, dst, NamespaceMap.build(include=["bench"], filters=filters or []))
    excluded = ["admin", "config", "local", "mongoferry_meta"]
    return Pipeline(lambda p: cap.ChangeStreamCapture(src, p, excluded), [applier], start, status, stop,
                    store=MetaStore(dst, "mongoferry_meta", "bench")), applier


def forget_positions(dst: Client) -> None:
    """Each run starts at its own position, never at one a previous run saved."""
    dst.drop_database("mongoferry_meta")


FILTERS = {"n": {"n": {"$mod": [2, 0]}}, "user": {"user": {"$in": [f"u{i}" for i in range(0, 500, 2)]}}}


def throughput(src: Client, dst: Client, ops: list[Any], n_docs: int, field: str | None = None) -> tuple[float, int]:
    seed(src, "docs", n_docs)
    seed(dst, "docs", n_docs)
    filters = []
    if field is not None:
        query = FILTERS[field]
        dst.bench.docs.delete_many({"$nor": [query]})
        filters = [f"bench.docs={json_util.dumps(query)}"]
    forget_positions(dst)
    start = Position(cap.current_time(src))
    for i in range(0, len(ops), 1000):  # one op per command, like an application
        for op in ops[i:i + 1000]:
            src.bench.docs.bulk_write([op])
    rep, applier = replayer(src, dst, start, JobStatus(), threading.Event(), filters)
    started = time.perf_counter()
    events = 0
    while True:
        batch = rep.step()
        events += batch.events
        if batch.idle:
            break
    rep.close()
    rate = events / (time.perf_counter() - started)
    if field is not None:  # the point of the run: exactly the matching documents
        want = {d["_id"] for d in src.bench.docs.find(FILTERS[field], {"_id": 1})}
        assert want == {d["_id"] for d in dst.bench.docs.find({}, {"_id": 1})}, "filtered apply diverged"
    return rate, applier.stats.lookups


def lag_under_load(src: Client, dst: Client, rate: float, seconds: float, n_docs: int) -> list[float]:
    seed(src, "docs", n_docs)
    seed(dst, "docs", n_docs)
    forget_positions(dst)
    start = Position(cap.current_time(src))
    stop = threading.Event()
    ops = workload(int(rate * seconds) + 10, n_docs, seed=9)

    def writer() -> None:
        t0 = time.perf_counter()
        for i, op in enumerate(ops):
            if stop.is_set() or time.perf_counter() - t0 > seconds:
                break
            src.bench.docs.bulk_write([op])
            delay = t0 + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    w = threading.Thread(target=writer)
    rep, _ = replayer(src, dst, start, JobStatus(), threading.Event())
    lags: list[float] = []
    w.start()
    while w.is_alive() or not lags:
        batch = rep.step()
        now = dt.datetime.now(dt.UTC)
        for unit in batch.units:
            for e in unit:
                if isinstance(e.wall, dt.datetime):
                    lags.append((now - e.wall.replace(tzinfo=dt.UTC)).total_seconds())
        if not w.is_alive() and batch.idle:
            break
    stop.set()
    w.join()
    rep.close()
    return lags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=0.0, help="writer ops/s for (c); default half the ceiling")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mongoferry-bench-apply-"))
    src_server = EmbeddedServer(root / "src").start()
    dst_server = EmbeddedServer(root / "dst").start()
    src: Client = src_server.client()
    dst: Client = dst_server.client()
    try:
        ops = workload(args.ops, args.docs)
        ceil = ceiling(dst, ops, args.docs)
        ours, lookups = throughput(src, dst, ops, args.docs)
        by_n, by_n_lookups = throughput(src, dst, ops, args.docs, "n")
        by_user, by_user_lookups = throughput(src, dst, ops, args.docs, "user")
        rate = args.rate or ceil / 2
        lags = sorted(lag_under_load(src, dst, rate, args.seconds, args.docs))
        p50 = statistics.median(lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(f"workload: {args.ops:,} ops (30% insert, 40% update, 10% replace, 20% delete) on {args.docs:,} docs")
        print(f"{'run':<44}{'ops/s':>10}{'ratio':>8}")
        print(f"{'(a) ceiling: bulk_write straight to dst':<44}{ceil:>10,.0f}{1.0:>8.2f}")
        print(f"{'(b) mongoferry capture + apply':<44}{ours:>10,.0f}{ours / ceil:>8.2f}   ({lookups:,} source lookups)")
        print(f"{'(d) --filter on n (every update changes it)':<44}{by_n:>10,.0f}{by_n / ceil:>8.2f}   "
              f"({by_n_lookups:,} source lookups)")
        print(f"{'(e) --filter on user (no update touches it)':<44}{by_user:>10,.0f}{by_user / ceil:>8.2f}   "
              f"({by_user_lookups:,} source lookups)")
        print(f"(c) lag at {rate:,.0f} ops/s for {args.seconds:.0f}s: p50 {p50:.3f}s  p99 {p99:.3f}s "
              f"over {len(lags):,} events")
        print(f"date {dt.date.today()}")
    finally:
        src.close()
        dst.close()
        src_server.stop()
        dst_server.stop()


if __name__ == "__main__":
    main()
