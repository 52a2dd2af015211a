"""`mongoferry backup` and `mongoferry restore` through the CLI, against real servers.

The proof of a point-in-time restore: a writer records the cluster time of every write and the
exact bytes of every document after it; restores to several of those times must give exactly
those bytes. Backups are SIGKILLed during the snapshot and while archiving, with DDL during the
snapshot, and must still restore to the source's latest state.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import bson
import httpx
import pytest
from bson import Timestamp

from mongoferry.dev.embedded import EmbeddedServer, free_port
from tests.integration.conftest import (
    RAW,
    S3Server,
    job_progress,
    raw_docs,
    run_cli,
    start_cli,
    user_namespaces,
    wait_for,
)

Model = dict[str, dict[bytes, bytes]]


def manifest(folder: Path) -> dict[str, Any]:
    return bson.json_util.loads((folder / "manifest.json").read_text())


def complete_snapshots(folder: Path) -> int:
    try:
        return sum(1 for s in manifest(folder)["snapshots"] if s["state"] == "complete")
    except (FileNotFoundError, ValueError):
        return 0


def covered(folder: Path) -> Timestamp:
    try:
        m = manifest(folder)
    except (FileNotFoundError, ValueError):
        return Timestamp(0, 0)
    return m.get("covered") or Timestamp(0, 0)


def newest(c: Any) -> Timestamp:
    """The time of the source's newest oplog entry: the backup has everything once it covers it."""
    ts: Timestamp = c.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])["ts"]
    return ts


def differences(got: Model, want: Model) -> list[str]:
    """What differs, readably (the first few documents per namespace)."""
    out = []
    for ns in sorted(set(got) | set(want)):
        g, w = got.get(ns, {}), want.get(ns, {})
        missing = [bson.decode(k)["_id"] for k in w if k not in g][:5]
        extra = [bson.decode(k)["_id"] for k in g if k not in w][:5]
        changed = [(bson.decode(w[k]), bson.decode(g[k])) for k in w if k in g and g[k] != w[k]][:3]
        if missing or extra or changed:
            out.append(f"{ns}: {len(g)} vs {len(w)} docs; missing {missing} extra {extra} changed {changed}")
    return out


def state(server: EmbeddedServer) -> Model:
    return {ns: raw_docs(server, ns) for ns in sorted(user_namespaces(server))}


def backup(src: EmbeddedServer, folder: Path, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    return start_cli("backup", "--src", src.uri, "--to", str(folder), "--chunk", "1s", "--log-format", "json",
                     *extra, log=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def restore(folder: Path, dst: EmbeddedServer, *extra: str) -> Any:
    result = run_cli("restore", "--from", str(folder), "--dst", dst.uri, "--log-format", "json", *extra)
    assert result.code == 0, result.text
    return result


def seed(src: EmbeddedServer, docs: int = 2000) -> None:
    with src.client() as c:
        c.shop.orders.insert_many([{"_id": i, "user": i % 50, "total": i * 1.5, "items": [i, i + 1]}
                                   for i in range(docs)])
        c.shop.orders.create_index([("user", 1), ("total", -1)], name="by_user")
        c.shop.create_collection("log", capped=True, size=1 << 20)
        c.shop.log.insert_many([{"n": i} for i in range(100)])
        c.shop.command({"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"total": {"$gt": 100}}}]})
        c.crm.people.insert_many([{"_id": bson.ObjectId(), "name": f"p{i}", "at": i} for i in range(300)])


def assert_same_catalog(src: EmbeddedServer, dst: EmbeddedServer) -> None:
    with src.client() as s, dst.client() as d:
        for db in ("shop", "crm"):
            def info(c: Any, db: str = db) -> dict[str, Any]:
                return {i["name"]: (i.get("type"), {k: v for k, v in i.get("options", {}).items()})
                        for i in c[db].list_collections()}
            assert info(d) == info(s)
        idx = sorted((ix["name"], dict(ix["key"])) for ix in d.shop.orders.list_indexes())
        assert idx == sorted((ix["name"], dict(ix["key"])) for ix in s.shop.orders.list_indexes())


# ------------------------------------------------------------------ the basic round trip
def test_a_backup_once_restores_byte_identical_with_options_views_and_indexes(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src)
        folder = tmp_path / "backup"
        result = run_cli("backup", "--src", src.uri, "--to", str(folder), "--once", "--log-format", "json")
        assert result.code == 0, result.text
        assert complete_snapshots(folder) == 1
        snap = next((folder / "snapshots").iterdir())
        # mongodump --gzip's layout (what mongorestore --gzip --oplogReplay reads): <db>/<coll>.bson.gz and
        # <db>/<coll>.metadata.json.gz, a plain oplog.bson at the top
        assert (snap / "shop" / "orders.bson.gz").is_file() and (snap / "shop" / "orders.metadata.json.gz").is_file()
        assert (snap / "shop" / "big_orders.metadata.json.gz").is_file()
        assert not (snap / "shop" / "big_orders.bson.gz").exists()  # a view has metadata only
        assert (snap / "oplog.bson").is_file() and not (snap / "oplog.bson.gz").exists()
        meta = json.loads(gzip.decompress((snap / "shop" / "orders.metadata.json.gz").read_bytes()))
        assert meta["collectionName"] == "orders" and meta["type"] == "collection"
        assert {ix["name"] for ix in meta["indexes"]} == {"_id_", "by_user"}

        listing = run_cli("backup", "list", "--from", str(folder))
        assert listing.code == 0 and "restorable:" in listing.out and "complete" in listing.out, listing.text

        restore(folder, dst)
        assert state(dst) == state(src)
        assert_same_catalog(src, dst)


# ------------------------------------------------------------------ point in time, live writer
class Writer(threading.Thread):
    """Writes, one at a time, recording the cluster time of each write and the exact state after it."""

    def __init__(self, server: EmbeddedServer, ops: int) -> None:
        super().__init__(daemon=True)
        self.server, self.ops = server, ops
        self.model: Model = {}
        self.marks: list[tuple[Timestamp, Model]] = []
        self.error: BaseException | None = None

    def _read(self, c: Any, ns: str, _id: Any) -> None:
        db, _, coll = ns.partition(".")
        doc = c[db].get_collection(coll, codec_options=RAW).find_one({"_id": _id})
        key = bson.encode({"_id": _id})
        if doc is None:
            self.model.setdefault(ns, {}).pop(key, None)
        else:
            self.model.setdefault(ns, {})[key] = doc.raw

    def run(self) -> None:
        try:
            rng = random.Random(7)
            with self.server.client() as c:
                self.model = state(self.server)
                for i in range(self.ops):
                    with c.start_session() as s:
                        ns, _id = "shop.orders", rng.randrange(0, 2300)
                        kind = rng.choice(["insert", "update", "update", "delete", "txn"])
                        if kind == "insert":
                            c.shop.orders.replace_one({"_id": _id}, {"_id": _id, "new": i}, upsert=True, session=s)
                        elif kind == "update":
                            # One new field at most per update: SecantusDB's oplog lists several new
                            # fields in another order than the document holds (docs/compatibility.md)
                            change = rng.choice([{"$inc": {"total": 1}}, {"$set": {"at": i}},
                                                 {"$push": {"items": i}}, {"$unset": {"user": ""}}])
                            c.shop.orders.update_one({"_id": _id}, change, session=s)
                        elif kind == "delete":
                            c.shop.orders.delete_one({"_id": _id}, session=s)
                        else:
                            with s.start_transaction():
                                c.shop.orders.update_one({"_id": _id}, {"$set": {"txn": i}}, session=s)
                                c.crm.people.insert_one({"_id": f"t{i}", "txn": i}, session=s)
                    # the time of the newest oplog entry: this write's (a write that changed nothing has none)
                    at = c.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])["ts"]
                    self._read(c, ns, _id)
                    if kind == "txn":
                        self._read(c, "crm.people", f"t{i}")
                    if i in (self.ops // 4, self.ops // 2, self.ops - 1):
                        assert at is not None
                        self.marks.append((at, {n: dict(d) for n, d in self.model.items()}))
        except BaseException as exc:
            self.error = exc


def test_restores_to_several_times_of_a_live_writer_are_exact(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src)
        folder = tmp_path / "backup"
        port = free_port()
        proc = backup(src, folder, "--http", f"127.0.0.1:{port}", log=tmp_path / "backup.log")
        try:
            wait_for(lambda: complete_snapshots(folder) == 1, timeout=120)
            wait_for(lambda: job_progress(port).get("state") == "ARCHIVING", timeout=30)
            progress = job_progress(port)
            assert progress["backup"]["source"]["restorable"] and "archive" in progress["sinks"], progress
            assert "mongoferry_" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            writer = Writer(src, 240)
            writer.start()
            writer.join(timeout=240)
            assert writer.error is None, writer.error
            last = writer.marks[-1][0]
            wait_for(lambda: covered(folder) >= last, timeout=60)
        finally:
            stop(proc)
        for at, expected in writer.marks:
            restore(folder, dst, "--to-time", f"{at.time}:{at.inc}", "--drop")
            got = state(dst)
            for ns in ("shop.orders", "crm.people"):
                assert got[ns] == expected[ns], f"{ns} at {at}"
        # A time just before the first mark misses that mark's write: the limit is inclusive, not beyond
        first, expected = writer.marks[0]
        before = Timestamp(first.time, first.inc - 1) if first.inc else Timestamp(first.time - 1, 2**32 - 1)
        restore(folder, dst, "--to-time", f"{before.time}:{before.inc}", "--drop")
        got = state(dst)
        assert got["shop.orders"] != expected["shop.orders"] or got["crm.people"] != expected["crm.people"]


# ------------------------------------------------------------------ SIGKILL and DDL
def _busy_writer(src: EmbeddedServer, halt: threading.Event) -> threading.Thread:
    def run() -> None:
        with src.client() as c:
            i = 0
            while not halt.is_set():
                i += 1
                c.shop.orders.update_one({"_id": i % 2000}, {"$inc": {"total": 1}})
                c.shop.events.insert_one({"_id": i, "kind": "tick"})
                if i % 7 == 0:
                    c.shop.events.delete_one({"_id": i - 3})
                if i % 50 == 0:
                    with c.start_session() as s, s.start_transaction():
                        c.shop.orders.update_one({"_id": 1}, {"$set": {"txn": i}}, session=s)
                        c.crm.people.insert_one({"_id": f"t{i}"}, session=s)
                time.sleep(0.002)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def assert_chunks_sound(folder: Path) -> None:
    m = manifest(folder)
    chunks = m["chunks"]
    for before, after in itertools.pairwise(chunks):
        assert after["after"] == before["until"], "a gap between chunks"
    listed = {c["key"] for c in chunks if c["key"]}
    for c in chunks:
        if not c["key"]:
            assert c["entries"] == 0  # an idle span
            continue
        data = (folder / c["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == c["sha256"], c["key"]
    assert listed <= {p.relative_to(folder).as_posix() for p in (folder / "oplog").glob("*")} if chunks else True


def test_sigkill_during_the_snapshot_and_while_archiving_then_restore_matches(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src", extra_args=["--sync-on-commit"]).start() as src, \
            EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=20_000)
        folder, log = tmp_path / "backup", tmp_path / "backup.log"
        halt = threading.Event()
        writer = _busy_writer(src, halt)
        slow = ("--batch-size", "200", "--workers", "1")
        try:
            proc = backup(src, folder, *slow, log=log)
            wait_for(lambda: (folder / "snapshots").is_dir() and any((folder / "snapshots").rglob("*.bson.gz")),
                     timeout=120, interval=0.01)
            proc.kill()  # during the snapshot: some namespaces stored, others not
            proc.wait()
            assert complete_snapshots(folder) == 0
            proc = backup(src, folder, *slow, log=log)
            wait_for(lambda: complete_snapshots(folder) == 1, timeout=180)
            for _ in range(2):  # while archiving, at a random moment
                mark = covered(folder)
                wait_for(lambda m=mark: covered(folder) > m, timeout=60)
                time.sleep(random.uniform(0.1, 1.5))
                proc.kill()
                proc.wait()
                time.sleep(1.0)  # the writer goes on while the backup is down
                proc = backup(src, folder, log=log)
            halt.set()
            writer.join(timeout=30)
            with src.client() as c:
                last = newest(c)
            wait_for(lambda: covered(folder) >= last, timeout=60)
            stop(proc)
        finally:
            halt.set()
        assert_chunks_sound(folder)
        restore(folder, dst)
        assert differences(state(dst), state(src)) == []


def test_ddl_during_the_snapshot_is_restored_and_a_rename_it_cannot_replay_retakes_it(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=20_000)
        with src.client() as c:
            c.app.small.insert_many([{"_id": i} for i in range(50)])  # read after shop.orders (the biggest first)
            c.app.dropme.insert_many([{"_id": i} for i in range(10)])
        folder, log = tmp_path / "backup", tmp_path / "backup.log"
        proc = backup(src, folder, "--batch-size", "100", "--workers", "1", log=log)
        try:
            wait_for(lambda: (tmp_path / "backup" / ".tmp").is_dir() and any((folder / ".tmp").iterdir()),
                     timeout=60, interval=0.01)
            with src.client() as c:  # while shop.orders is being read
                c.app.created.insert_many([{"_id": i, "k": i} for i in range(20)])
                c.app.created.create_index("k")
                c.shop.orders.create_index("total")
                c.app.dropme.drop()
                c.app.small.rename("renamed")  # not read yet: its documents are in neither name's oplog
                c.app.renamed.insert_one({"_id": "after"})
            wait_for(lambda: complete_snapshots(folder) == 1, timeout=180)
            with src.client() as c:
                last = newest(c)
            wait_for(lambda: covered(folder) >= last, timeout=60)
        finally:
            stop(proc)
        states = [s["state"] for s in manifest(folder)["snapshots"]]
        assert states == ["abandoned", "complete"], states
        assert "renamed while it was read" in manifest(folder)["snapshots"][0]["reason"]
        restore(folder, dst)
        assert state(dst) == state(src)
        with dst.client() as d:
            assert "total_1" in {ix["name"] for ix in d.shop.orders.list_indexes()}
            assert "k_1" in {ix["name"] for ix in d.app.created.list_indexes()}


# ------------------------------------------------------------------ refusals
def test_bad_requests_are_refused_in_one_line_and_write_nothing(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=200)
        folder = tmp_path / "backup"
        assert run_cli("backup", "--src", src.uri, "--to", str(folder), "--once").code == 0
        m = manifest(folder)
        end = m["covered"]

        def refused(*args: str, match: str) -> None:
            result = run_cli(*args)
            assert result.code == 2, result.text
            lines = result.err.strip().splitlines()
            assert len(lines) == 1 and match in lines[0], result.err
            assert user_namespaces(dst) == set()

        refused("restore", "--from", str(folder), "--dst", dst.uri, "--to-time", "2001-01-01T00:00:00Z",
                match="outside the restorable range")
        refused("restore", "--from", str(folder), "--dst", dst.uri, "--to-time", "soon", match="neither ISO 8601")
        refused("restore", "--from", str(tmp_path / "nowhere"), "--dst", dst.uri, match="does not exist")
        refused("restore", "--from", str(folder), match="--dst is required")
        refused("backup", "--src", src.uri, match="--to is required")
        refused("backup", "--src", "mongodb://x:y@", "--to", str(tmp_path / "b2"), match="--src")
        refused("backup", "--src", src.uri, "--to", str(folder), "--chunk", "often", match="duration")
        other = tmp_path / "notempty"
        other.mkdir()
        (other / "file.txt").write_text("hello")
        refused("backup", "--src", src.uri, "--to", str(other), match="not empty")

        # --dry-run: the plan, nothing written
        result = run_cli("restore", "--from", str(folder), "--dst", dst.uri, "--dry-run")
        assert result.code == 0 and "snapshot" in result.out and "namespace" in result.out, result.text
        assert user_namespaces(dst) == set()

        # a destination that holds data
        with dst.client() as d:
            d.shop.orders.insert_one({"_id": "mine"})
        result = run_cli("restore", "--from", str(folder), "--dst", dst.uri)
        assert result.code == 2 and "shop.orders already holds" in result.err and "--drop" in result.err
        with dst.client() as d:
            assert list(d.shop.orders.find()) == [{"_id": "mine"}]
            d.drop_database("shop")

        # a corrupt chunk: name it. Writes after the snapshot, archived, then one chunk damaged.
        proc = backup(src, folder)
        with src.client() as c:
            c.shop.orders.insert_many([{"_id": f"late{i}"} for i in range(20)])
            last = newest(c)
        wait_for(lambda: covered(folder) >= last, timeout=60)
        stop(proc)
        chunk = manifest(folder)["chunks"][-1]["key"]
        path = folder / chunk
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        refused("restore", "--from", str(folder), "--dst", dst.uri, match=f"oplog chunk {chunk} is corrupt")
        # ... but a time before it still restores
        restore(folder, dst, "--to-time", f"{end.time}:{end.inc}")
        assert raw_docs(dst, "shop.orders").keys() == set(raw_docs(src, "shop.orders")) - {
            bson.encode({"_id": f"late{i}"}) for i in range(20)}


def test_a_gap_in_the_oplog_archive_is_refused_with_its_bounds(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=100)
        folder = tmp_path / "backup"
        proc = backup(src, folder)
        wait_for(lambda: complete_snapshots(folder) == 1, timeout=60)
        with src.client() as c:
            for i in range(3):
                c.shop.orders.insert_one({"_id": f"x{i}"})
                wait_for(lambda n=i: len(manifest(folder)["chunks"]) > n, timeout=30)
            last = newest(c)
        wait_for(lambda: covered(folder) >= last, timeout=60)
        stop(proc)
        doc = manifest(folder)
        assert len(doc["chunks"]) >= 3
        missing = doc["chunks"].pop(1)  # as if a chunk had been lost and unlisted
        (folder / "manifest.json").write_text(bson.json_util.dumps(doc))
        result = run_cli("restore", "--from", str(folder), "--dst", dst.uri)
        assert result.code == 2, result.text
        assert "gap" in result.err and str(missing["after"].time) in result.err, result.err
        assert user_namespaces(dst) == set()
        listing = run_cli("backup", "list", "--from", str(folder))
        assert "GAP" in listing.out


# ------------------------------------------------------------------ selection, renames, mongodump dirs
def test_one_namespace_restored_under_another_name(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=300)
        folder = tmp_path / "backup"
        proc = backup(src, folder)
        wait_for(lambda: complete_snapshots(folder) == 1, timeout=60)
        with src.client() as c:
            c.shop.orders.update_many({"user": 3}, {"$set": {"flag": True}})
            last = newest(c)
        wait_for(lambda: covered(folder) >= last, timeout=60)
        stop(proc)
        restore(folder, dst, "--include", "shop.orders", "--rename", "shop.orders=recovered.orders_copy")
        assert user_namespaces(dst) == {"recovered.orders_copy"}
        assert raw_docs(dst, "recovered.orders_copy") == raw_docs(src, "shop.orders")


def _write_mongodump_dir(src: EmbeddedServer, out: Path, gz: bool = False) -> Timestamp:
    """A dump shaped exactly as mongodump --oplog [--gzip] writes it (canonical extended JSON metadata,
    raw BSON, both gzip'd with --gzip; a plain oplog.bson of the entries during the dump), built from
    the server's own data."""
    with src.client() as c:
        oplog = c.local["oplog.rs"]
        start = oplog.find_one({}, sort=[("$natural", -1)])["ts"]
        (out / "shop").mkdir(parents=True)
        coll = c.shop.get_collection("orders", codec_options=RAW)
        suffix = ".gz" if gz else ""
        with (gzip.open if gz else open)(out / "shop" / f"orders.bson{suffix}", "wb") as f:
            for i, doc in enumerate(coll.find()):
                f.write(doc.raw)
                if i == 10:  # a write during the dump, in its oplog
                    c.shop.orders.update_one({"_id": 5}, {"$set": {"during": True}})
        meta = {"indexes": [dict(ix) for ix in c.shop.orders.list_indexes()],
                "uuid": "0123456789abcdef0123456789abcdef", "collectionName": "orders", "type": "collection"}
        text = bson.json_util.dumps(meta, json_options=bson.json_util.CANONICAL_JSON_OPTIONS).encode()
        (out / "shop" / f"orders.metadata.json{suffix}").write_bytes(gzip.compress(text) if gz else text)
        end = oplog.find_one({}, sort=[("$natural", -1)])["ts"]
        # mongodump --gzip writes its oplog gzip'd under the plain name oplog.bson
        with (gzip.open if gz else open)(out / "oplog.bson", "wb") as f:
            for entry in oplog.with_options(codec_options=RAW).find({"ts": {"$gt": start, "$lte": end}}):
                f.write(entry.raw)
    return end


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_mongodump_directory_restores(tmp_path: Path, gz: bool) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=200)
        _write_mongodump_dir(src, tmp_path / "dump", gz)
        restore(tmp_path / "dump", dst)
        assert raw_docs(dst, "shop.orders") == raw_docs(src, "shop.orders")
        with dst.client() as d:
            assert d.shop.orders.find_one({"_id": 5})["during"] is True
            assert "by_user" in {ix["name"] for ix in d.shop.orders.list_indexes()}


def test_backup_prune_keeps_what_the_window_needs(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=100)
        folder = tmp_path / "backup"
        proc = backup(src, folder, "--snapshot-every", "2s")
        wait_for(lambda: complete_snapshots(folder) >= 3, timeout=120)
        with src.client() as c:
            c.shop.orders.insert_one({"_id": "last"})
            last = newest(c)
        wait_for(lambda: covered(folder) >= last, timeout=60)
        busy = run_cli("backup", "prune", "--from", str(folder), "--keep-days", "0.00001")
        assert busy.code == 2 and "running backup" in busy.err
        running = json.loads(run_cli("status", "--from", str(folder), "--json").out)
        assert running["state"] == "RUNNING" and running["latestRestorable"] is not None, running
        assert running["snapshots"]["complete"] >= 3 and running["archiveLagSeconds"] is not None
        shown = run_cli("status", "--from", str(folder))
        assert shown.code == 0 and "state RUNNING" in shown.out and "latest restore point" in shown.out
        stop(proc)
        stopped = json.loads(run_cli("status", "--from", str(folder), "--json").out)
        assert stopped["state"] == "STOPPED", stopped  # a clean stop says so: retention need not wait
        before = manifest(folder)
        ids = [s["id"] for s in before["snapshots"]]
        assert len(set(ids)) == len(ids), ids  # an idle source's snapshots start alike: never one folder
        began = [s["started"] for s in before["snapshots"]]
        assert all(b - a >= 2 for a, b in itertools.pairwise(began)), began  # every 2 s, not back to back
        result = run_cli("backup", "prune", "--from", str(folder), "--keep-days", str(1 / 86400))  # one second
        assert result.code == 0, result.text
        after = manifest(folder)
        assert len(after["snapshots"]) < len(before["snapshots"])
        for s in before["snapshots"]:
            kept = any(k["id"] == s["id"] for k in after["snapshots"])
            assert (folder / "snapshots" / s["id"]).exists() == kept
        restore(folder, dst)
        assert state(dst) == state(src)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_other_compressions_round_trip(tmp_path: Path, compression: str) -> None:
    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=300)
        folder = tmp_path / "backup"
        assert run_cli("backup", "--src", src.uri, "--to", str(folder), "--once", "--compress", compression).code == 0
        suffix = {"zstd": ".bson.zst", "none": ".bson"}[compression]
        assert (next((folder / "snapshots").iterdir()) / "shop" / f"orders{suffix}").is_file()
        restore(folder, dst)
        assert state(dst) == state(src)


def test_a_password_never_appears_in_the_output(tmp_path: Path, auth_server: EmbeddedServer) -> None:
    from tests.integration.conftest import PASSWORD, auth_uri

    folder = tmp_path / "backup"
    result = run_cli("backup", "--src", auth_uri(auth_server), "--to", str(folder), "--once", "--log-format", "json")
    assert result.code == 0, result.text
    assert PASSWORD not in result.text and PASSWORD not in (folder / "manifest.json").read_text()
    wrong = run_cli("backup", "--src", auth_uri(auth_server, "wrong-pw"), "--to", str(tmp_path / "b2"), "--once")
    assert wrong.code == 3 and "wrong-pw" not in wrong.text





def test_backup_to_s3_survives_sigkill_and_restores(tmp_path: Path, s3: S3Server) -> None:
    env = s3.env()
    url = "s3://backups/prod/rs0"

    def s3_manifest() -> dict[str, Any]:
        try:
            body = s3.client().get_object(Bucket="backups", Key="prod/rs0/manifest.json")["Body"].read()
        except Exception:
            return {"snapshots": [], "chunks": [], "covered": Timestamp(0, 0)}
        return bson.json_util.loads(body)

    with EmbeddedServer(tmp_path / "src", extra_args=["--sync-on-commit"]).start() as src, \
            EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=3000)
        args = ("backup", "--src", src.uri, "--to", url, "--chunk", "1s", "--log-format", "json")
        proc = start_cli(*args, env=env, log=tmp_path / "backup.log")
        halt = threading.Event()
        writer = _busy_writer(src, halt)
        try:
            wait_for(lambda: any(s["state"] == "complete" for s in s3_manifest()["snapshots"]), timeout=120)
            wait_for(lambda: len(s3_manifest()["chunks"]) >= 2, timeout=60)
            proc.kill()
            proc.wait()
            proc = start_cli(*args, env=env, log=tmp_path / "backup.log")
            time.sleep(2)
            halt.set()
            writer.join(timeout=30)
            with src.client() as c:
                last = newest(c)
            wait_for(lambda: s3_manifest()["covered"] >= last, timeout=60)
            stop(proc)
        finally:
            halt.set()
        m = s3_manifest()
        for before, after in itertools.pairwise(m["chunks"]):
            assert after["after"] == before["until"]
        listing = run_cli("backup", "list", "--from", url, env=env)
        assert listing.code == 0 and "restorable:" in listing.out, listing.text
        result = run_cli("restore", "--from", url, "--dst", dst.uri, env=env)
        assert result.code == 0, result.text
        assert differences(state(dst), state(src)) == []


def test_a_cluster_backup_restores_every_shard_to_one_time(tmp_path: Path) -> None:
    """No mongos here: independent servers stand for the shards and the config server of one
    backup (--src NAME=URI); every one restores to one common time."""
    servers = {n: EmbeddedServer(tmp_path / n).start() for n in ("s0", "s1", "cfg", "d0", "d1", "dcfg")}
    try:
        for name in ("s0", "s1", "cfg"):
            with servers[name].client() as c:
                c.app.items.insert_many([{"_id": f"{name}-{i}", "n": i} for i in range(200)])
        folder = tmp_path / "backup"
        args = [a for n in ("s0", "s1", "cfg") for a in ("--src", f"{n}={servers[n].uri}")]
        proc = start_cli("backup", *args, "--to", str(folder), "--chunk", "1s", log=tmp_path / "backup.log")

        def shard_complete(n: str) -> bool:
            return complete_snapshots(folder / n) == 1

        wait_for(lambda: all(shard_complete(n) for n in ("s0", "s1", "cfg")), timeout=120)
        marks: dict[str, Model] = {}
        with servers["s0"].client() as c0, servers["s1"].client() as c1:
            c0.app.items.update_many({}, {"$set": {"phase": 1}})
            c1.app.items.delete_many({"n": {"$lt": 50}})
            time.sleep(1.1)  # the next writes fall in a later second than the restore time
            at = max(newest(c0), newest(c1))
            marks = {n: state(servers[n]) for n in ("s0", "s1", "cfg")}
            time.sleep(1.1)
            c0.app.items.delete_many({})
            c1.app.items.update_many({}, {"$set": {"phase": 2}})
            last = {"s0": newest(c0), "s1": newest(c1)}
        # every member, the idle config server too, archived past the last write: the latest common time
        wait_for(lambda: all(covered(folder / n) >= max(last.values()) for n in ("s0", "s1", "cfg")), timeout=60)
        stop(proc)
        assert (folder / "cluster.json").is_file()

        dsts = [a for n, d in (("s0", "d0"), ("s1", "d1"), ("cfg", "dcfg")) for a in ("--dst", f"{n}={servers[d].uri}")]
        missing = run_cli("restore", "--from", str(folder), "--dst", f"s0={servers['d0'].uri}")
        assert missing.code == 2 and "missing s1, cfg" in missing.err, missing.text
        result = run_cli("restore", "--from", str(folder), *dsts, "--to-time", f"{at.time}:{at.inc}")
        assert result.code == 0, result.text
        for n, d in (("s0", "d0"), ("s1", "d1"), ("cfg", "dcfg")):
            assert differences(state(servers[d]), marks[n]) == [], n
        result = run_cli("restore", "--from", str(folder), *dsts, "--drop")  # the latest common time
        assert result.code == 0, result.text
        for n, d in (("s0", "d0"), ("s1", "d1"), ("cfg", "dcfg")):
            assert differences(state(servers[d]), state(servers[n])) == [], n
    finally:
        for server in servers.values():
            server.stop()


def test_a_backup_whose_oplog_rolled_over_while_it_was_down_stops_and_says_so(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "src", extra_args=["--oplog-max-entries", "100"]).start() as src:
        seed(src, docs=100)
        folder = tmp_path / "backup"
        proc = backup(src, folder)
        wait_for(lambda: complete_snapshots(folder) == 1, timeout=60)
        proc.kill()
        proc.wait()
        with src.client() as c:
            for i in range(2600):  # SecantusDB trims its oplog to the last 100 entries every 1000 writes
                c.shop.orders.insert_one({"_id": f"gone{i}"})
        result = run_cli("backup", "--src", src.uri, "--to", str(folder), "--chunk", "1s")
        assert result.code == 4, result.text
        assert "no longer holds" in result.err and "start a new backup" in result.err, result.err
        assert run_cli("backup", "list", "--from", str(folder)).code == 0  # still restorable up to its end
