"""`mongoferry sync` end to end: a live writer, kills of every process, DDL, renames, HTTP control, commit."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import SON
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mongoferry.dev.embedded import EmbeddedServer, free_port
from tests.integration.conftest import raw_docs, run_cli, start_cli, user_namespaces
from tests.integration.conftest import wait_for as _wait_for

META_DB = "mongoferry_meta"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Starts syncs and writers; whatever a test leaves running is stopped here (writers first)."""
    h = Harness(tmp_path)
    yield h
    h.cleanup()


# ---------------------------------------------------------------------------------------------- tests
def test_live_writer_during_copy_and_sync_converges_byte_exact(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=3000, orders=300)
    writer = harness.writer(src, seed=1).start()
    wait_for(lambda: writer.total() >= 50, timeout=30)  # the copy starts under a live writer
    sync = harness.sync(src, dst, "--no-write-block", "--batch-size", "50", "--workers", "2")
    sync.wait_state("COPYING", "CATCHING_UP", "RUNNING", timeout=60)
    with src.client() as c:
        c.app.users.create_index([("n", 1), ("name", -1)], name="n_name")  # during the copy (or just after)
    sync.wait_state("RUNNING", timeout=120)
    with src.client() as c:
        c.app.orders.create_index("user", name="by_user")  # while running
        c.app.users.create_index("sub.a.b", name="nested_b", sparse=True)
    wait_for(lambda: writer.has_done_everything() and writer.total() >= 600, timeout=120,
             what=lambda: f"writer {writer.counts} {writer.last_error}")
    time.sleep(2)
    writer.stop()
    assert writer.errors == 0, writer.last_error
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_identical(src, dst, expect={"app.users", "app.orders", "shop.items"})
    assert {"n_name", "by_user", "nested_b"} <= all_index_names(dst)
    progress_events = sync.last_progress["events"]
    assert progress_events["txn"] > 0 and progress_events["update"] > 0 and progress_events["delete"] > 0
    assert progress_events["ddl"] >= 2  # the indexes built while running came as events


def test_two_readers_of_one_collection_under_writes_ddl_and_sigkill_converge(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    """A second reader from the collection's end (forced here: this server's cursors are costly to
    open), with the application writing to the collection, DDL during the copy, and a SIGKILL while
    both readers run: the destination ends byte-identical."""
    from tests.integration.test_copy import seed_mixed_ids

    src, dst = servers
    seed_mixed_ids(src, 60_000)
    with src.client() as c:
        c.mixed.side.insert_many([{"_id": i, "n": i} for i in range(300)])
    env = {"MONGOFERRY_AUTO_OPEN_SHARE": "1000", "MONGOFERRY_AUTO_GAIN": "0"}
    sync = harness.sync(src, dst, "--no-write-block", "--batch-size", "200", "--max-docs-per-s", "3000", env=env)
    stop = threading.Event()

    def app() -> None:  # inserts at both ends of the _id order, updates and deletes across it
        rng = random.Random(5)
        with src.client() as c:
            k = 0
            while not stop.is_set():
                k += 1
                c.mixed.docs.insert_one({"_id": -k, "v": "new"})
                c.mixed.docs.insert_one({"_id": f"zz{k:06d}", "v": "new"})
                i = rng.randrange(60_000)
                c.mixed.docs.update_one({"i": i}, {"$set": {"v": f"u{k}"}})
                c.mixed.docs.delete_one({"i": rng.randrange(60_000)})
                time.sleep(0.01)

    writer = threading.Thread(target=app, daemon=True)
    writer.start()
    try:
        def second_reader_wrote() -> bool:
            with dst.client() as c:
                return any(p.get("docs", 0) >= 1000 for p in c.mongoferry_meta.partitions.find({"descending": True}))

        wait_for(second_reader_wrote, timeout=180)
        with src.client() as c:  # DDL while both readers copy
            c.mixed.docs.create_index("i", name="by_i")
            c.mixed.side.rename("side2")
            c.mixed.fresh.insert_one({"_id": 1})
        sync.kill()
        sync.start()
        with src.client() as c:
            c.mixed.fresh.drop()
        sync.wait_state("RUNNING", timeout=240)
    finally:
        stop.set()
        writer.join(30)
    time.sleep(2)
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert "copy plan: trying a second reader from the end" in sync.log_text()
    assert_identical(src, dst, expect={"mixed.docs", "mixed.side2"})
    assert "by_i" in all_index_names(dst)


def test_an_update_adding_fields_through_two_operators_keeps_the_source_field_order(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    """One update that adds a field with $set and another with $inc: the destination must hold the fields in
    the order the source wrote them (byte-exact), whatever order the change event lists them in."""
    src, dst = servers
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "t": 0} for i in range(4)])
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    with src.client() as c:
        c.app.users.update_one({"_id": 0}, SON([("$set", {"extra": 7}), ("$inc", {"n": -2})]))
        c.app.users.update_one({"_id": 1}, SON([("$set", {"n": 7}), ("$inc", {"extra": -2})]))
        c.app.users.update_one({"_id": 2}, SON([("$inc", {"n": 1}), ("$set", {"extra": 2})]))
        c.app.users.update_one({"_id": 3}, {"$set": SON([("zz", 1), ("aa", 2)])})
    wait_for(lambda: sync.events_total() >= 4, timeout=60)
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_identical(src, dst, expect={"app.users"})


def test_updates_written_while_the_catch_up_reads_the_source_are_not_lost(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    """Events of the copy window are resolved by reading the source; a write that lands while such a read
    runs must still be applied afterwards (the read may not have seen it)."""
    src, dst = servers
    n = 2000
    with src.client() as c:
        c.race.docs.insert_many([{"_id": i, "n": 0, "pad": "x" * 200} for i in range(n)])
    sync = harness.sync(src, dst, "--no-write-block", "--batch-size", "20", "--workers", "1")
    sync.wait_state("COPYING", timeout=60)
    with src.client() as c:
        c.race.docs.update_many({}, {"$inc": {"n": 1}})  # n events in the copy window: all looked up later
    ids = list(range(n))
    random.Random(11).shuffle(ids)
    failures: list[str] = []

    def one_more_field_each() -> None:  # each document gets one more field, once, across the catch-up
        try:
            with src.client() as c:
                for i in ids:
                    c.race.docs.update_one({"_id": i}, {"$set": {"late": i}})
                    time.sleep(0.005)
        except Exception as exc:
            failures.append(repr(exc))

    late = threading.Thread(target=one_more_field_each, daemon=True)
    late.start()
    sync.wait_state("CATCHING_UP", "RUNNING", timeout=120)
    late.join(180)
    assert not late.is_alive() and not failures, failures
    sync.wait_state("RUNNING", timeout=120)
    wait_for(lambda: sync.progress()["events"]["update"] >= 2 * n, timeout=120)
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_identical(src, dst, expect={"race.docs"})


def test_sigkill_in_copy_catch_up_and_steady_state_then_commit_is_identical(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, dst = servers
    seed_big(src, 20_000)
    seed_app(src, users=500, orders=50)
    writer = harness.writer(src, seed=2).start()
    sync = harness.sync(src, dst, "--no-write-block", "--batch-size", "50", "--workers", "1", "--max-batch", "20")
    kills: list[str] = []

    # 1. during the copy
    wait_for(lambda: copied_docs(dst) >= 4000, timeout=180)
    assert sync.progress()["state"] == "COPYING"
    sync.kill()
    kills.append("COPYING")
    copied_before = copied_docs(dst)
    assert 0 < copied_before < 21_000
    with src.client() as c:  # a burst while it is down: the catch-up has something to chew on
        c.big.docs.update_many({"_id": {"$lt": 3000}}, {"$inc": {"k.n": 1}, "$set": {"burst": 1}})

    # 2. during the catch-up
    sync.start()
    seen = sync.wait_state("CATCHING_UP", timeout=240, interval=0.02, fail_on=("RUNNING",))
    assert seen == "CATCHING_UP"
    sync.kill()
    kills.append("CATCHING_UP")
    assert "sync resuming" in sync.log_text()
    with src.client() as c:
        c.big.docs.update_many({"_id": {"$gte": 18_000}}, {"$inc": {"k.n": 1}})

    # 3. in steady state, twice
    for _ in range(2):
        sync.start()
        sync.wait_state("RUNNING", timeout=240)
        time.sleep(1.5)
        sync.kill()
        kills.append("RUNNING")

    sync.start()
    sync.wait_state("RUNNING", timeout=240)
    time.sleep(1)
    writer.stop()
    assert writer.errors == 0, writer.last_error
    assert writer.total() > 200
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert kills == ["COPYING", "CATCHING_UP", "RUNNING", "RUNNING"]
    assert_identical(src, dst, expect={"big.docs", "app.users", "app.orders"})


def test_source_and_destination_killed_and_restarted_sync_recovers_by_itself(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=500, orders=50)
    writer = harness.writer(src, seed=3, tolerate_errors=True).start()
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    for server in (src, dst, src):
        time.sleep(1.5)
        before = writer.total()
        assert server.proc is not None
        old_pid = server.proc.pid
        server.kill()
        time.sleep(1)
        server.start()  # same port, same data
        assert server.proc is not None and server.proc.pid != old_pid
        assert sync.alive(), sync.log_tail()
        wait_for(lambda b=before: writer.total() > b + 50, timeout=60)  # the writer is back at work
        events = sync.events_total()
        wait_for(lambda e=events: sync.events_total() > e, timeout=90)  # and so is the sync
    time.sleep(1)
    writer.stop()
    assert sync.alive(), sync.log_tail()  # never restarted: it rode out every outage by itself
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_identical(src, dst, expect={"app.users", "app.orders"})


def test_lost_history_after_a_stop_is_exit_4_with_a_resync_hint(tmp_path: Path, harness: Harness) -> None:
    src = EmbeddedServer(tmp_path / "src", extra_args=["--sync-on-commit", "--oplog-max-entries", "100"]).start()
    dst = EmbeddedServer(tmp_path / "dst", extra_args=["--sync-on-commit"]).start()
    harness.on_cleanup(src.stop)
    harness.on_cleanup(dst.stop)
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "n": 0} for i in range(100)])
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    with src.client() as c:
        c.app.users.update_one({"_id": 1}, {"$inc": {"n": 1}})
    wait_for(lambda: sync.events_total() >= 1, timeout=30)
    assert sync.terminate() == 0, sync.log_tail()
    with src.client() as c:
        for i in range(2600):  # SecantusDB trims its oplog to the last 100 entries every 1000 writes
            c.app.users.update_one({"_id": i % 100}, {"$inc": {"n": 1}})
            if i % 10 == 0:
                time.sleep(0.005)
    r = run_cli(*sync.args, timeout=120)
    assert r.code == 4, r.text
    assert "no longer holds the saved position" in r.err
    assert "resync" in r.err and "--drop-dst" in r.err
    assert len([line for line in r.err.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in r.text


def test_ddl_while_running_is_replicated(servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, dst = servers
    with src.client() as c:
        c.ddl.base.insert_many([{"_id": i, "k": i, "a": -i} for i in range(50)])
        c.ddl.torename.insert_many([{"_id": i} for i in range(10)])
        c.ddl.todrop.insert_many([{"_id": i} for i in range(10)])
        c.ddl.validated.insert_one({"_id": 1, "a": 1})
        c.gone.x.insert_many([{"_id": i} for i in range(5)])
        c.gone.y.insert_one({"_id": 1})
        c.ddl.command("collMod", "validated", validator={"a": {"$exists": True}})
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    with src.client() as c:
        db = c.ddl
        db.create_collection("capped", capped=True, size=65536, max=20)
        db.capped.insert_many([{"_id": i, "n": i} for i in range(30)])
        db.create_collection("schema", validator={"$jsonSchema": {"required": ["name"]}},
                             validationLevel="moderate")
        db.schema.insert_one({"_id": 1, "name": "x"})
        db.base.create_index("k", name="k_1")
        db.base.create_index([("a", 1), ("k", -1)], name="a_k")
        db.base.create_index("a", name="temp")
        db.base.drop_index("temp")
        db.command("collMod", "validated", validator={"b": {"$exists": True}}, validationAction="warn")
        db.command("collMod", "schema", validationLevel="strict")
        c.admin.command("renameCollection", "ddl.torename", to="ddl.renamed")
        db.renamed.insert_one({"_id": "after-rename"})
        db.drop_collection("todrop")
        c.drop_database("gone")
        db.base.update_many({"_id": {"$lt": 5}}, {"$set": {"touched": True}})
    wait_for(lambda: catalog_of(dst, "ddl") == catalog_of(src, "ddl"), timeout=60)
    assert "gone" not in list_dbs(dst)
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert catalog_of(dst, "ddl") == catalog_of(src, "ddl")
    cat = catalog_of(dst, "ddl")
    assert cat["capped"]["options"].get("capped") is True
    assert cat["validated"]["options"].get("validator") == {"b": {"$exists": True}}
    assert cat["schema"]["options"].get("validationLevel") == "strict"
    assert set(cat["base"]["indexes"]) == {"_id_", "k_1", "a_k"}
    assert "torename" not in cat and "todrop" not in cat and "renamed" in cat
    assert_identical(src, dst, expect={"ddl.base", "ddl.capped", "ddl.schema", "ddl.renamed", "ddl.validated"})
    assert sync.last_progress["events"]["ddl"] >= 8


def test_rename_database_with_live_changes_and_http_off(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                      harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=300, orders=30, db="old")
    with src.client() as c:
        c.keep.k.insert_many([{"_id": i} for i in range(5)])
    writer = harness.writer(src, seed=6, db="old", second_db=None).start()
    sync = harness.sync(src, dst, "--no-write-block", "--rename", "old=new", http=False)
    wait_for(lambda: job_state(dst) == "replaying", timeout=120)
    with src.client() as c:
        c.old.users.create_index([("n", -1)], name="by_n_desc")
        c.old.later.insert_many([{"_id": i, "late": True} for i in range(7)])  # a collection born while running
    wait_for(lambda: writer.total() >= 300, timeout=120)
    writer.stop()
    assert writer.errors == 0, writer.last_error
    wait_for(lambda: status_json(dst).get("state") == "RUNNING", timeout=60, interval=0.5)
    r = run_cli("commit", "--dst", dst.uri, timeout=180)
    assert r.code == 0, r.text
    assert "COMMITTED" in r.out
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert not {ns for ns in user_namespaces(dst) if ns.startswith("old.")}
    for coll in ("users", "orders", "later"):
        assert_same_docs(src, f"old.{coll}", dst, f"new.{coll}")
    assert_same_docs(src, "keep.k", dst, "keep.k")
    assert index_names(dst, "new.users") == index_names(src, "old.users")
    assert "by_n_desc" in index_names(dst, "new.users")


def test_http_status_pause_resume_and_commit_command(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                    harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=300, orders=30)
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    writer = harness.writer(src, seed=7).start()

    health = httpx.get(sync.url("/healthz"), timeout=10)
    assert health.status_code == 200 and health.json()["ok"] is True
    wait_for(lambda: sync.events_total() > 20, timeout=60)
    metrics = httpx.get(sync.url("/metrics"), timeout=10)
    assert metrics.status_code == 200
    assert "mongoferry_lag_seconds" in metrics.text
    assert 'mongoferry_events_applied_total{type="update"}' in metrics.text
    assert 'mongoferry_state{state="RUNNING"} 1.0' in metrics.text

    # pause: nothing more is applied while the writer keeps writing
    r = httpx.post(sync.url("/api/v1/pause"), timeout=10)
    assert r.status_code == 200 and r.json()["success"] is True
    sync.wait_state("PAUSED", timeout=30)
    frozen = sync.progress()["events"]
    written = writer.total()
    wait_for(lambda: writer.total() > written + 100, timeout=60)
    assert sync.progress()["events"] == frozen
    assert sync.progress()["state"] == "PAUSED"
    wait_for(lambda: status_json(dst).get("state") == "PAUSED", timeout=30, interval=0.5)  # persisted

    r = httpx.post(sync.url("/api/v1/resume"), timeout=10)
    assert r.status_code == 200 and r.json()["success"] is True
    sync.wait_state("RUNNING", "CATCHING_UP", timeout=30)
    wait_for(lambda: sync.events_total() > sum(frozen.values()), timeout=60)
    writer.stop()
    assert writer.errors == 0, writer.last_error
    sync.wait_state("RUNNING", timeout=60)
    wait_for(lambda: docs_match(src, dst, "app.users"), timeout=60)  # caught up with everything

    # `mongoferry status` reads the same thing the HTTP API serves
    def same_as_http() -> bool:
        st = status_json(dst)
        return st.get("state") == "RUNNING" and st.get("events") == sync.progress()["events"]

    wait_for(same_as_http, timeout=30, interval=0.5)
    st = status_json(dst)
    assert st["job"]["kind"] == "sync" and st["job"]["state"] == "replaying"
    assert {n["source"] for n in st["namespaces"]} >= {"app.users", "app.orders"}
    table = run_cli("status", "--dst", dst.uri, env={"COLUMNS": "200"})
    assert table.code == 0, table.text
    assert "sync state RUNNING" in table.out
    assert "destination count" in table.out and "app.users" in table.out and "delta" in table.out
    assert not table.out.lstrip().startswith("{")

    r2 = run_cli("commit", "--dst", dst.uri, timeout=180)
    assert r2.code == 0, r2.text
    assert "COMMITTED" in r2.out
    assert sync.wait_exit(120) == 0, sync.log_tail()
    final = status_json(dst)
    assert final["state"] == "COMMITTED" and final["job"]["state"] == "committed"
    assert_identical(src, dst, expect={"app.users", "app.orders"})


def test_commit_with_write_blocking_on_a_server_without_it_fails_visibly_and_keeps_running(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=100, orders=10)
    sync = harness.sync(src, dst)  # no --no-write-block
    sync.wait_state("RUNNING", timeout=120)
    r = httpx.post(sync.url("/api/v1/commit"), timeout=10)
    assert r.status_code == 200 and r.json()["success"] is True
    wait_for(lambda: (sync.progress()["lastError"] or "").startswith("commit failed"), timeout=60)
    p = sync.progress()
    assert "setUserWriteBlockMode" in p["lastError"] and "--no-write-block" in p["lastError"]
    assert p["errors"] >= 1
    sync.wait_state("COMMIT_FAILED", timeout=30)  # the state says so, and it cannot commit as it is
    assert sync.progress()["canCommit"] is False
    assert sync.alive(), sync.log_tail()
    assert '"commit failed"' in sync.log_text()
    # still replicating after the failed commit
    with src.client() as c:
        c.app.users.update_one({"_id": 5}, {"$set": {"after": "failed-commit"}})
        c.app.users.insert_one({"_id": "new-after-failure"})
    wait_for(lambda: docs_match(src, dst, "app.users"), timeout=60)
    # and `mongoferry commit` reports the same failure with a non-zero exit
    r2 = run_cli("commit", "--dst", dst.uri, timeout=120)
    assert r2.code == 1, r2.text
    assert "commit failed" in r2.out and "setUserWriteBlockMode" in r2.out
    assert sync.alive(), sync.log_tail()
    assert job_state(dst) == "replaying"
    # The operator stopped the writers: the same sync commits without write blocking, no restart.
    r3 = httpx.post(sync.url("/api/v1/commit"), json={"writeBlock": "no"}, timeout=10)
    assert r3.status_code == 400, r3.text
    r3 = httpx.post(sync.url("/api/v1/commit"), json={"writeBlock": False}, timeout=10)
    assert r3.status_code == 200 and r3.json()["success"] is True
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert job_state(dst) == "committed"
    assert_identical(src, dst, expect={"app.users", "app.orders"})


def test_oplog_capture_converges_under_a_writer(servers: tuple[EmbeddedServer, EmbeddedServer],
                                               harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=3000, orders=150)
    writer = harness.writer(src, seed=9).start()
    sync = harness.sync(src, dst, "--no-write-block", "--capture", "oplog", "--batch-size", "20", "--workers", "1")
    # SecantusDB shows oplog holes: a tailable cursor catching up with writes in flight passes entries
    # that appear behind it; the capture reads fresh ranges again (source/capture.py, SETTLE_S). The
    # writer keeps writing across that moment.
    wait_for(lambda: sync.copied() >= 1500, timeout=120, interval=0.02)
    sync.wait_state("RUNNING", timeout=120)
    with src.client() as c:
        c.app.users.create_index([("v", 1), ("n", 1)], name="v_n")
    wait_for(lambda: writer.has_done_everything() and writer.total() >= 400, timeout=120,
             what=lambda: f"writer {writer.counts} {writer.last_error}")
    writer.stop()
    assert writer.errors == 0, writer.last_error
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert '"capture": "oplog"' in sync.log_text()
    assert_identical(src, dst, expect={"app.users", "app.orders", "shop.items"})
    assert "v_n" in index_names(dst, "app.users")
    assert sync.last_progress["events"]["txn"] > 0


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("http", 2, "--http 'nonsense' is not HOST:PORT"),
        ("unreachable", 3, "cannot reach the source"),
    ],
)
def test_sync_bad_input_is_one_line_and_writes_nothing(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                      case: str, code: int, needle: str) -> None:
    src, dst = servers
    with src.client() as c:
        c.app.users.insert_one({"_id": 1})
    src_uri = src.uri if case == "http" else "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500"
    http = "nonsense" if case == "http" else f"127.0.0.1:{free_port()}"
    r = run_cli("sync", "--src", src_uri, "--dst", dst.uri, "--http", http, "--connect-timeout", "2",
                "--no-write-block", timeout=60)
    assert r.code == code, r.text
    assert needle in r.err
    assert "Traceback" not in r.text
    assert len([line for line in r.err.splitlines() if line.strip()]) == 1
    assert r.err.startswith("error:")
    assert user_namespaces(dst) == set()


# ---------------------------------------------------------------------------------------------- helpers
class SyncProcess:
    """One `mongoferry sync` command line, started (and restarted) as a child process."""

    def __init__(self, src: EmbeddedServer, dst: EmbeddedServer, log: Path, extra: tuple[str, ...],
                 http: bool, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = env or {}
        self.args = ("sync", "--src", src.uri, "--dst", dst.uri, "--http",
                     f"127.0.0.1:{self.port}" if http else "off", "--log-format", "json", *extra)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_progress: dict[str, Any] = {}

    def start(self) -> SyncProcess:
        assert not self.alive()
        self.proc = start_cli(*self.args, env=self.env, log=self.log)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def progress(self) -> dict[str, Any]:
        r = httpx.get(self.url("/api/v1/progress"), timeout=10)
        r.raise_for_status()
        self.last_progress = r.json()
        return self.last_progress

    def copied(self) -> int:
        """Documents copied so far, 0 while the HTTP server is not up yet."""
        try:
            return int(self.progress()["copy"]["copiedDocs"])
        except httpx.HTTPError:
            return 0

    def events_total(self) -> int:
        return sum(self.progress()["events"].values())

    def wait_state(self, *states: str, timeout: float = 60, interval: float = 0.1,
                   fail_on: tuple[str, ...] = ()) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"sync exited with {self.proc and self.proc.poll()} while waiting for "
                                     f"{states}:\n{self.log_tail()}")
            try:
                state = str(self.progress()["state"])
            except httpx.HTTPError:
                state = ""
            if state in states:
                return state
            if state in fail_on:
                raise AssertionError(f"sync reached {state} before {states}")
            time.sleep(interval)
        raise AssertionError(f"sync not in {states} within {timeout}s (last {self.last_progress}):\n"
                             f"{self.log_tail()}")

    def commit_via_http(self) -> None:
        r = httpx.post(self.url("/api/v1/commit"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["success"] is True
        wait_for(self._committed_or_gone, timeout=120, what=lambda: f"{self.last_progress}\n{self.log_tail()}")

    def _committed_or_gone(self) -> bool:
        if not self.alive():
            return True
        with contextlib.suppress(httpx.HTTPError):
            return self.progress()["state"] == "COMMITTED"
        return False

    def kill(self) -> None:
        assert self.proc is not None and self.alive()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def cleanup(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)


class Writer:
    """An application writing to the source from a thread, rate-limited: every kind of change a sync must replay.

    Documents of `{db}.users` are keyed 0…; each op picks one at random. Inserts reuse deleted _ids with new
    content; `t` cycles int → string → subdocument; transactions span `users` and `orders`.
    """

    KINDS = ("insert", "reinsert", "set_inc_unset", "nested", "push", "pull", "set_index", "pop", "delete",
             "type_change", "replace", "txn", "second_db")

    def __init__(self, server: EmbeddedServer, seed: int, db: str = "app", second_db: str | None = "shop",
                 tolerate_errors: bool = False, burst: int = 40) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.db = db
        self.second_db = second_db
        self.tolerate_errors = tolerate_errors
        self.burst = burst
        self.stopping = threading.Event()
        self.hold = threading.Event()  # set: pause between two operations
        self.held = threading.Event()  # set by the thread once it is paused (no operation in flight)
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.counts: Counter[str] = Counter()
        self.errors = 0
        self.last_error = ""
        self.alive: set[Any] = set()
        self.deleted: list[Any] = []
        self.orders: list[Any] = []
        self.version = 0
        self.next_order = 10_000_000

    def start(self) -> Writer:
        with self.server.client() as c:
            self.alive = {d["_id"] for d in c[self.db].users.find({}, projection={"_id": 1})}
            self.orders = [d["_id"] for d in c[self.db].orders.find({}, projection={"_id": 1})]
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(120)
        assert not self.thread.is_alive(), "the writer did not stop"

    def pause(self) -> None:
        """Return once no operation is in flight and none will start until resume()."""
        self.hold.set()
        assert self.held.wait(60), "the writer did not pause"

    def resume(self) -> None:
        self.held.clear()
        self.hold.clear()

    def total(self) -> int:
        return sum(self.counts.values())

    def has_done_everything(self) -> bool:
        kinds = [k for k in self.KINDS if k != "second_db" or self.second_db]
        return all(self.counts[k] > 0 for k in kinds)

    def _run(self) -> None:
        client: MongoClient[dict[str, Any]] = self.server.client(serverSelectionTimeoutMS=3000,
                                                                 connectTimeoutMS=2000, socketTimeoutMS=10_000)
        try:
            while not self.stopping.is_set():
                if self.hold.is_set():
                    self.held.set()
                    self.stopping.wait(0.05)
                    continue
                kind = self._pick()
                try:
                    if self._do(client, kind):
                        self.counts[kind] += 1
                except PyMongoError as exc:
                    self.errors += 1
                    self.last_error = f"{kind}: {type(exc).__name__}: {exc}"
                    if not self.tolerate_errors:
                        self.stopping.wait(0.2)
                    else:
                        self.stopping.wait(0.3)
                except Exception as exc:  # never let the thread die with an unhandled exception
                    self.errors += 1
                    self.last_error = f"{kind}: unexpected {type(exc).__name__}: {exc}"
                self.stopping.wait(self.rng.uniform(0.005, 0.01))
                if self.total() % self.burst == 0:
                    # think time: the application pauses now and then, as real ones do; without it a 2-core
                    # machine running two servers, the writer and the sync leaves the sync no idle moment
                    self.stopping.wait(self.rng.uniform(0.6, 0.8))
        finally:
            client.close()

    def _pick(self) -> str:
        r = self.rng.random()
        if r < 0.12 or len(self.alive) < 20:
            return "reinsert" if self.deleted and self.rng.random() < 0.5 else "insert"
        weights = {"set_inc_unset": 12, "nested": 10, "push": 6, "pull": 4, "set_index": 5, "pop": 4,
                   "delete": 8, "type_change": 8, "replace": 6, "txn": 8, "second_db": 5 if self.second_db else 0}
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]

    def _doc(self, _id: Any) -> dict[str, Any]:
        self.version += 1
        v = self.version
        return {"_id": _id, "v": v, "n": self.rng.randint(0, 1000), "name": f"user-{_id}-{v}", "t": 1,
                "extra": "here", "sub": {"a": {"b": v, "c": [1, 2]}, "x": "y"}, "arr": [1, 2, 3, v % 7],
                "tags": ["a", "b"]}

    def _target(self) -> Any:
        return self.rng.choice(sorted(self.alive, key=str))

    def _do(self, c: MongoClient[dict[str, Any]], kind: str) -> bool:
        users, orders = c[self.db].users, c[self.db].orders
        rng = self.rng
        if kind == "insert":
            _id = max((i for i in self.alive | set(self.deleted) if isinstance(i, int)), default=-1) + 1
            users.insert_one(self._doc(_id))
            self.alive.add(_id)
            return True
        if kind == "reinsert":
            _id = self.deleted.pop(rng.randrange(len(self.deleted)))
            doc = self._doc(_id)
            doc["reborn"] = True
            doc["name"] = {"first": "re", "last": str(self.version)}  # different content and types
            users.insert_one(doc)
            self.alive.add(_id)
            return True
        _id = self._target()
        if kind == "set_inc_unset":
            if rng.random() < 0.5:
                users.update_one({"_id": _id}, {"$set": {"name": f"n{rng.random()}"}, "$inc": {"n": 1},
                                                "$unset": {"extra": ""}})
            else:
                users.update_one({"_id": _id}, {"$set": {"extra": rng.randint(0, 9)}, "$inc": {"n": -2}})
        elif kind == "nested":
            users.update_one({"_id": _id}, {"$set": {"sub.a.b": rng.randint(0, 99), "sub.new.deep": {"k": 1}},
                                            "$unset": {"sub.x": ""}, "$inc": {"sub.a.c.0": 1}})
        elif kind == "push":
            users.update_one({"_id": _id}, {"$push": {"arr": rng.randint(0, 9)}, "$addToSet": {"tags": "z"}})
        elif kind == "pull":
            users.update_one({"_id": _id}, {"$pull": {"arr": rng.randint(0, 9), "tags": "a"}})
        elif kind == "set_index":
            users.update_one({"_id": _id, "arr.1": {"$exists": True}}, {"$set": {"arr.1": rng.random()}})
        elif kind == "pop":
            users.update_one({"_id": _id}, {"$pop": {"arr": rng.choice([1, -1])}})
        elif kind == "delete":
            users.delete_one({"_id": _id})
            self.alive.discard(_id)
            self.deleted.append(_id)
        elif kind == "type_change":
            doc = users.find_one({"_id": _id}, projection={"t": 1}) or {}
            t = doc.get("t")
            nxt: Any = "two" if isinstance(t, int) else {"three": 3, "list": [t]} if isinstance(t, str) else 1
            users.update_one({"_id": _id}, {"$set": {"t": nxt}})
        elif kind == "replace":
            users.replace_one({"_id": _id}, {"replaced": self.version, "n": 0, "name": "r", "t": 0,
                                             "arr": [9, 8, 7], "sub": {"a": {"b": 0, "c": [0]}}, "tags": []})
        elif kind == "txn":
            self.next_order += 1
            gone = self.orders[rng.randrange(len(self.orders))] if self.orders and rng.random() < 0.5 else None
            with c.start_session() as s, s.start_transaction():
                users.update_one({"_id": _id}, {"$inc": {"n": 100}, "$push": {"arr": -1}}, session=s)
                orders.insert_one({"_id": self.next_order, "user": _id, "amount": rng.randint(1, 500)},
                                  session=s)
                if gone is not None:
                    orders.delete_one({"_id": gone}, session=s)
                elif self.orders:
                    orders.update_one({"_id": self.orders[-1]}, {"$inc": {"amount": 1}}, session=s)
            self.orders = [o for o in self.orders if o != gone] + [self.next_order]
        elif kind == "second_db":
            assert self.second_db is not None
            items = c[self.second_db].items
            k = rng.randrange(50)
            if rng.random() < 0.6:
                items.update_one({"_id": k}, {"$inc": {"qty": 1}, "$set": {"at": self.version}}, upsert=True)
            else:
                items.delete_one({"_id": k})
        return True


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.syncs: list[SyncProcess] = []
        self.writers: list[Writer] = []
        self.finalizers: list[Callable[[], None]] = []

    def sync(self, src: EmbeddedServer, dst: EmbeddedServer, *extra: str, http: bool = True,
             env: dict[str, str] | None = None) -> SyncProcess:
        s = SyncProcess(src, dst, self.tmp_path / f"sync{len(self.syncs)}.log", extra, http, env)
        self.syncs.append(s)
        return s.start()

    def writer(self, server: EmbeddedServer, seed: int, **kwargs: Any) -> Writer:
        w = Writer(server, seed, **kwargs)
        self.writers.append(w)
        return w

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self.finalizers.append(fn)

    def cleanup(self) -> None:
        for w in self.writers:
            w.stopping.set()
        for w in self.writers:
            if w.thread.ident is not None:
                w.thread.join(60)
        for s in self.syncs:
            s.cleanup()
        for fn in reversed(self.finalizers):
            with contextlib.suppress(Exception):
                fn()


def seed_app(server: EmbeddedServer, users: int, orders: int, db: str = "app") -> None:
    with server.client() as c:
        for start in range(0, users, 1000):
            c[db].users.insert_many([{"_id": i, "v": 0, "n": i, "name": f"user-{i}", "t": 1, "extra": "here",
                                      "sub": {"a": {"b": i, "c": [1, 2]}, "x": "y"}, "arr": [1, 2, 3, i % 7],
                                      "tags": ["a", "b"]} for i in range(start, min(users, start + 1000))])
        c[db].orders.insert_many([{"_id": 1_000_000 + i, "user": i, "amount": i} for i in range(orders)])
        c[db].users.create_index("name", name="name_1")


def seed_big(server: EmbeddedServer, n: int) -> None:
    with server.client() as c:
        for start in range(0, n, 2000):
            end = min(n, start + 2000)
            c.big.docs.insert_many([{"_id": i, "v": "x" * 100, "k": {"n": i}} for i in range(start, end)])


def copied_docs(dst: EmbeddedServer) -> int:
    with dst.client() as c:
        return int(sum(p.get("docs", 0) for p in c[META_DB].partitions.find()))


def job_state(dst: EmbeddedServer) -> str | None:
    with dst.client() as c:
        doc = c[META_DB].jobs.find_one({"_id": "sync"})
    return None if doc is None else str(doc["state"])


def status_json(dst: EmbeddedServer) -> dict[str, Any]:
    r = run_cli("status", "--dst", dst.uri, "--json", timeout=60)
    assert r.code == 0, r.text
    return dict(json.loads(r.out))


def list_dbs(server: EmbeddedServer) -> list[str]:
    with server.client() as c:
        return list(c.list_database_names())


def data_namespaces(server: EmbeddedServer) -> set[str]:
    return {ns for ns in user_namespaces(server) if not ns.startswith(META_DB + ".")}


def index_names(server: EmbeddedServer, ns: str) -> list[str]:
    db, _, coll = ns.partition(".")
    with server.client() as c:
        return sorted(ix["name"] for ix in c[db][coll].list_indexes())


def all_index_names(server: EmbeddedServer) -> set[str]:
    return {name for ns in data_namespaces(server) for name in index_names(server, ns)}


def catalog_of(server: EmbeddedServer, db: str) -> dict[str, dict[str, Any]]:
    """listCollections (type and options, no uuid) and index specs of every collection of `db`."""
    out: dict[str, dict[str, Any]] = {}
    with server.client() as c:
        for info in c[db].list_collections():
            name = info["name"]
            if name.startswith("system."):
                continue
            entry: dict[str, Any] = {"type": info.get("type"), "options": dict(info.get("options", {}))}
            if info.get("type") != "view":
                entry["indexes"] = {ix["name"]: {k: v for k, v in ix.items() if k not in ("ns", "v")}
                                    for ix in c[db][name].list_indexes()}
            out[name] = entry
    return out


def docs_match(src: EmbeddedServer, dst: EmbeddedServer, ns: str) -> bool:
    return raw_docs(src, ns) == raw_docs(dst, ns)


def describe_difference(a: dict[bytes, bytes], b: dict[bytes, bytes]) -> str:
    import bson

    missing = [k for k in a if k not in b]
    extra = [k for k in b if k not in a]
    differ = [k for k in a if k in b and a[k] != b[k]]
    lines = [f"{len(a)} vs {len(b)} documents: {len(missing)} missing, {len(extra)} extra, {len(differ)} differ"]
    for k in differ[:3]:
        lines.append(f"  {bson.decode(a[k])} != {bson.decode(b[k])}")
    for k in missing[:3]:
        lines.append(f"  missing {bson.decode(a[k])}")
    for k in extra[:3]:
        lines.append(f"  extra {bson.decode(b[k])}")
    return "\n".join(lines)


def assert_same_docs(src: EmbeddedServer, src_ns: str, dst: EmbeddedServer, dst_ns: str) -> None:
    a, b = raw_docs(src, src_ns), raw_docs(dst, dst_ns)
    assert a, f"{src_ns} is empty on the source"
    assert a == b, f"{src_ns} → {dst_ns}: {describe_difference(a, b)}"


def assert_identical(src: EmbeddedServer, dst: EmbeddedServer, expect: set[str]) -> None:
    """Same namespaces, byte-identical documents (type-exact _ids, field order) and same index names."""
    names = data_namespaces(src)
    assert expect <= names, f"the source lacks {expect - names}"
    assert data_namespaces(dst) == names
    for ns in sorted(names):
        a, b = raw_docs(src, ns), raw_docs(dst, ns)
        assert a == b, f"{ns}: {describe_difference(a, b)}"
        assert index_names(src, ns) == index_names(dst, ns), ns


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.05,
             what: Callable[[], str] | None = None) -> None:
    """conftest's wait_for, with a description of the state when it times out."""
    try:
        _wait_for(predicate, timeout=timeout, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {what() if what else ''}") from None


def test_reverse_after_commit_replays_destination_changes_back_to_the_source(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, dst = servers
    seed_app(src, users=200, orders=20)
    sync = harness.sync(src, dst, "--no-write-block", "--reverse")
    sync.wait_state("RUNNING", timeout=120)
    r = httpx.post(sync.url("/api/v1/commit"), timeout=10)
    assert r.status_code == 200, r.text
    sync.wait_state("COMMITTED", timeout=120)
    assert sync.alive(), "with --reverse the sync keeps running after COMMITTED"
    # the applications now write to the destination; the old source must follow
    with dst.client() as c:
        c.app.users.insert_one({"_id": "written-after-cutover", "v": 1})
        c.app.users.update_many({}, {"$set": {"after_cutover": True}})
        c.app.orders.delete_many({})
    with src.client() as c:
        wait_for(lambda: c.app.users.count_documents({"after_cutover": True}) == 201
                 and c.app.orders.count_documents({}) == 0, timeout=90)
    assert raw_docs(src, "app.users") == raw_docs(dst, "app.users")
    assert sync.terminate() == 0, sync.log_tail()
