"""`mongoferry demo --backup`: a continuous backup, an accident, and a restore to just before it.

1. start a source and a restore target (SecantusDB processes in a temp dir), load a sample;
2. run `mongoferry backup --to DIR` as a user would while a writer keeps changing the source,
   showing the snapshot, the oplog chunks and the restorable range;
3. the accident: a `deleteMany` wipes the shipped orders; its time is noted as an operator would read it
   from the application's log (the second it happened);
4. `mongoferry restore --to-time <the second before>` into the target, and the proof: the deleted
   orders are back, and the restored data is byte-identical to the source as it was then.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bson import Timestamp, json_util
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.table import Table

from mongoferry.core.errors import EXIT_INCONSISTENT, EXIT_OK
from mongoferry.dev.embedded import EmbeddedServer, child_env
from mongoferry.dev.sample import digest, load_sample
from mongoferry.infra.clients import Client
from mongoferry.source.capture import newest_oplog_time

NAMESPACES = ("shop.orders", "shop.customers")


class Writer(threading.Thread):
    """An application: new orders, updated customers, cancelled orders, about 100 writes a second."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True, name="demo-writer")
        self.client = client
        self.stop = threading.Event()
        self.pause = threading.Event()
        self.ops = 0
        self.rng = random.Random(5)

    def run(self) -> None:
        shop = self.client.shop
        n = 0
        while not self.stop.is_set():
            if self.pause.is_set():
                self.stop.wait(0.05)
                continue
            n += 1
            try:
                r = self.rng.random()
                if r < 0.5:
                    shop.orders.insert_one({"_id": f"live-{n}", "status": "new", "total": self.rng.randint(1, 900)})
                elif r < 0.9:
                    shop.customers.update_one({}, {"$inc": {"visits": 1}})
                else:
                    shop.orders.delete_one({"_id": f"live-{n - 7}"})
                self.ops += 1
            except PyMongoError:
                pass
            self.stop.wait(0.01)


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json_util.loads((folder / "manifest.json").read_text())
        return doc
    except (FileNotFoundError, ValueError):
        return {"snapshots": [], "chunks": []}


def _mongoferry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mongoferry", *args], capture_output=True, text=True,
                          env=child_env())


def _wait(what: str, predicate: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo waited {timeout:.0f}s for {what}")
        time.sleep(0.2)


def run_backup_demo(console: Console, root: Path, docs: int) -> int:
    servers = [EmbeddedServer(root / n).start() for n in ("src", "restored")]
    proc: subprocess.Popen[bytes] | None = None
    writer: Writer | None = None
    try:
        src, target = (s.client() for s in servers)
        counts = load_sample(src, docs)
        console.print(f"source {servers[0].uri} holds " + ", ".join(f"{ns} {n:,}" for ns, n in counts.items()))
        folder = root / "backup"
        args = ["backup", "--src", servers[0].uri, "--to", str(folder), "--chunk", "2s"]
        console.print("[bold]$ mongoferry " + " ".join(args) + "[/]")
        writer = Writer(src)
        writer.start()
        with (root / "backup.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mongoferry", *args, "--log-format", "json"],
                                    stdout=log, stderr=subprocess.STDOUT, env=child_env())
        _wait("the first snapshot", lambda: any(s["state"] == "complete" for s in _manifest(folder)["snapshots"]))
        console.print("snapshot complete; the oplog is archived in chunks while the writer goes on …")
        time.sleep(6)

        # The accident, in a second of its own so "the second before" is well defined.
        writer.pause.set()
        time.sleep(1.2)
        before_text = dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
        expected = {ns: digest(src, ns) for ns in NAMESPACES}
        time.sleep(1.2)
        deleted = src.shop.orders.delete_many({"status": "sent"}).deleted_count
        console.print(f"[red]the accident:[/] deleteMany removed {deleted:,} orders "
                      f"(the application's log says it ran just after {before_text})")
        writer.pause.clear()
        time.sleep(4)
        writer.stop.set()
        writer.join()
        newest = newest_oplog_time(src)
        _wait("the archive to reach the accident",
              lambda: (_manifest(folder).get("covered") or Timestamp(0, 0)) >= newest)
        proc.terminate()
        proc.wait(60)
        listing = _mongoferry("backup", "list", "--from", str(folder))
        console.print("[bold]$ mongoferry backup list --from " + str(folder) + "[/]")
        console.print(listing.stdout.rstrip())

        restore = ["restore", "--from", str(folder), "--dst", servers[1].uri, "--to-time", before_text]
        console.print("[bold]$ mongoferry " + " ".join(restore) + " --dry-run[/]")
        console.print(_mongoferry(*restore, "--dry-run").stdout.rstrip())
        console.print("[bold]$ mongoferry " + " ".join(restore) + "[/]")
        started = time.monotonic()
        done = _mongoferry(*restore)
        console.print(done.stdout.rstrip() or done.stderr.rstrip())
        if done.returncode != EXIT_OK:
            return done.returncode
        console.print(f"restored in {time.monotonic() - started:.1f}s")
        return _prove(console, src, target, expected, deleted)
    finally:
        if writer is not None:
            writer.stop.set()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        for s in servers:
            s.stop()


def _prove(console: Console, src: Client, target: Client, expected: dict[str, tuple[int, str]], deleted: int) -> int:
    table = Table(title="proof: the restore is the source as it was the second before the accident")
    for col in ("namespace", "source now", "source then", "restored", ""):
        table.add_column(col)
    ok = True
    for ns in NAMESPACES:
        now, then, got = digest(src, ns), expected[ns], digest(target, ns)
        good = got == then
        ok = ok and good
        table.add_row(ns, f"{now[0]:,}", f"{then[0]:,} {then[1]}", f"{got[0]:,} {got[1]}",
                      "[green]ok[/]" if good else "[red]DIFF[/]")
    console.print(table)
    back = target.shop.orders.count_documents({"status": "sent"})
    console.print(f"the {deleted:,} deleted orders: {back:,} are back in the restored copy")
    return EXIT_OK if ok and back >= deleted else EXIT_INCONSISTENT
