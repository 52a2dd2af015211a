"""A source that goes away, comes back without writes the destination holds, or disagrees at commit.

The source's lost writes are made deterministic: its storage is copied while it is cleanly stopped,
writes are applied by the sync, then the server is SIGKILLed and restarted on the older copy — the
shape of a rollback after a failover with w:1 writes, or of a restart that lost unflushed writes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.conftest import run_cli
from tests.integration.test_sync import Harness, docs_match, harness, job_state, wait_for

__all__ = ["harness"]  # the fixture, imported for pytest


def _servers(tmp_path: Path, harness: Harness) -> tuple[EmbeddedServer, EmbeddedServer]:
    src = EmbeddedServer(tmp_path / "src", extra_args=["--sync-on-commit"]).start()
    dst = EmbeddedServer(tmp_path / "dst", extra_args=["--sync-on-commit"]).start()
    harness.on_cleanup(src.stop)
    harness.on_cleanup(dst.stop)
    return src, dst


def test_a_source_back_without_applied_writes_stops_the_sync_with_exit_4(tmp_path: Path, harness: Harness) -> None:
    src, dst = _servers(tmp_path, harness)
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "n": 0} for i in range(100)])
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)

    src.terminate()  # a clean stop, then a copy of what the source will come back with
    snapshot = tmp_path / "src-before"
    shutil.copytree(src.storage, snapshot)
    src.start()
    with src.client() as c:
        c.app.users.insert_many([{"_id": 1000 + i, "lost": True} for i in range(20)])
        c.app.users.update_one({"_id": 1019}, {"$set": {"last": "applied"}})
    wait_for(lambda: docs_match(src, dst, "app.users"), timeout=60)  # the destination holds them

    src.kill()
    # While the source is down: the state says so, lag grows from the last change, no commit.
    sync.wait_state("SOURCE_UNREACHABLE", timeout=60)
    first = sync.progress()
    assert first["canCommit"] is False and first["sourceUnreachable"] is True
    time.sleep(2.5)
    assert sync.progress()["lagTimeSeconds"] > first["lagTimeSeconds"] > 0
    assert "the source is not answering" in sync.log_text()

    shutil.rmtree(src.storage)
    shutil.copytree(snapshot, src.storage)
    src.start()  # back, without the 20 inserts and the update
    with src.client() as c:  # new writes take the lost ones' place in time
        c.app.users.insert_many([{"_id": 2000 + i, "after": True} for i in range(2)])

    assert sync.wait_exit(120) == 4, sync.log_tail()
    log = sync.log_text()
    assert "the source no longer holds the last change already applied" in log
    assert "app.users _id 1019" in log  # what the destination holds that the source lost
    assert "rollback" in log and "--drop-dst" in log
    assert "Traceback" not in log
    with dst.client() as c:  # it never resumed past the lost history
        assert c.app.users.count_documents({"after": True}) == 0
    assert job_state(dst) != "committed"

    # A restart refuses the same way: the position is still not in the source's history.
    r = run_cli(*sync.args, timeout=120)
    assert r.code == 4, r.text
    assert "no longer holds the last change already applied" in r.err
    assert len([line for line in r.err.splitlines() if line.startswith("error:")]) == 1


def test_a_commit_refused_on_counts_says_which_namespace_differs_and_by_how_much(
        tmp_path: Path, harness: Harness) -> None:
    src, dst = _servers(tmp_path, harness)
    with src.client() as c:
        c.app.users.insert_many([{"_id": i} for i in range(50)])
        c.app.orders.insert_many([{"_id": i} for i in range(10)])
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    with dst.client() as c:  # something wrote to the destination behind the sync's back
        c.app.users.insert_many([{"_id": 100 + i} for i in range(3)])

    r = run_cli("commit", "--dst", dst.uri, timeout=120)
    assert r.code == 1, r.text
    assert "app.users: source 50, destination 53 (3 more on the destination)" in r.out, r.out
    assert "app.orders" not in r.out  # only what differs
    sync.wait_state("COMMIT_FAILED", timeout=30)
    p = sync.progress()
    assert p["canCommit"] is False
    assert "counts differ after draining" in p["lastError"]
    assert sync.alive(), sync.log_tail()

    with dst.client() as c:  # repaired: the next commit goes through
        c.app.users.delete_many({"_id": {"$gte": 100}})
    r = run_cli("commit", "--dst", dst.uri, timeout=120)
    assert r.code == 0, r.text
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert job_state(dst) == "committed"


def test_a_new_sync_after_a_committed_one_starts_over(tmp_path: Path, harness: Harness) -> None:
    src, dst = _servers(tmp_path, harness)
    with src.client() as c:
        c.app.users.insert_many([{"_id": i} for i in range(20)])
    first = harness.sync(src, dst, "--no-write-block")
    first.wait_state("RUNNING", timeout=120)
    assert run_cli("commit", "--dst", dst.uri, timeout=120).code == 0
    assert first.wait_exit(120) == 0, first.log_tail()

    with src.client() as c:
        c.app.users.insert_many([{"_id": 100 + i} for i in range(5)])
    second = harness.sync(src, dst, "--no-write-block", "--drop-dst")
    second.wait_state("RUNNING", timeout=120)
    assert "unfinished" not in second.log_text()
    wait_for(lambda: docs_match(src, dst, "app.users"), timeout=60)
    assert run_cli("commit", "--dst", dst.uri, timeout=120).code == 0
    assert second.wait_exit(120) == 0, second.log_tail()


def test_sigterm_with_the_source_gone_exits_promptly_and_says_what_it_waits_for(
        tmp_path: Path, harness: Harness) -> None:
    src, dst = _servers(tmp_path, harness)
    with src.client() as c:
        c.app.users.insert_many([{"_id": i} for i in range(20)])
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    src.kill()
    sync.wait_state("SOURCE_UNREACHABLE", timeout=60)
    started = time.monotonic()
    code = sync.terminate(timeout=30)  # not the driver's 30 s server selection, once or more
    took = time.monotonic() - started
    assert code == 0, sync.log_tail()
    log = sync.log_text()
    assert "sync stopped; run the same command to continue" in log, f"{took:.1f}s\n{sync.log_tail()}"
    # what it waited for: the source (a read still blocked on it at the stop is left behind, said so)
    assert "the source is not answering" in log, sync.log_tail()
