"""`mongoferry verify --check-only` throughput and memory against the servers' own ceiling.

For each size (``--sizes``, default 20,000 and 100,000 documents; ``--sizes 200000,1000000``
for the full-scale comparison) both servers are seeded with the same documents, then:

(a) ceiling: two threads read the source and the destination *in parallel* with raw cursors,
    sorted by ``_id`` and hinted to the ``_id`` index, batch 1000: what any verifier must do
    (best of two runs);
(b) ``mongoferry verify --check-only --json --workers N`` in its own process, timed from start
    to exit (process start and catalog included) and by its own comparison clock; its peak RSS
    comes from ``wait4`` on that process;
(c) the same with ``--workers 1``: no ``_id`` ranges, so no document count and no range probe
    (on servers where those are scans, the difference to (b) is their cost).

Prints docs/s (per side) and MB/s (both sides' bytes), the ratio to the ceiling, the
verifier's CPU seconds per 100k documents and its peak RSS per size: bounded memory shows as
an RSS that does not grow with the collection. Not a test: run it with
``python bench/verify.py``.
"""

from __future__ import annotations

import sys

# Keep this folder off the import path (a file here must never shadow a module).
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from mongoferry.dev.embedded import EmbeddedServer, child_env

RAW = bson.CodecOptions(document_class=RawBSONDocument)
def verify_cmd() -> list[str]:
    return [sys.executable, "-m", "mongoferry", "verify"]


def document(i: int) -> dict[str, Any]:
    return {"_id": i, "user": f"user-{i % 5000}", "score": i * 0.5,
            "profile": {"name": "x" * 120, "tags": ["a", "b", "c"], "nested": {"k": i, "v": "y" * 300}},
            "history": [{"at": i + k, "what": "z" * 60} for k in range(5)]}


def seed(uri: str, n: int) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        coll = client.bench.docs
        coll.drop()
        for start in range(0, n, 2000):
            coll.insert_many([document(i) for i in range(start, min(n, start + 2000))])
    finally:
        client.close()


def seed_both(src: str, dst: str, n: int) -> None:
    threads = [threading.Thread(target=seed, args=(uri, n)) for uri in (src, dst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def ceiling(src_uri: str, dst_uri: str, batch: int) -> tuple[float, float, int]:
    """Both sides read in parallel, sorted by _id: (seconds, bytes of both sides, docs per side)."""
    results: dict[str, tuple[int, int]] = {}

    def read(name: str, uri: str) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        try:
            n = nbytes = 0
            coll = client.bench.get_collection("docs", codec_options=RAW)
            for raw in coll.find_raw_batches({}, sort=[("_id", 1)], batch_size=batch).hint([("_id", 1)]):
                n += len(bson.decode_all(raw, RAW))
                nbytes += len(raw)
            results[name] = (n, nbytes)
        finally:
            client.close()

    threads = [threading.Thread(target=read, args=(name, uri)) for name, uri in (("src", src_uri), ("dst", dst_uri))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return elapsed, results["src"][1] + results["dst"][1], results["src"][0]


def run_verify(src_uri: str, dst_uri: str, workers: int, out: Path) -> tuple[float, dict[str, Any], int, float]:
    """(wall seconds, the JSON report, peak RSS in bytes, CPU seconds) of one --check-only run."""
    args = [*verify_cmd(), "--src", src_uri, "--dst", dst_uri, "--check-only", "--json", "--include", "bench",
            "--workers", str(workers), "--log-format", "text", "--log-level", "warning"]
    started = time.perf_counter()
    errors = out.with_suffix(".err")
    with out.open("wb") as stdout, errors.open("wb") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 4):
        raise SystemExit(f"verify exited {proc.returncode}: {errors.read_text(errors='replace')[-2000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    return elapsed, report, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000",
                    help="comma list of document counts (e.g. 200000,1000000 for the full scale)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the servers' data directory and print its path")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="mongoferry-bench-verify-"))
    src = EmbeddedServer(root / "src").start()
    dst = EmbeddedServer(root / "dst").start()
    rows = []
    try:
        doc_size = len(bson.encode(document(1)))
        print(f"documents of ~{doc_size} bytes; {os.cpu_count()} cores; Python {platform.python_version()}; "
              f"--workers {args.workers}", flush=True)
        for n in sizes:
            t0 = time.perf_counter()
            seed_both(src.uri, dst.uri, n)
            print(f"seeded {n:,} documents on both sides in {time.perf_counter() - t0:.0f}s", flush=True)
            # Best of two: the first read after seeding also warms the servers' caches.
            c_secs, c_bytes, c_docs = min(ceiling(src.uri, dst.uri, args.batch) for _ in range(2))
            assert c_docs == n, (c_docs, n)
            for workers in dict.fromkeys((args.workers, 1)):
                wall, report, rss, cpu = run_verify(src.uri, dst.uri, workers, root / f"report-{n}.json")
                assert report["verdict"] == "identical" and report["docsCompared"] == n, report["findings"]
                v_bytes = report["srcBytes"] + report["dstBytes"]
                rows.append({
                    "docs": n, "workers": workers,
                    "ceiling_dps": n / c_secs, "ceiling_mbps": c_bytes / c_secs / 1e6,
                    "verify_dps": n / report["seconds"], "verify_mbps": v_bytes / report["seconds"] / 1e6,
                    "wall_dps": n / wall, "rss_mb": rss / 1e6, "cpu_100k": cpu / n * 100_000,
                })
    finally:
        src.stop()
        dst.stop()
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    head = (f"{'docs':>10} {'workers':>7} {'ceiling docs/s':>15} {'ceiling MB/s':>13} {'verify docs/s':>14} "
            f"{'verify MB/s':>12} {'ratio':>6} {'incl. start docs/s':>19} {'ratio':>6} {'peak RSS MB':>12} "
            f"{'cpu s/100k':>11}")
    print(head)
    for r in rows:
        print(f"{r['docs']:>10,} {r['workers']:>7} {r['ceiling_dps']:>15,.0f} {r['ceiling_mbps']:>13.2f} "
              f"{r['verify_dps']:>14,.0f} {r['verify_mbps']:>12.2f} {r['verify_dps'] / r['ceiling_dps']:>6.2f} "
              f"{r['wall_dps']:>19,.0f} "
              f"{r['wall_dps'] / r['ceiling_dps']:>6.2f} {r['rss_mb']:>12.1f} {r['cpu_100k']:>11.1f}")
    if len(sizes) >= 2:
        first = next(r for r in rows if r["docs"] == sizes[0] and r["workers"] == args.workers)
        last = next(r for r in rows if r["docs"] == sizes[-1] and r["workers"] == args.workers)
        print(f"peak RSS grows x{last['rss_mb'] / first['rss_mb']:.2f} for x{last['docs'] / first['docs']:.0f} "
              "the documents")
    print(f"date {dt.date.today()}")


if __name__ == "__main__":
    main()
