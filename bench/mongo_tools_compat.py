"""mongo-tools compatibility, both ways, against real mongodump and mongorestore binaries.

(a) `mongoferry backup --once` (gzip), then `mongorestore --gzip --oplogReplay SNAPSHOT_DIR`;
(b) `mongodump --oplog` and (c) `mongodump --oplog --gzip`, each then `mongoferry restore`.
Each destination must equal the source: documents, collection options, views, indexes.

Not part of the test suite: mongo-tools are in none of the registries CI reaches. Build them from
their repository (`go build -mod=vendor -o bin/mongorestore ./mongorestore/main`, the same for
mongodump) and run `python bench/mongo_tools_compat.py --bin DIR`. Exit code 0: all equal.
"""

from __future__ import annotations

import sys

# bench/copy.py would shadow the standard library's `copy`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from mongoferry.dev.embedded import EmbeddedServer, child_env

Client = MongoClient[dict[str, Any]]


def seed(c: Client) -> None:
    c.shop.orders.insert_many([{"_id": i, "total": i * 1.5, "tags": ["a", "b"], "nested": {"k": i}}
                               for i in range(500)])
    c.shop.orders.create_index([("total", -1)], name="by_total")
    c.shop.orders.create_index([("nested.k", 1)], unique=True, name="uniq_k")
    c.crm.create_collection("people", validator={"$jsonSchema": {"bsonType": "object"}})
    c.crm.people.insert_many([{"_id": f"p{i}", "name": "x" * 20} for i in range(200)])
    c.crm.command("create", "big_orders", viewOn="orders", pipeline=[{"$match": {"total": {"$gt": 100}}}])


def state(c: Client) -> dict[str, Any]:
    """Per namespace: type, options, documents by _id, indexes (name, key, unique)."""
    out: dict[str, Any] = {}
    for db in ("shop", "crm"):
        for info in c[db].list_collections():
            coll = c[db][info["name"]]
            view = info.get("type") == "view"
            docs = [] if view else sorted(coll.find(), key=lambda d: str(d["_id"]))
            indexes = [] if view else sorted((i["name"], tuple(i["key"].items()), i.get("unique", False))
                                             for i in coll.list_indexes())
            out[f"{db}.{info['name']}"] = (info.get("type"), info.get("options", {}), docs, indexes)
    return out


def run(*args: str) -> None:
    done = subprocess.run(list(args), capture_output=True, text=True, env=child_env())
    if done.returncode:
        raise SystemExit(f"{Path(args[0]).name} exited {done.returncode}:\n{done.stderr[-3000:]}")


def compare(label: str, got: dict[str, Any], expected: dict[str, Any]) -> bool:
    same = got == expected
    differing = ", ".join(n for n in expected if got.get(n) != expected[n])
    print(f"{label:<52} {'equal' if same else 'DIFFERS: ' + differing}")
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", default="", help="the folder holding mongodump and mongorestore (default: PATH)")
    args = ap.parse_args()
    tool = (lambda name: str(Path(args.bin) / name)) if args.bin else (lambda name: name)
    root = Path(tempfile.mkdtemp(prefix="mongoferry-compat-"))
    mongoferry = [sys.executable, "-m", "mongoferry"]
    ok = True
    with EmbeddedServer(root / "src").start() as src:
        with src.client() as c:
            seed(c)
            expected = state(c)
        backup = root / "backup"
        run(*mongoferry, "backup", "--once", "--src", src.uri, "--to", str(backup), "--log-format", "text")
        snapshot = next((backup / "snapshots").iterdir())
        with EmbeddedServer(root / "a").start() as dst:
            run(tool("mongorestore"), "--uri", dst.uri, "--gzip", "--oplogReplay", str(snapshot))
            with dst.client() as c:
                ok &= compare("(a) mongoferry backup -> mongorestore --gzip", state(c), expected)
        for label, extra in (("(b) mongodump --oplog -> mongoferry restore", []),
                             ("(c) mongodump --oplog --gzip -> mongoferry restore", ["--gzip"])):
            dump = root / f"dump{len(extra)}"
            run(tool("mongodump"), "--uri", src.uri, "--oplog", *extra, "--out", str(dump))
            with EmbeddedServer(root / f"dst{len(extra)}").start() as dst:
                run(*mongoferry, "restore", "--from", str(dump), "--dst", dst.uri, "--log-format", "text")
                with dst.client() as c:
                    ok &= compare(label, state(c), expected)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
