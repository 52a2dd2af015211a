"""`mongoferry prune` end to end: dry run, deletes under a writer that flips ownership, SIGKILL and
resume, the rate limit and its change at runtime, windows, DDL while pruning, and bad input."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient, ReturnDocument
from pymongo.errors import PyMongoError

from mongoferry.core.routing import parse_rule
from mongoferry.dev.embedded import EmbeddedServer, free_port
from tests.integration.conftest import raw_docs, run_cli, start_cli, user_namespaces, wait_for

RULE = parse_rule(2, "mod", ["userId", "app.orders=user"], [], ["app.countries"], None)
RULE_ARGS = ("--key", "userId", "--key", "app.orders=user", "--broadcast", "app.countries", "--parts", "2")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    s = EmbeddedServer(tmp_path / "db", extra_args=["--sync-on-commit"]).start()
    yield s
    s.stop()


def seed(s: EmbeddedServer, users: int = 2000) -> None:
    with s.client() as c:
        c.app.users.insert_many([{"_id": i, "userId": i, "name": f"u{i}"} for i in range(users)])
        c.app.users.insert_many([{"_id": "no-key", "name": "kept: nobody's"}, {"_id": "arr", "userId": [1, 3]}])
        c.app.orders.insert_many([{"_id": 100_000 + i, "user": i % 97, "amount": i} for i in range(500)])
        c.app.countries.insert_many([{"_id": code} for code in ("de", "fr", "nl")])


def owned_by(s: EmbeddedServer, keep: int) -> bool:
    """Does the deployment hold exactly what the rule gives part `keep` (and nobody's documents)?"""
    with s.client() as c:
        for ns in sorted(user_namespaces(s)):
            if ns.startswith("mongoferry_meta."):
                continue
            db, _, coll = ns.partition(".")
            for d in c[db][coll].find():
                if RULE.prunable(keep, ns, d):
                    return False
    return True


def prune(s: EmbeddedServer, *extra: str, timeout: float = 300) -> Any:
    return run_cli("prune", "--uri", s.uri, *RULE_ARGS, "--http", "off", "--log-format", "json", *extra,
                   timeout=timeout)


def test_dry_run_counts_and_writes_nothing(server: EmbeddedServer) -> None:
    seed(server)
    before = {ns: raw_docs(server, ns) for ns in user_namespaces(server)}
    r = prune(server, "--keep", "0", "--rate", "100")
    assert r.code == 0, r.text
    assert "app.users: 1000 of 2002 would go" in r.out and "2 without a routable key are kept" in r.out
    assert "app.orders: 247 of 500 would go" in r.out, "orders route by their own key"
    assert "app.countries:" not in r.out, "a broadcast namespace is never pruned"
    assert "total: 1247 document(s) would be deleted, about 12s at 100 documents/s" in r.out
    assert "e.g. _id 1, 3, 5, 7, 9" in r.out
    assert {ns: raw_docs(server, ns) for ns in user_namespaces(server)} == before, "a dry run writes nothing"
    with server.client() as c:
        assert "mongoferry_meta" not in c.list_database_names()


class FlippingWriter:
    """Moves documents between parts (userId += 1) and inserts, remembering each key it set last."""

    def __init__(self, s: EmbeddedServer) -> None:
        self.s = s
        self.rng = random.Random(7)
        self.stopping = threading.Event()
        self.last_key: dict[Any, int] = {}  # _id → the key this writer last gave it (document existed then)
        self.vanished: set[Any] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FlippingWriter:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)

    def _run(self) -> None:
        next_id = 50_000
        with MongoClient(self.s.uri) as c:
            users = c.app.users
            while not self.stopping.is_set():
                try:
                    if self.rng.random() < 0.2:
                        users.insert_one({"_id": next_id, "userId": next_id})
                        self.last_key[next_id] = next_id
                        next_id += 1
                        continue
                    i = self.rng.randrange(2000)
                    after = users.find_one_and_update({"_id": i}, {"$inc": {"userId": 1}},
                                                      return_document=ReturnDocument.AFTER)
                    if after is None:
                        self.vanished.add(i)
                        self.last_key.pop(i, None)
                    else:
                        self.last_key[i] = after["userId"]
                except PyMongoError:
                    time.sleep(0.05)
                time.sleep(0.002)

    def owned_ids(self, keep: int) -> set[Any]:
        return {i for i, k in self.last_key.items() if k % 2 == keep}


def test_prune_under_a_writer_flipping_ownership_never_deletes_an_owned_document(server: EmbeddedServer) -> None:
    seed(server)
    writer = FlippingWriter(server).start()
    try:
        time.sleep(0.5)
        r = prune(server, "--keep", "0", "--rate", "1500", "--batch-size", "100", "--execute")
    finally:
        writer.stop()
    assert r.code == 0, r.text
    assert "prune finished: deleted" in r.out and "app.users: deleted" in r.out
    with server.client() as c:
        present = {d["_id"] for d in c.app.users.find({}, {"_id": 1})}
        assert writer.owned_ids(0) <= present, "every document the writer left owned by part 0 is still there"
        assert c.app.countries.count_documents({}) == 3
        assert c.app.users.find_one({"_id": "no-key"}) is not None
        assert c.app.users.find_one({"_id": "arr"}) is not None, "an array key is nobody's: kept"
    # A second pass removes what flipped away after it was read, and nothing else.
    again = prune(server, "--keep", "0", "--rate", "0", "--execute")
    assert again.code == 0, again.text
    assert owned_by(server, 0)
    with server.client() as c:
        assert writer.owned_ids(0) <= {d["_id"] for d in c.app.users.find({}, {"_id": 1})}
    third = prune(server, "--keep", "0", "--rate", "0", "--execute")
    assert third.code == 0 and "deleted 0 document(s)" in third.out, third.out
    shown = run_cli("status", "--dst", server.uri, "--log-format", "text")
    assert shown.code == 0 and "prune state DONE" in shown.out and "app.users" in shown.out, shown.text


def progress(port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/api/v1/progress", timeout=5).json())


def safe_progress(port: int) -> dict[str, Any] | None:
    try:
        return progress(port)
    except httpx.HTTPError:
        return None


def start_prune(s: EmbeddedServer, log: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return start_cli("prune", "--uri", s.uri, *RULE_ARGS, "--keep", "1", "--execute", "--http",
                     f"127.0.0.1:{port}", "--log-format", "json", *extra, log=log)


def test_sigkill_and_restart_continues_and_finishes_exactly(server: EmbeddedServer, tmp_path: Path) -> None:
    seed(server, users=3000)
    log = tmp_path / "prune.log"
    for round_ in range(3):
        port = free_port()
        p = start_prune(server, log, port, "--rate", "600", "--batch-size", "50")
        target = 200 * (round_ + 1)
        wait_for(lambda: (safe_progress(port) or {}).get("deleted", 0) >= target, timeout=120)  # noqa: B023
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    assert log.read_text().count('"prune resuming"') == 2
    with server.client() as c:
        state = c.mongoferry_meta.collections.find_one({"_id": "prune:app.users"})
        assert state is not None and not state["done"] and state["last"], "killed mid-pass with a saved position"
    r = prune(server, "--keep", "1", "--rate", "0", "--execute")
    assert r.code == 0, r.text
    assert owned_by(server, 1)
    with server.client() as c:
        assert c.app.users.count_documents({}) == 1500 + 2, "the odd users, and the two nobody owns"
        assert c.app.orders.count_documents({}) == 247


def test_rate_limit_holds_and_changes_while_running(server: EmbeddedServer, tmp_path: Path) -> None:
    seed(server)
    port = free_port()
    started = time.monotonic()
    p = start_prune(server, tmp_path / "prune.log", port, "--rate", "100")
    try:
        wait_for(lambda: (safe_progress(port) or {}).get("deleted", 0) >= 300, timeout=60)
        # 300 deletions at 100/s with one second of budget: at least two seconds.
        assert time.monotonic() - started >= 2.0
        snap = progress(port)
        assert snap["rateLimit"] == 100 and snap["deleted"] < 1253
        for wrong in ('"fast"', "NaN", "Infinity", "-1"):  # Python's JSON reader accepts NaN and Infinity
            bad = httpx.post(f"http://127.0.0.1:{port}/api/v1/rate", content=f'{{"docsPerSecond": {wrong}}}',
                             headers={"content-type": "application/json"}, timeout=5)
            assert bad.status_code == 400, wrong
        ok = httpx.post(f"http://127.0.0.1:{port}/api/v1/rate", json={"docsPerSecond": 0}, timeout=5)
        assert ok.json() == {"success": True, "docsPerSecond": None}
        assert p.wait(60) == 0, "without a limit the rest goes at once"
    finally:
        if p.poll() is None:
            p.kill()
    text = (tmp_path / "prune.log").read_text()
    assert "prune finished: deleted 1253 document(s)" in text and "prune rate limit changed" in text
    assert owned_by(server, 1)


def test_outside_its_window_it_waits_and_deletes_nothing(server: EmbeddedServer, tmp_path: Path) -> None:
    seed(server, users=100)
    now = time.gmtime()
    opens = (now.tm_hour * 60 + now.tm_min + 180) % 1440  # a window three hours from now
    window = f"{opens // 60:02d}:{opens % 60:02d}-{(opens + 60) % 1440 // 60:02d}:{(opens + 60) % 60:02d}"
    port = free_port()
    log = tmp_path / "prune.log"
    p = start_prune(server, log, port, "--window", window)
    try:
        wait_for(lambda: (safe_progress(port) or {}).get("waitingFor") == "window", timeout=60)
        time.sleep(1.0)
        assert progress(port)["deleted"] == 0
        with server.client() as c:
            assert c.app.users.count_documents({}) == 102
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert "prune stopped: deleted 0 document(s)" in text and "pauses: window 1x" in text


def test_ddl_while_pruning_is_survived(server: EmbeddedServer, tmp_path: Path) -> None:
    seed(server, users=3000)
    with server.client() as c:
        c.app.logs.insert_many([{"_id": i, "userId": i} for i in range(2000)])
        c.app.events.insert_many([{"_id": i, "userId": i} for i in range(2000)])
    port = free_port()
    p = start_prune(server, tmp_path / "prune.log", port, "--rate", "800", "--batch-size", "100")
    try:
        wait_for(lambda: (safe_progress(port) or {}).get("deleted", 0) >= 100, timeout=60)
        with server.client() as c:
            c.app.users.create_index("name")
            c.app.logs.drop()
            c.app.events.rename("events2")
            c.app.fresh.insert_many([{"_id": i, "userId": i} for i in range(10)])
        assert p.wait(120) == 0, (tmp_path / "prune.log").read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    with server.client() as c:
        names = set(c.app.list_collection_names())
        assert "logs" not in names and "events2" in names
        assert all(d["userId"] % 2 == 1 for d in c.app.users.find() if isinstance(d.get("userId"), int))
        assert "name_1" in c.app.users.index_information()
    r = prune(server, "--keep", "1", "--rate", "0", "--execute")
    assert r.code == 0, r.text
    assert owned_by(server, 1), "a new pass takes the renamed and the new collections too"


@pytest.mark.parametrize(("args", "problem"), [
    (("--key", "userId", "--parts", "1", "--keep", "0"), "--parts 1: a rule needs at least two parts"),
    (("--key", "userId", "--parts", "2", "--keep", "2"), "--keep 2: the parts are 0 to 1"),
    (("--key", "userId", "--parts", "2"), "prune needs --keep I"),
    (("--key", "userId", "--keep", "0"), "prune needs --parts N"),
    (("--key", "usrId", "--parts", "2", "--keep", "0", "--execute"), "documents has a key 'usrId' that mod can route"),
    (("--key", "userId", "--by", "range", "--bound", "10", "--bound", "5", "--parts", "3", "--keep", "0"),
     "are not increasing"),
    (("--key", "userId", "--parts", "2", "--keep", "0", "--window", "9-17"), "--window '9-17' is not HH:MM-HH:MM"),
    (("--key", "userId", "--parts", "2", "--keep", "0", "--timezone", "Mars/Olympus"), "is not a time zone"),
    (("--from-split", "nosuch", "--keep", "0"), "no split job 'nosuch'"),
    (("--from-split", "s", "--keep", "0", "--by", "hash", "--unrouted", "0"), "it takes no --by, --unrouted"),
    (("--key", "userId", "--parts", "2", "--keep", "0", "--rate", "inf", "--execute"), "rate"),
    (("--key", "app.users=userId", "--parts", "2", "--keep", "0", "--execute"), "has no routing key"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_deleted(server: EmbeddedServer, args: tuple[str, ...],
                                                          problem: str) -> None:
    seed(server, users=50)
    r = run_cli("prune", "--uri", server.uri, "--http", "off", *args)
    assert r.code == 2, r.text
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], r.err
    with server.client() as c:
        assert c.app.users.count_documents({}) == 52 and "mongoferry_meta" not in c.list_database_names()


def test_a_second_rule_on_a_pruned_deployment_is_refused(server: EmbeddedServer) -> None:
    """Keeping part 0 after a pass that kept part 1 would leave nothing: refused, nothing deleted."""
    seed(server, users=200)
    assert prune(server, "--keep", "1", "--rate", "0", "--execute").code == 0
    with server.client() as c:
        left = c.app.users.count_documents({})
    for other in (("--keep", "0"), ("--by", "hash", "--keep", "1")):
        r = prune(server, *other, "--rate", "0", "--execute")
        assert r.code == 2 and "pruning with a second rule deletes what the first kept" in r.err, r.text
        dry = prune(server, *other)
        assert dry.code == 2, "the dry run says so too"
    with server.client() as c:
        assert c.app.users.count_documents({}) == left
    again = prune(server, "--keep", "1", "--rate", "0", "--execute")
    assert again.code == 0 and "deleted 0 document(s)" in again.out, "the same rule: a new pass, nothing to do"
    other_job = prune(server, "--keep", "0", "--rate", "0", "--execute", "--job", "rule2")
    assert other_job.code == 0, "a deliberate new rule is a new job"


def test_an_unreadable_split_rule_is_refused(server: EmbeddedServer) -> None:
    seed(server, users=20)
    with server.client() as c:
        c.mongoferry_meta.jobs.insert_one({"_id": "s.0", "kind": "split", "extra": {"rule": {"parts": "two"}}})
    r = run_cli("prune", "--uri", server.uri, "--http", "off", "--from-split", "s", "--keep", "0", "--execute")
    assert r.code == 2 and "its saved rule is unreadable" in r.err and len(r.err.strip().splitlines()) == 1, r.text
    with server.client() as c:
        assert c.app.users.count_documents({}) == 22


def test_dotted_keys_through_arrays_and_inside_the_id(server: EmbeddedServer) -> None:
    """`a.b` with `a` an array is unrouted (to --unrouted 0 here: deleted by keep 1); a key inside a
    compound `_id` routes and deletes by the whole `_id`."""
    with server.client() as c:
        c.app.t.insert_many([{"_id": 1, "a": [{"b": 1}]}, {"_id": 2, "a": {"b": 2}}, {"_id": 3, "a": {"b": 3}},
                             {"_id": 4, "a": 5}, {"_id": 5}])
        c.app.c.insert_many([{"_id": {"u": i, "n": i * 10}} for i in range(6)])
    r = run_cli("prune", "--uri", server.uri, "--http", "off", "--key", "a.b", "--key", "app.c=_id.u",
                "--parts", "2", "--keep", "1", "--unrouted", "0", "--rate", "0", "--execute")
    assert r.code == 0, r.text
    with server.client() as c:
        assert sorted(d["_id"] for d in c.app.t.find()) == [3], "1, 4 and 5 are unrouted (part 0), 2 is even"
        assert sorted(d["_id"]["u"] for d in c.app.c.find()) == [1, 3, 5]
    assert "kept (key changed meanwhile)" not in r.out, r.out
