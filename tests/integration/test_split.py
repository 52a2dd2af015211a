"""`mongoferry split` end to end: one source into two destinations by a key, with a live writer that
moves documents between parts, transactions, DDL during the copy, and SIGKILLs at every phase."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bson
import httpx
import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mongoferry.core.routing import parse_rule
from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.conftest import raw_docs, run_cli, user_namespaces
from tests.integration.test_sync import Harness, SyncProcess, harness, wait_for

__all__ = ["harness"]

META_DB = "mongoferry_meta"
RULE_ARGS = ("--key", "userId", "--key", "app.orders=user", "--broadcast", "app.countries")
RULE = parse_rule(2, "mod", ["userId", "app.orders=user"], [], ["app.countries"], None)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer]]:
    servers = [EmbeddedServer(tmp_path / name, extra_args=["--sync-on-commit"]).start()
               for name in ("src", "dst0", "dst1")]
    yield servers[0], servers[1], servers[2]
    for s in servers:
        s.stop()


def split_process(harness: Harness, src: EmbeddedServer, dsts: list[EmbeddedServer], *extra: str) -> SyncProcess:
    p = SyncProcess(src, dsts[0], harness.tmp_path / f"split{len(harness.syncs)}.log", (), True)
    p.args = ("split", "--src", src.uri, *[a for d in dsts for a in ("--dst", d.uri)], "--http",
              f"127.0.0.1:{p.port}", "--log-format", "json", *extra)
    harness.syncs.append(p)
    return p.start()


def seed(src: EmbeddedServer, users: int = 3000) -> None:
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "userId": i, "name": f"u{i}", "n": 0} for i in range(users)])
        c.app.orders.insert_many([{"_id": 100_000 + i, "user": i % 97, "amount": i} for i in range(1000)])
        c.app.countries.insert_many([{"_id": code, "name": code.upper()} for code in ("de", "fr", "nl")])
        c.app.tmp.insert_many([{"_id": i, "userId": i} for i in range(200)])
        c.app.users.create_index("name", name="name_1")


def contents(server: EmbeddedServer) -> dict[str, dict[bytes, bytes]]:
    found = {ns: raw_docs(server, ns) for ns in user_namespaces(server) if not ns.startswith(META_DB + ".")}
    return {ns: docs for ns, docs in found.items() if docs}


def expected(src: EmbeddedServer, part: int) -> dict[str, dict[bytes, bytes]]:
    """What destination `part` must hold: the source's documents that the rule gives it, as raw bytes."""
    out = {ns: {k: v for k, v in docs.items() if RULE.owns(part, ns, bson.decode(v))}
           for ns, docs in contents(src).items()}
    return {ns: d for ns, d in out.items() if d}


def holds_exactly_its_share(src: EmbeddedServer, dsts: list[EmbeddedServer]) -> bool:
    try:
        return all(contents(dst) == expected(src, i) for i, dst in enumerate(dsts))
    except PyMongoError:
        return False


class MovingWriter:
    """Inserts, updates that keep or change the key (moving the document), deletes, transactions."""

    def __init__(self, src: EmbeddedServer, seed_: int) -> None:
        self.src = src
        self.rng = random.Random(seed_)
        self.stopping = threading.Event()
        self.done = 0
        self.moves = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MovingWriter:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)

    def _run(self) -> None:
        next_id = 10_000
        with MongoClient(self.src.uri) as c:
            users = c.app.users
            while not self.stopping.is_set():
                i = self.rng.randrange(3000)
                kind = self.rng.choice(["insert", "update", "move", "move", "delete", "txn"])
                try:
                    if kind == "insert":
                        users.insert_one({"_id": next_id, "userId": next_id, "name": "new", "n": 0})
                        next_id += 1
                    elif kind == "update":
                        users.update_one({"_id": i}, {"$inc": {"n": 1}})
                    elif kind == "move":
                        users.update_one({"_id": i}, {"$inc": {"userId": 1}, "$set": {"moved": True}})
                        self.moves += 1
                    elif kind == "delete":
                        users.delete_one({"_id": i})
                    else:
                        with c.start_session() as s, s.start_transaction():
                            users.update_one({"_id": i}, {"$inc": {"userId": 3}}, session=s)
                            c.app.orders.insert_one({"_id": 500_000 + next_id, "user": i, "amount": 1}, session=s)
                            next_id += 1
                    self.done += 1
                except PyMongoError:
                    time.sleep(0.05)  # the source restarting: try again
                time.sleep(0.003)


def test_split_two_ways_live_with_moves_ddl_and_sigkills_converges_and_commits(
        three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, d0, d1 = three
    seed(src)
    writer = MovingWriter(src, 7).start()
    harness.on_cleanup(writer.stop)
    split = split_process(harness, src, [d0, d1], *RULE_ARGS, "--no-write-block", "--batch-size", "200",
                          "--max-docs-per-s", "1500")

    # During the copy: DDL on namespaces being copied, then a SIGKILL.
    wait_for(lambda: split.copied() > 0, timeout=120, what=split.log_tail)
    assert split.progress()["state"] == "COPYING"
    with src.client() as c:
        c.app.tmp.rename("renamed")
        c.app.users.create_index("n", name="n_1")
        c.app.late.insert_many([{"_id": i, "userId": i} for i in range(50)])
    assert split.progress()["state"] == "COPYING", "the DDL above happened during the copy"
    split.kill()
    split.start()
    split.wait_state("RUNNING", timeout=240)

    # Steady state: more DDL, a SIGKILL, a restart.
    with src.client() as c:
        c.app.late.create_index("userId", name="userId_1")
        c.app.renamed.drop()
    time.sleep(1.0)
    split.kill()
    split.start()
    split.wait_state("RUNNING", timeout=240)

    # Catch-up: a backlog written while it is down, and a SIGKILL while it replays it.
    split.kill()
    time.sleep(3.0)
    split.start()
    split.wait_state("CATCHING_UP", "RUNNING", timeout=240)  # killed as soon as it replays again
    split.kill()
    split.start()
    split.wait_state("RUNNING", timeout=240)

    writer.stop()
    assert writer.moves > 10, "the writer moved documents between parts"
    wait_for(lambda: holds_exactly_its_share(src, [d0, d1]), timeout=180, what=split.log_tail)
    for dst in (d0, d1):
        with dst.client() as c:
            assert {"name_1", "n_1"} <= {ix["name"] for ix in c.app.users.list_indexes()}
            assert "userId_1" in {ix["name"] for ix in c.app.late.list_indexes()}
            assert "renamed" not in c.app.list_collection_names() and "tmp" not in c.app.list_collection_names()
            assert c.app.countries.count_documents({}) == 3, "a broadcast namespace is whole everywhere"

    progress = split.progress()
    assert set(progress["sinks"]) == {"dst0", "dst1"}
    assert {r["part"] for r in progress["namespaces"]} == {0, 1}
    split.commit_via_http()
    assert split.wait_exit(60) == 0
    assert holds_exactly_its_share(src, [d0, d1])
    status = run_cli("status", "--dst", d1.uri, "--json")
    assert status.code == 0 and '"COMMITTED"' in status.out, status.text
    table = run_cli("status", "--dst", d0.uri, "--log-format", "text")
    assert table.code == 0 and "COMMITTED" in table.out and "part" in table.out, table.text


def test_unroutable_documents_are_refused_before_anything_is_written_and_explain_shows_the_plan(
        three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer]) -> None:
    src, d0, d1 = three
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "userId": i} for i in range(10)])
        c.app.users.insert_many([{"_id": "no-key"}, {"_id": "text", "userId": "seven"}])
    dsts = ("--dst", d0.uri, "--dst", d1.uri)
    refused = run_cli("split", "--src", src.uri, *dsts, "--key", "userId", "--http", "off")
    assert refused.code == 2, refused.text
    assert "app.users: 2 document(s)" in refused.err and "--unrouted" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    for dst in (d0, d1):
        with dst.client() as c:
            assert set(c.list_database_names()) <= {"admin", "config", "local"}, "nothing written"

    plan = run_cli("split", "--src", src.uri, *dsts, "--key", "userId", "--unrouted", "1", "--explain")
    assert plan.code == 0, plan.text
    assert "userId mod 2" in plan.out and "app.users: 0: 5, 1: 7, unroutable 2" in plan.out
    for dst in (d0, d1):
        with dst.client() as c:
            assert set(c.list_database_names()) <= {"admin", "config", "local"}, "--explain writes nothing"


@pytest.mark.parametrize(("args", "needle"), [
    (("--key", "userId", "--by", "range"), "needs 1 --bound"),
    (("--by", "mod"), "needs --key"),
    (("--key", "userId", "--unrouted", "5"), "--unrouted 5"),
    (("--dst", "mongodb://127.0.0.1:1", "--key", "userId", "--by", "range", "--bound", "10", "--bound", "5"),
     "are not increasing"),
    (("--dst", "mongodb://127.0.0.1:1", "--key", "userId", "--by", "range", "--bound", "10", "--bound", "10"),
     "are not increasing"),
])
def test_bad_split_rules_are_one_line_exit_2(three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer],
                                            args: tuple[str, ...], needle: str) -> None:
    src, d0, d1 = three
    r = run_cli("split", "--src", src.uri, "--dst", d0.uri, "--dst", d1.uri, *args)
    assert r.code == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1, r.text


def test_one_destination_or_the_source_as_a_destination_is_refused(
        three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer]) -> None:
    src, d0, _ = three
    one = run_cli("split", "--src", src.uri, "--dst", d0.uri, "--key", "userId")
    assert one.code == 2 and "split needs at least two --dst, got 1" in one.err, one.text
    itself = run_cli("split", "--src", src.uri, "--dst", d0.uri, "--dst", src.uri.replace("127.0.0.1", "localhost"),
                     "--key", "userId", "--http", "off")
    assert itself.code == 2 and "same deployment" in itself.err and len(itself.err.strip().splitlines()) == 1, \
        itself.text
    with d0.client() as c:
        assert set(c.list_database_names()) <= {"admin", "config", "local"}, "nothing written"


def test_the_same_deployment_twice_as_destinations_is_refused(
        three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer]) -> None:
    src, d0, _ = three
    other_spelling = d0.uri.replace("127.0.0.1", "localhost")
    r = run_cli("split", "--src", src.uri, "--dst", d0.uri, "--dst", other_spelling, "--key", "userId")
    assert r.code == 2 and "same deployment" in r.err, r.text


def test_commit_verifies_each_destination_against_its_share_and_refuses_a_difference_counts_miss(
        three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer], harness: Harness) -> None:
    src, d0, d1 = three
    seed(src, users=400)
    split = split_process(harness, src, [d0, d1], *RULE_ARGS, "--no-write-block")
    split.wait_state("RUNNING", timeout=180)
    wait_for(lambda: holds_exactly_its_share(src, [d0, d1]), timeout=60, what=split.log_tail)
    with d1.client() as c:  # same counts, one document changed behind the split's back
        c.app.users.update_one({"_id": 3}, {"$set": {"name": "tampered"}})
    r = httpx.post(split.url("/api/v1/commit"), timeout=10)
    assert r.status_code == 200
    split.wait_state("COMMIT_FAILED", timeout=120)
    error = split.progress()["lastError"]
    assert "destination 1" in error and "1 difference" in error, error
    with src.client() as c:  # the source changes the document: the split puts it right
        c.app.users.update_one({"_id": 3}, {"$set": {"name": "fixed"}})
    wait_for(lambda: holds_exactly_its_share(src, [d0, d1]), timeout=60, what=split.log_tail)
    split.commit_via_http()
    assert split.wait_exit(60) == 0
    # The source becomes part 0: prune reuses the split's rule, saved on every destination.
    with d1.client() as c:
        job = c[META_DB].jobs.find_one({"_id": "split.1"})
        assert job is not None and job["extra"]["rule"]["key"] == ["userId", "app.orders=user"]
    dry = run_cli("prune", "--uri", src.uri, "--meta", d1.uri, "--from-split", "split", "--keep", "0")
    assert dry.code == 0, dry.text
    assert "app.users: 200 of 400 would go" in dry.out and "app.countries:" not in dry.out, dry.out
    done = run_cli("prune", "--uri", src.uri, "--meta", d1.uri, "--from-split", "split", "--keep", "0",
                   "--rate", "0", "--execute", "--http", "off")
    assert done.code == 0 and "prune finished" in done.out, done.text
    assert contents(src) == expected(src, 0) == contents(d0), "the pruned source holds exactly part 0"
