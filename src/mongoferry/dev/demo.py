"""`mongoferry demo`: embedded servers, a realistic sample, and a live migration.

1. start a source and a destination (SecantusDB processes in a temp dir);
2. load ~200k documents (several databases, nested docs, arrays, mixed _id types,
   indexes, a view, a capped collection);
3. run `mongoferry sync` as a user would, while a writer keeps changing the source
   (inserts, nested and array updates, deletes, transactions, an index build);
4. show state, lag and per-namespace deltas live; stop the writer; commit;
5. prove the two sides identical: every document's bytes, per namespace.
`--copy-only` runs the plain `mongoferry copy` instead.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mongoferry.core.errors import EXIT_INCONSISTENT, EXIT_OK, MongoferryError
from mongoferry.dev.embedded import child_env, embedded_pair, free_port
from mongoferry.dev.live import follow_and_commit
from mongoferry.dev.sample import digest, load_sample, sample_size
from mongoferry.infra.clients import Client
from mongoferry.infra.config import CopySettings
from mongoferry.jobs.copy import run_copy

WRITER_OPS_PER_S = 60


class LiveWriter(threading.Thread):
    """Changes the source the way an application would, at a steady rate."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True, name="demo-writer")
        self.client = client
        self.stop = threading.Event()
        self.ops = 0
        self.rng = random.Random(42)

    def run(self) -> None:
        shop = self.client.shop
        ids = [d["_id"] for d in shop.customers.find({}, {"_id": 1}).limit(2000)]
        while not self.stop.is_set():
            try:
                self.one(shop, ids)
                self.ops += 1
            except PyMongoError:
                pass  # the demo writer is best effort; the sync's own checks are what matter
            self.stop.wait(1 / WRITER_OPS_PER_S)

    def one(self, shop: Any, ids: list[Any]) -> None:
        r, k = self.rng.random(), self.rng.choice(ids)
        if r < 0.25:
            new = ObjectId()
            shop.customers.insert_one({"_id": new, "name": "new customer", "email": f"{new}@example.com",
                                       "tags": [], "address": {"city": "Lisbon"}})
            ids.append(new)
        elif r < 0.55:
            shop.customers.update_one({"_id": k}, {"$inc": {"visits": 1}, "$set": {"address.zip": "1000-001"},
                                                   "$push": {"tags": {"$each": ["seen"], "$slice": -5}}})
        elif r < 0.65:
            shop.customers.update_one({"_id": k}, {"$pull": {"tags": "seen"}, "$unset": {"balance": ""}})
        elif r < 0.75 and len(ids) > 100:
            shop.customers.delete_one({"_id": ids.pop(self.rng.randrange(len(ids)))})
        elif r < 0.9:
            with self.client.start_session() as s, s.start_transaction():
                order = shop.orders.find_one({}, {"_id": 1}, session=s, skip=self.rng.randrange(1000))
                if order:
                    shop.orders.update_one({"_id": order["_id"]}, {"$set": {"status": "paid"}}, session=s)
                shop.customers.update_one({"_id": k}, {"$inc": {"orders": 1}}, session=s)
        else:
            self.client.iot.events.insert_one({"kind": "demo", "n": self.ops})
        if self.ops == 300:
            shop.customers.create_index("visits", name="visits_1_built_live")


def progress_view(p: dict[str, Any], writer_ops: int) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_row(f"[bold]state[/] {p['state']}", f"[bold]lag[/] {p['lagTimeSeconds']:.2f}s",
                 f"[bold]canCommit[/] {p['canCommit']}",
                 f"[bold]copied[/] {p['copy']['copiedDocs']:,}/{p['copy']['totalDocs']:,}",
                 f"[bold]writer ops[/] {writer_ops:,}")
    ev = Table.grid(padding=(0, 2))
    ev.add_row(*(f"{k} {v:,}" for k, v in p["events"].items()))
    table = Table(title="namespaces (metadata counts)")
    for col in ("source", "destination", "source count", "destination count", "delta"):
        table.add_column(col, justify="right" if "count" in col or col == "delta" else "left")
    for n in p["namespaces"]:
        table.add_row(n["source"], n["destination"], f"{n['sourceCount']:,}", f"{n['destinationCount']:,}",
                      str(n["delta"]))
    return Group(head, ev, table)


def run_live_demo(console: Console, root: Path, src_uri: str, dst_uri: str, src: Client, dst: Client,
                  workers: str) -> int:
    port = free_port()
    log = root / "sync.log"
    console.print(f"[bold]$ mongoferry sync --src {src_uri} --dst {dst_uri} --workers {workers} "
                  f"--http 127.0.0.1:{port} --no-write-block[/]   (logs: {log})")
    writer = LiveWriter(src)
    writer.start()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mongoferry", "sync", "--src", src_uri, "--dst", dst_uri,
                                 "--workers", str(workers), "--http", f"127.0.0.1:{port}", "--no-write-block",
                                 "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT, env=child_env())
    code = follow_and_commit(console, proc, port, writer, lambda p: progress_view(p, writer.ops),
                             "writer stopped (the operator's cutover window); committing …")
    console.print(f"sync exited with {code}")
    for line in log.read_text(errors="replace").splitlines():
        if '"commit: ' in line or '"COMMITTED' in line or "verification finding" in line:
            msg = json.loads(line).get("msg", "")
            console.print(f"  sync: {msg}")
    if code != EXIT_OK:
        console.print(f"[red]see {log}[/]")
        return code
    return prove_identical(console, src, dst)


def prove_identical(console: Console, src: Client, dst: Client) -> int:
    table = Table(title="proof: every document, byte for byte")
    for col in ("namespace", "source docs", "destination docs", "source digest", "destination digest", ""):
        table.add_column(col)
    ok = True
    for db in ("shop", "iot"):
        for name in sorted(src[db].list_collection_names()):
            ns = f"{db}.{name}"
            a, b = digest(src, ns), digest(dst, ns)
            ok = ok and a == b
            table.add_row(ns, f"{a[0]:,}", f"{b[0]:,}", a[1], b[1], "[green]identical[/]" if a == b else "[red]DIFF[/]")
    idx_src = sorted(src.shop.customers.index_information())
    idx_dst = sorted(dst.shop.customers.index_information())
    console.print(table)
    console.print(f"indexes on shop.customers: source {idx_src} — destination "
                  f"{'the same' if idx_src == idx_dst else idx_dst}")
    return EXIT_OK if ok and idx_src == idx_dst else EXIT_INCONSISTENT


def run_demo(docs: int = 200_000, workers: str = "auto", keep: bool = False, log_format: str = "auto",
             copy_only: bool = False, split: bool = False, backup: bool = False) -> int:
    console = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="mongoferry-demo-"))
    try:
        if backup:
            from mongoferry.dev.backup_demo import run_backup_demo

            return run_backup_demo(console, root, docs)
        if split:
            from mongoferry.dev.split_demo import run_split_demo

            return run_split_demo(console, root, docs)
        with embedded_pair(root) as (src_server, dst_server):
            console.print(f"[bold]source[/] {src_server.uri}   [bold]destination[/] {dst_server.uri}")
            started = time.monotonic()
            with src_server.client() as src, dst_server.client() as dst:
                with Progress(TextColumn("loading the sample"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=True) as bar:
                    task = bar.add_task("load", total=sample_size(docs))
                    counts = load_sample(src, docs, lambda n: bar.advance(task, n))
                console.print(f"loaded {sum(counts.values()):,} documents into the source in "
                              f"{time.monotonic() - started:.1f}s: "
                              + ", ".join(f"{ns} {n:,}" for ns, n in counts.items()))
                if not copy_only:
                    return run_live_demo(console, root, src_server.uri, dst_server.uri, src, dst, workers)
                console.print(f"[bold]$ mongoferry copy --src {src_server.uri} --dst {dst_server.uri} "
                              f"--workers {workers}[/]")
                settings = CopySettings.model_validate({"src": src_server.uri, "dst": dst_server.uri,
                                                        "workers": workers, "log_format": log_format})
                started = time.monotonic()
                code = run_copy(settings)
                console.print(f"copy finished with exit code {code} in {time.monotonic() - started:.1f}s")
                return code if code != EXIT_OK else prove_identical(console, src, dst)
    except MongoferryError:
        raise
    finally:
        if keep:
            console.print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
