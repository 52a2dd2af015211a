"""Copy throughput against the servers' own ceiling, measured in the same run.

(a) ceiling: a bare pymongo loop reading raw batches from the source and
    insert_many'ing them into an empty destination, same batch size;
(b) `mongoferry copy --workers 1`; (c) `mongoferry copy` (the default, --workers auto: one reader
per collection, a second from its end only where measured faster); (d) `--workers N` (the same,
at most N readers); (e) `--workers N --ranges on` (planned parallel ranges forced); (f) when
`mongodump` and `mongorestore` are on PATH, `mongodump --archive | mongorestore --archive`.
Every row writes into a destination server started for it: a SecantusDB destination gets slower as
its storage and oplog grow (measured: the same bare loop 8.2 s on a fresh server, 10.4 s on one
that had taken five copies), so a shared destination would favour whichever row ran first.
Prints docs/s, the ratio to the ceiling, and the copy process's CPU seconds per
100k documents. Not a test: run it with `make bench` or `python bench/copy.py`.
"""

from __future__ import annotations

import sys

# This file is named copy.py, which would shadow the standard library's `copy`
# for everything imported below; its own folder must not be on the path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bson
from bson.raw_bson import RawBSONDocument

from mongoferry.dev.embedded import EmbeddedServer, child_env

RAW = bson.CodecOptions(document_class=RawBSONDocument)


def seed(uri: str, n: int) -> int:
    from pymongo import MongoClient

    c: MongoClient[dict[str, object]] = MongoClient(uri)
    coll = c.bench.docs
    coll.drop()
    batch = []
    for i in range(n):
        batch.append({"_id": i, "user": f"user-{i % 5000}", "score": i * 0.5,
                      "profile": {"name": "x" * 120, "tags": ["a", "b", "c"], "nested": {"k": i, "v": "y" * 300}},
                      "history": [{"at": i + k, "what": "z" * 60} for k in range(5)]})
        if len(batch) == 2000:
            coll.insert_many(batch)
            batch = []
    if batch:
        coll.insert_many(batch)
    size = len(bson.encode(coll.find_one() or {}))
    c.close()
    return size


def ceiling(src_uri: str, dst_uri: str, batch: int) -> float:
    from pymongo import MongoClient

    src: MongoClient[dict[str, object]] = MongoClient(src_uri)
    dst: MongoClient[dict[str, object]] = MongoClient(dst_uri)
    dst.drop_database("ceiling")
    started = time.perf_counter()
    n = 0
    for raw in src.bench.docs.find_raw_batches(batch_size=batch):
        docs = bson.decode_all(raw, RAW)
        dst.ceiling.docs.insert_many(docs, ordered=False)
        n += len(docs)
    elapsed = time.perf_counter() - started
    dst.drop_database("ceiling")
    return n / elapsed


def run_copy(src_uri: str, dst_uri: str, options: list[str], batch: int, n: int) -> tuple[float, float]:
    from pymongo import MongoClient

    dst: MongoClient[dict[str, object]] = MongoClient(dst_uri)
    dst.drop_database("bench_copy")
    dst.drop_database("mongoferry_meta")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mongoferry", "copy", "--src", src_uri, "--dst", dst_uri,
                    "--include", "bench", "--rename", "bench=bench_copy", *options,
                    "--batch-size", str(batch), "--log-format", "text", "--log-level", "warning"],
                   check=True, env=child_env(), stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    got = dst.bench_copy.docs.count_documents({})
    assert got == n, f"copied {got} of {n}"
    dst.drop_database("bench_copy")
    return n / elapsed, cpu / n * 100_000


def dump_restore(src_uri: str, dst_uri: str, n: int) -> float | None:
    """mongodump --archive | mongorestore --archive, timed end to end (None without the tools)."""

    from pymongo import MongoClient

    if not (shutil.which("mongodump") and shutil.which("mongorestore")):
        return None
    dst: MongoClient[dict[str, object]] = MongoClient(dst_uri)
    dst.drop_database("bench_dump")
    started = time.perf_counter()
    dump = subprocess.Popen(["mongodump", "--uri", src_uri, "--db", "bench", "--archive", "--quiet"],
                            stdout=subprocess.PIPE)
    subprocess.run(["mongorestore", "--uri", dst_uri, "--archive", "--nsFrom", "bench.*", "--nsTo", "bench_dump.*",
                    "--quiet"], stdin=dump.stdout, check=True)
    assert dump.wait() == 0
    elapsed = time.perf_counter() - started
    got = dst.bench_dump.docs.count_documents({})
    assert got == n, f"restored {got} of {n}"
    dst.drop_database("bench_dump")
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mongoferry-bench-"))
    src = EmbeddedServer(root / "src").start()
    dst = EmbeddedServer(root / "dst").start()
    try:
        size = seed(src.uri, args.docs)
        print(f"seeded {args.docs:,} docs of ~{size} bytes; {os.cpu_count()} cores; {platform.python_version()}")

        def fresh(name: str) -> EmbeddedServer:
            nonlocal dst
            dst.stop()
            shutil.rmtree(dst.storage, ignore_errors=True)
            dst = EmbeddedServer(root / name).start()
            return dst

        ceil = ceiling(src.uri, dst.uri, args.batch)
        runs = [("(b) mongoferry copy --workers 1", ["--workers", "1"]),
                ("(c) mongoferry copy (auto)", []),
                (f"(d) --workers {args.workers}", ["--workers", str(args.workers)]),
                (f"(e) --workers {args.workers} --ranges on", ["--workers", str(args.workers), "--ranges", "on"])]
        rows = [(name, *run_copy(src.uri, fresh(f"dst{i}").uri, opts, args.batch, args.docs))
                for i, (name, opts) in enumerate(runs)]
        dump = dump_restore(src.uri, fresh("dst-dump").uri, args.docs)
        one = rows[0][1]
        print(f"{'run':<36}{'docs/s':>10}{'ratio':>8}{'vs w1':>8}{'cpu s/100k':>12}")
        print(f"{'(a) ceiling: bare pymongo loop':<36}{ceil:>10,.0f}{1.0:>8.2f}{'':>8}{'':>12}")
        for name, rate, cpu in rows:
            print(f"{name:<36}{rate:>10,.0f}{rate / ceil:>8.2f}{rate / one:>8.2f}{cpu:>12.1f}")
        if dump is None:
            print("(f) mongodump | mongorestore: not run (mongodump/mongorestore not on PATH)")
        else:
            auto = rows[1][1]
            print(f"{'(f) mongodump | mongorestore':<36}{dump:>10,.0f}{dump / ceil:>8.2f}{'':>8}{'':>12}"
                  f"  (auto is {auto / dump:.2f}x)")
        print(f"date {dt.date.today()}")
    finally:
        src.stop()
        dst.stop()


if __name__ == "__main__":
    main()
