"""Backup and restore throughput against the servers' own ceilings, measured in the same run.

(a) read ceiling: a bare pymongo loop reading raw batches and writing them gzip'd to a file;
(b) copy ceiling: the same read, `insert_many` into an empty destination (what a restore writes);
(c) `mongoferry backup --once` (whole command: snapshot, its oplog, manifest) against (a);
(d) `mongoferry restore` of that backup (whole command) against (b);
(e) the oplog archive under a writer going as fast as the source takes: the writer's rate with and
    without the backup running, and how long after the writer stops the archive has everything;
(f) bytes stored per million oplog entries of that workload, gzip / zstd / none.
Not a test: `python bench/backup.py`.
"""

from __future__ import annotations

import sys

# bench/copy.py would shadow the standard library's `copy`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import gzip
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bson
from bson import Timestamp, json_util
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from mongoferry.dev.embedded import EmbeddedServer, child_env
from mongoferry.sinks.archive.layout import compress

RAW = bson.CodecOptions(document_class=RawBSONDocument)
Client = MongoClient[dict[str, Any]]


def seed(uri: str, n: int) -> None:
    c: Client = MongoClient(uri)
    batch = []
    for i in range(n):
        batch.append({"_id": i, "user": f"user-{i % 5000}", "score": i * 0.5,
                      "profile": {"name": "x" * 120, "tags": ["a", "b", "c"], "nested": {"k": i, "v": "y" * 300}},
                      "history": [{"at": i + k, "what": "z" * 60} for k in range(5)]})
        if len(batch) == 2000:
            c.bench.docs.insert_many(batch)
            batch = []
    if batch:
        c.bench.docs.insert_many(batch)
    c.close()


def read_ceiling(uri: str, out: Path) -> float:
    c: Client = MongoClient(uri)
    started = time.perf_counter()
    n = 0
    with gzip.open(out, "wb", compresslevel=6) as f:
        for raw in c.bench.docs.find_raw_batches(batch_size=1000):
            f.write(raw)
            n += len(bson.decode_all(raw, RAW))
    c.close()
    return n / (time.perf_counter() - started)


def copy_ceiling(src_uri: str, dst_uri: str) -> float:
    src: Client = MongoClient(src_uri)
    dst: Client = MongoClient(dst_uri)
    dst.drop_database("ceiling")
    started = time.perf_counter()
    n = 0
    for raw in src.bench.docs.find_raw_batches(batch_size=1000):
        docs = bson.decode_all(raw, RAW)
        dst.ceiling.docs.insert_many(docs, ordered=False)
        n += len(docs)
    elapsed = time.perf_counter() - started
    dst.drop_database("ceiling")
    return n / elapsed


def mongoferry(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mongoferry", *args, "--log-format", "json"], check=True,
                   capture_output=True, env=child_env())
    return time.perf_counter() - started


def manifest(folder: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json_util.loads((folder / "manifest.json").read_text())
        return doc
    except (FileNotFoundError, ValueError):
        return {"snapshots": [], "chunks": []}


def newest(c: Client) -> Timestamp:
    ts: Timestamp = c.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])["ts"]
    return ts


def write_flat_out(uri: str, seconds: float, tag: str) -> int:
    """A writer going as fast as the source takes: inserts and updates, one at a time, 2 threads."""
    counts = [0, 0]
    stop = threading.Event()

    def run(k: int) -> None:
        c: Client = MongoClient(uri)
        i = 0
        while not stop.is_set():
            i += 1
            if i % 2:
                c.bench.live.insert_one({"_id": f"{tag}-{k}-{i}", "v": i, "pad": "p" * 200})
            else:
                c.bench.docs.update_one({"_id": i % 1000}, {"$inc": {"score": 1}, "$set": {"at": i}})
            counts[k] += 1
        c.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mongoferry-bench-backup-"))
    with EmbeddedServer(root / "src").start() as src, EmbeddedServer(root / "dst").start() as dst:
        seed(src.uri, args.docs)
        a = read_ceiling(src.uri, root / "ceiling.bson.gz")
        b = copy_ceiling(src.uri, dst.uri)
        folder = root / "backup"
        c = args.docs / mongoferry("backup", "--src", src.uri, "--to", str(folder), "--once")
        d = args.docs / mongoferry("restore", "--from", str(folder), "--dst", dst.uri)

        # (e) the writer alone, then with the backup running (its snapshot done first)
        alone = write_flat_out(src.uri, args.seconds, "alone") / args.seconds
        live = root / "live"
        with (root / "backup.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mongoferry", "backup", "--src", src.uri, "--to", str(live),
                                     "--chunk", "5s", "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT,
                                    env=child_env())
        while not any(s["state"] == "complete" for s in manifest(live)["snapshots"]):
            time.sleep(0.2)
        with_backup = write_flat_out(src.uri, args.seconds, "backup") / args.seconds
        stopped = time.perf_counter()
        c_src: Client = MongoClient(src.uri)
        last = newest(c_src)
        while (manifest(live).get("covered") or Timestamp(0, 0)) < last:
            time.sleep(0.05)
        behind = time.perf_counter() - stopped
        proc.terminate()
        proc.wait(60)
        m = manifest(live)
        body = b"".join(gzip.decompress((live / ch["key"]).read_bytes()) for ch in m["chunks"] if ch["key"])
        entries = sum(ch["entries"] for ch in m["chunks"])
        sizes = {how: len(compress(body, how)) * 1_000_000 / entries for how in ("gzip", "zstd", "none")}  # type: ignore[arg-type]

    print(f"{args.docs:,} documents of ~1 KB; writer {args.seconds:.0f}s, 2 threads")
    print(f"(a) read ceiling (raw batches → gzip file)  {a:10,.0f} docs/s  1.00")
    print(f"(b) copy ceiling (raw batches → insert_many) {b:10,.0f} docs/s  1.00")
    print(f"(c) mongoferry backup --once                 {c:10,.0f} docs/s  {c / a:.2f} of (a)")
    print(f"(d) mongoferry restore                       {d:10,.0f} docs/s  {d / b:.2f} of (b)")
    print(f"(e) writer alone {alone:,.0f} ops/s; with the backup archiving {with_backup:,.0f} ops/s "
          f"({with_backup / alone:.2f}); archive complete {behind:.1f}s after the writer stopped "
          f"({entries:,} entries archived)")
    print("(f) bytes per million entries: " + ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
