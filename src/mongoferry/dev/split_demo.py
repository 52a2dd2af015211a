"""`mongoferry demo --split`: one deployment into two by `userId mod 2`, live, then a prune.

1. start a source and two destinations (SecantusDB processes in a temp dir) and load users,
   orders keyed by their user, and a reference collection (broadcast to both parts);
2. run `mongoferry split` as a user would while a writer inserts, updates, deletes and changes
   users' keys (moving documents between parts), showing each part's share, holding and delta;
3. stop the writer and commit: the split drains, counts and verifies each part against its share;
4. prune the source down to part 0 with the split's own rule (`--from-split`), and prove the
   pruned source and part 0 byte-identical, and part 1 exactly the rest.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError
from rich.console import Console, Group
from rich.table import Table

from mongoferry.core.errors import EXIT_INCONSISTENT, EXIT_OK
from mongoferry.dev.embedded import EmbeddedServer, child_env, free_port
from mongoferry.dev.live import follow_and_commit
from mongoferry.dev.sample import digest
from mongoferry.infra.clients import Client

USERS_SHARE = 0.4  # of --docs; the rest are orders


class MovingWriter(threading.Thread):
    """An application writing to the source: new users and orders, updates, deletes, key changes."""

    def __init__(self, client: Client, users: int) -> None:
        super().__init__(daemon=True, name="demo-writer")
        self.client = client
        self.users = users
        self.stop = threading.Event()
        self.ops = self.moves = 0
        self.rng = random.Random(3)

    def run(self) -> None:
        app = self.client.app
        next_id = 10**7
        while not self.stop.is_set():
            i, r = self.rng.randrange(self.users), self.rng.random()
            try:
                if r < 0.3:
                    app.users.insert_one({"_id": next_id, "userId": next_id, "name": "new user"})
                    app.orders.insert_one({"_id": next_id, "userId": next_id, "total": 1})
                    next_id += 1
                elif r < 0.6:
                    app.users.update_one({"_id": i}, {"$inc": {"visits": 1}})
                elif r < 0.8:  # the key changes: the document moves to the other part
                    app.users.update_one({"_id": i}, {"$inc": {"userId": 1}, "$set": {"moved": True}})
                    self.moves += 1
                else:
                    app.orders.delete_one({"_id": self.rng.randrange(10**6, 10**6 + self.users)})
                self.ops += 1
            except PyMongoError:
                pass
            self.stop.wait(1 / 80)


def load(client: Client, docs: int) -> int:
    users = int(docs * USERS_SHARE)
    rng = random.Random(1)
    client.app.users.insert_many([{"_id": i, "userId": i, "name": f"user-{i}", "visits": 0} for i in range(users)])
    client.app.orders.insert_many([{"_id": 10**6 + i, "userId": rng.randrange(users), "total": rng.randint(1, 500)}
                                   for i in range(docs - users)])
    client.app.orders.create_index("userId")
    client.app.countries.insert_many([{"_id": c} for c in ("de", "fr", "nl", "pt", "es")])
    return users


def view(p: dict[str, Any], writer: MovingWriter) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_row(f"[bold]state[/] {p['state']}", f"[bold]lag[/] {p['lagTimeSeconds']:.2f}s",
                 f"[bold]copied[/] {p['copy']['copiedDocs']:,}/{p['copy']['totalDocs']:,}",
                 f"[bold]writer ops[/] {writer.ops:,} (key changes {writer.moves:,})")
    sinks = Table.grid(padding=(0, 2))
    sinks.add_row(*(f"[bold]{name}[/] events {s['events']:,} lag {s['lagSeconds']:.2f}s"
                    for name, s in p.get("sinks", {}).items()))
    table = Table(title="each part: the source's share, what it holds, the delta")
    for col in ("namespace", "part", "share", "holds", "delta"):
        table.add_column(col, justify="left" if col == "namespace" else "right")
    for n in p["namespaces"]:
        share = "-" if n["sourceCount"] is None else f"{n['sourceCount']:,}"
        table.add_row(n["source"], str(n["part"]), share, f"{n['destinationCount']:,}", str(n["delta"]))
    return Group(head, sinks, table)


def cli(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "mongoferry", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=child_env())


def run_split_demo(console: Console, root: Path, docs: int) -> int:
    servers = [EmbeddedServer(root / n).start() for n in ("src", "part0", "part1")]
    try:
        src, p0, p1 = (s.client() for s in servers)
        users = load(src, docs)
        console.print(f"source {servers[0].uri} holds {docs:,} users and orders; parts {servers[1].uri}, "
                      f"{servers[2].uri}")
        port = free_port()
        args = ["split", "--src", servers[0].uri, "--dst", servers[1].uri, "--dst", servers[2].uri,
                "--key", "userId", "--by", "mod", "--broadcast", "app.countries", "--http", f"127.0.0.1:{port}",
                "--no-write-block", "--log-format", "json"]
        console.print("[bold]$ mongoferry " + " ".join(a for a in args if a != "json" and a != "--log-format") + "[/]")
        writer = MovingWriter(src, users)
        writer.start()
        proc = cli(*args, log=root / "split.log")
        code = follow_and_commit(console, proc, port, writer, lambda p: view(p, writer),
                                 "writer stopped (the application switches to the parts); committing …")
        console.print(f"split exited with {code}")
        for line in (root / "split.log").read_text(errors="replace").splitlines():
            if '"commit: ' in line or '"COMMITTED' in line or "commit failed" in line:
                console.print(f"  split: {json.loads(line).get('msg', '')}")
        if code != EXIT_OK:
            console.print(f"[red]see {root / 'split.log'}[/]")
            return code
        prune_args = ["prune", "--uri", servers[0].uri, "--meta", servers[1].uri, "--from-split", "split",
                      "--keep", "0"]
        console.print("[bold]$ mongoferry " + " ".join(prune_args) + "[/]   (a dry run)")
        console.print(subprocess.run([sys.executable, "-m", "mongoferry", *prune_args], capture_output=True,
                                     text=True, env=child_env()).stdout.rstrip())
        prune_args += ["--execute", "--rate", "5000", "--http", "off"]
        console.print("[bold]$ mongoferry " + " ".join(prune_args) + "[/]")
        done = subprocess.run([sys.executable, "-m", "mongoferry", *prune_args, "--log-format", "json"],
                              capture_output=True, text=True, env=child_env())
        console.print(done.stdout.rstrip())
        if done.returncode != EXIT_OK:
            return done.returncode
        return prove(console, src, p0, p1)
    finally:
        for s in servers:
            s.stop()


def prove(console: Console, src: Client, p0: Client, p1: Client) -> int:
    table = Table(title="proof: the pruned source is part 0, byte for byte; part 1 holds the rest")
    for col in ("namespace", "source (pruned)", "part 0", "part 1", ""):
        table.add_column(col)
    ok = True
    for name in ("users", "orders", "countries"):
        ns = f"app.{name}"
        a, b, c = digest(src, ns), digest(p0, ns), digest(p1, ns)
        misplaced = p1.app[name].count_documents({"userId": {"$mod": [2, 0]}}) if name != "countries" else 0
        good = a == b and misplaced == 0
        ok = ok and good
        table.add_row(ns, f"{a[0]:,} {a[1]}", f"{b[0]:,} {b[1]}", f"{c[0]:,}",
                      "[green]ok[/]" if good else "[red]DIFF[/]")
    console.print(table)
    return EXIT_OK if ok else EXIT_INCONSISTENT
