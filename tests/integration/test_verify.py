"""`mongoferry verify` end to end against real SecantusDB servers: the one-shot check and the
migration-verifier compatible server mode (HTTP API, change tracking, generations, restart)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import SON, Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mongoferry.dev.embedded import EmbeddedServer, child_env, free_port
from mongoferry.verify.keys import to_json_value
from tests.integration.conftest import Result, cli_args, wait_for


def verify_args(*args: str) -> list[str]:
    return cli_args("verify", *args)


def run_verify(*args: str, timeout: float = 180) -> Result:
    p = subprocess.run(verify_args(*args), capture_output=True, text=True, env=child_env(), timeout=timeout)
    result = Result(p.returncode, p.stdout, p.stderr)
    assert "Warning" not in result.err, result.err  # a warning in the child is a failure too
    return result


def check(src: EmbeddedServer, dst: EmbeddedServer, *args: str) -> Result:
    return run_verify("--src", src.uri, "--dst", dst.uri, "--check-only", "--log-format", "json", *args)


def check_json(src: EmbeddedServer, dst: EmbeddedServer, *args: str) -> tuple[int, dict[str, Any]]:
    r = check(src, dst, "--json", *args)
    assert r.code in (0, 4), r.text
    return r.code, json.loads(r.out)


def finding_ids(report: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Each finding as a hashable summary: (type, namespace, _id or aspect/component)."""
    out: set[tuple[Any, ...]] = set()
    for item in report["findings"]["items"]:
        if item["category"] == "document":
            out.add((item["type"], item["namespace"], json.dumps(item["_id"], sort_keys=True)))
        else:
            out.add((item["type"], item["namespace"], item["aspect"], item.get("component")))
    return out


# ---------------------------------------------------------------------------------------------- data
MIXED_IDS: list[Any] = [
    MinKey(), None, float("nan"), -7, Int64(-5), -0.5, 1, Int64(2), 3.5, Decimal128("4.25"), float("inf"),
    "", "a", "b", "ünï", SON([("a", 1)]), SON([("a", 2), ("b", 1)]), SON([("b", 1), ("a", 2)]),
    Binary(b"x", 128), Binary(b"\x00\x01", 0), ObjectId("65f0a1b2c3d4e5f601234567"), False, True,
    dt.datetime(1969, 7, 20), dt.datetime(2030, 1, 1), Timestamp(5, 6), MaxKey(),
]


MIXED_EXTRA: list[Any] = [Int64(-6), 0.25, Decimal128("100"), "aa", "c", SON([("a", 1), ("b", 0)]),
                          Binary(b"\x00\x02", 0), ObjectId("65f0a1b2c3d4e5f601234568"), dt.datetime(2000, 1, 1),
                          Timestamp(5, 7)]


def seed_identical(*servers: EmbeddedServer, docs: int = 3000) -> None:
    """The same data, options, views and indexes on every server (inserted in the same order)."""
    for server in servers:
        with server.client() as c:
            app = c.app
            app.users.insert_many([SON([("_id", i), ("name", f"user{i}"), ("n", i % 7),
                                        ("tags", ["a", "b", "c"]), ("sub", {"x": i, "y": [1, 2]}),
                                        ("i32", 5), ("order", SON([("p", 1), ("q", 2)]))])
                                   for i in range(docs)])
            app.users.create_index([("name", 1)], unique=True, name="by_name")
            app.users.create_index([("n", 1)], sparse=True, name="by_n")
            app.mixed.insert_many([{"_id": v, "v": str(i)} for i, v in enumerate(MIXED_IDS)])
            app.create_collection("validated", validator={"$jsonSchema": {"required": ["a"]}},
                                  validationAction="warn")
            app.validated.insert_one({"_id": 1, "a": 1})
            app.create_collection("active", viewOn="users", pipeline=[{"$match": {"n": 1}}])
            app.create_collection("capped", capped=True, size=65536)
            app.capped.insert_many([{"_id": i} for i in range(20)])
            c.shop.items.insert_many([{"_id": ObjectId(f"{i:024x}"), "price": Decimal128(f"{i}.50")}
                                      for i in range(200)])


# ---------------------------------------------------------------------------------------------- one-shot
def test_identical_deployments_exit_0_in_both_compare_modes(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    seed_identical(src, dst)
    r = check(src, dst)
    assert r.code == 0, r.text
    assert r.out.startswith("verify: IDENTICAL"), r.out
    code, report = check_json(src, dst, "--compare", "binary", "--workers", "2")
    assert code == 0
    assert report["verdict"] == "identical"
    assert set(report) == {"verdict", "compare", "indexSpecIgnore", "seconds", "docsCompared", "dstDocs", "srcBytes",
                           "dstBytes", "docsPerSecond", "mbPerSecond", "namespaces", "findings"}
    assert report["compare"] == "binary" and report["srcBytes"] == report["dstBytes"] > 0
    assert report["findings"] == {"total": 0, "namespaceFindings": 0, "documentFindings": 0, "byType": {},
                                  "shown": 0, "notShown": 0, "items": [], "toleratedIndexDifferences": 0}
    assert set(report["namespaces"][0]) == {"source", "destination", "kind", "srcDocs", "dstDocs", "findings"}
    assert report["docsCompared"] == report["dstDocs"] == 3000 + len(MIXED_IDS) + 1 + 20 + 200
    kinds = {ns["source"]: ns["kind"] for ns in report["namespaces"]}
    assert kinds == {"app.users": "collection", "app.mixed": "collection", "app.validated": "collection",
                     "app.active": "view", "app.capped": "collection", "shop.items": "collection"}


def test_each_injected_difference_is_found_and_nothing_else(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    seed_identical(src, dst)
    with src.client() as s, dst.client() as d:
        d.app.users.delete_one({"_id": 10})                                       # missing on dst
        d.app.users.insert_one({"_id": 5000, "name": "intruder"})                  # extra on dst
        d.app.users.update_one({"_id": 11}, {"$set": {"name": "changed"}})         # changed value
        d.app.users.update_one({"_id": 12}, {"$set": {"i32": Int64(5)}})           # int32 -> int64, same value
        d.app.users.update_one({"_id": 13}, {"$set": {"tags": ["c", "b", "a"]}})   # array order
        d.app.users.update_one({"_id": 14}, {"$set": {"order": SON([("q", 2), ("p", 1)])}})  # nested field order
        doc = d.app.users.find_one({"_id": 15})
        assert doc is not None
        d.app.users.replace_one({"_id": 15}, SON(reversed(list(doc.items()))))      # top-level field order
        d.app.users.drop_index("by_n")                                             # changed index option
        d.app.users.create_index([("n", 1)], name="by_n")
        d.app.command("collMod", "validated", validator={"$jsonSchema": {"required": ["b"]}})  # validator
        d.app.drop_collection("active")                                            # view pipeline
        d.app.create_collection("active", viewOn="users", pipeline=[{"$match": {"n": 2}}])
        s.app.only_src.insert_one({"_id": 1})                                      # namespace on one side
        d.app.only_dst.insert_one({"_id": 1})
        s.app.numeric.insert_one({"_id": 1, "v": 1})                              # int32 id vs int64 id
        d.app.numeric.insert_one({"_id": Int64(1), "v": 1})
        for gone in MIXED_IDS[::3]:                                                # mixed-type ids: every BSON
            d.app.mixed.delete_one({"_id": gone})                                  # type bracket is crossed
        d.app.mixed.insert_many([{"_id": extra} for extra in MIXED_EXTRA])

    expected = {
        ("missingOnDst", "app.users", "10"),
        ("extraOnDst", "app.users", "5000"),
        ("content", "app.users", "11"),
        ("content", "app.users", "12"),
        ("content", "app.users", "13"),
        ("content", "app.users", "index", "by_n"),
        ("content", "app.validated", "spec", "options.validator"),
        ("content", "app.active", "spec", "options.pipeline"),
        ("missingOnDst", "app.only_src", "exist", None),
        ("extraOnDst", "app.only_dst", "exist", None),
        ("missingOnDst", "app.numeric", "1"),
        ("extraOnDst", "app.numeric", "1"),
    }
    expected |= {("missingOnDst", "app.mixed", json.dumps(to_json_value(i), sort_keys=True)) for i in MIXED_IDS[::3]}
    expected |= {("extraOnDst", "app.mixed", json.dumps(to_json_value(i), sort_keys=True)) for i in MIXED_EXTRA}
    r = check(src, dst, "--json", "--failure-display-size", "100")
    assert r.code == 4, r.text
    assert "order differs from ours" not in r.err  # our BSON sort order is the server's: no lookups needed
    report = json.loads(r.out)
    assert report["verdict"] == "different"
    assert finding_ids(report) == expected
    assert report["findings"]["total"] == len(expected) and report["findings"]["notShown"] == 0
    by_id = {json.dumps(i.get("_id")): i for i in report["findings"]["items"] if i["category"] == "document"}
    assert by_id["12"]["diffs"] == [{"path": "i32", "field": "i32", "kind": "type", "srcType": "32-bit integer",
                                     "dstType": "64-bit integer", "src": 5, "dst": 5,
                                     "detail": "Mismatch : type mismatch: src=32-bit integer, dst=64-bit integer"}]
    assert [d["path"] for d in by_id["13"]["diffs"]] == ["tags.0", "tags.2"]
    assert by_id["11"]["diffs"][0]["src"] == "user11" and by_id["11"]["diffs"][0]["dst"] == "changed"
    numeric = [i for i in report["findings"]["items"] if i["namespace"] == "app.numeric"]
    assert len(numeric) == 2  # type-exact pairing: 1 and NumberLong(1) are different documents

    # Field order only matters with --compare binary: two more findings, nothing else changes.
    code, binary = check_json(src, dst, "--failure-display-size", "100", "--compare", "binary")
    assert code == 4
    assert finding_ids(binary) == expected | {("content", "app.users", "14"), ("content", "app.users", "15")}
    order = [i for i in binary["findings"]["items"] if i.get("_id") in (14, 15)]
    assert all(i["diffs"][0]["kind"] == "order" for i in order)
    assert {i["diffs"][0]["path"] for i in order} == {"order", ""}

    # The readable report shows the first N findings (namespace, then _id order) and counts the rest.
    r = check(src, dst, "--failure-display-size", "3")
    assert r.code == 4, r.text
    lines = r.out.splitlines()
    assert lines[0].startswith(f"verify: DIFFERENT — {len(expected)} finding(s)")
    shown = [line for line in lines if line.startswith("  - ")]
    assert len(shown) == 3
    assert shown[0] == "  - app.active: collection spec options.pipeline differs"
    assert f"… and {len(expected) - 3} more finding(s) not shown" in lines[-1]
    code, small = check_json(src, dst, "--failure-display-size", "2")
    assert small["findings"]["shown"] == 2 and small["findings"]["notShown"] == len(expected) - 2
    assert small["findings"]["total"] == len(expected)


def test_selection_renames_and_explicit_namespace_pairs(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as s, dst.client() as d:
        s.app.a.insert_many([{"_id": i} for i in range(50)])
        s.app.create_collection("va", viewOn="a", pipeline=[])
        s.other.b.insert_many([{"_id": i} for i in range(5)])
        d.app2.a.insert_many([{"_id": i} for i in range(50)])
        d.app2.create_collection("va", viewOn="a", pipeline=[])
        d.other.b_renamed.insert_many([{"_id": i} for i in range(5)])
        d.other.b_renamed.insert_one({"_id": 99})
    code, report = check_json(src, dst, "--include", "app", "--rename", "app=app2")
    assert code == 0, report
    assert {(n["source"], n["destination"]) for n in report["namespaces"]} == {("app.a", "app2.a"),
                                                                               ("app.va", "app2.va")}
    code, report = check_json(src, dst, "--src-namespace", "other.b,app.a", "--dst-namespace", "other.b_renamed",
                              "--dst-namespace", "app2.a")
    assert code == 4
    assert finding_ids(report) == {("extraOnDst", "other.b", "99")}
    r = check(src, dst, "--src-namespace", "app.a", "--include", "app")
    assert r.code == 2 and "cannot be combined" in r.err


def test_index_spec_ignore_tolerates_only_the_named_options(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    for server, unique, ttl in ((src, False, 60), (dst, True, 3600)):
        with server.client() as c:
            c.app.events.insert_many([{"_id": i, "x": i, "at": dt.datetime(2030, 1, 1)} for i in range(10)])
            c.app.events.create_index("x", name="x_1", unique=unique)
            c.app.events.create_index("at", name="at_1", expireAfterSeconds=ttl)
    code, report = check_json(src, dst)
    assert code == 4 and {f[3] for f in finding_ids(report)} == {"x_1", "at_1"}
    code, report = check_json(src, dst, "--index-spec-ignore", "unique")
    assert code == 4 and {f[3] for f in finding_ids(report)} == {"at_1"}
    assert report["findings"]["toleratedIndexDifferences"] == 1
    r = check(src, dst, "--index-spec-ignore", "unique,expireAfterSeconds")
    assert r.code == 0, r.text
    assert r.out.startswith("verify: IDENTICAL") and "2 index difference(s) tolerated by --index-spec-ignore" in r.out
    r = check(src, dst, "--index-spec-ignore", "sparse")
    assert r.code == 2 and "index_spec_ignore" in r.err
    r = run_verify("--src", src.uri, "--dst", dst.uri, "--index-spec-ignore", "unique")
    assert r.code == 2 and r.err.strip() == ("error: --index-spec-ignore needs --check-only — in server mode ask "
                                             "GET /api/v1/nsMismatches?indexSpecIgnore=... instead")


def test_bad_input_exit_codes(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, _ = servers
    r = run_verify("--src", "mongodb://host:notaport", "--dst", src.uri, "--check-only")
    assert r.code == 2, r.text
    assert "--src" in r.err and "not a valid MongoDB URI" in r.err
    r = run_verify("--src", src.uri, "--dst", f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
                   "--check-only", "--connect-timeout", "1")
    assert r.code == 3, r.text
    assert "cannot reach the destination" in r.err
    r = run_verify("--src", src.uri, "--dst", src.uri, "--check-only", "--compare", "sideways")
    assert r.code == 2
    r = run_verify("--src", src.uri, "--dst", src.uri, "--check-only", "--failure-display-size", "0")
    assert r.code == 2 and "failure_display_size" in r.err
    with src.client() as c:
        c.app.real.insert_one({"_id": 1})
    r = run_verify("--src", src.uri, "--dst", src.uri, "--check-only", "--src-namespace", "app.raal")
    assert r.code == 2 and r.err.strip() == ("error: --src-namespace app.raal: neither the source nor the "
                                             "destination holds it — check the spelling (DATABASE.COLLECTION)")
    r = run_verify("--src", src.uri, "--dst", src.uri, "--check-only", "--src-namespace", "local.oplog.rs")
    assert r.code == 2 and "'local.oplog.rs' is a system namespace" in r.err
    r = run_verify("--src", src.uri, "--dst", src.uri, "--check-only", "--clean")
    assert r.code == 2 and "server-mode options" in r.err
    r = run_verify("--src", "mongodb://u:s3cret/PW@127.0.0.1:1/", "--dst", src.uri, "--check-only")
    assert r.code == 2 and "s3cret" not in r.text and "PW" not in r.text


def test_server_mode_checks_its_options_before_serving_or_forgetting(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path) -> None:
    src, dst = servers
    with dst.client() as c:  # a saved verification that --clean would forget
        c.mongoferry_meta.verify_state.insert_one({"_id": "state", "running": False})
    port = free_port()
    r = run_verify("--src", src.uri, "--dst", dst.uri, "--port", str(port), "--src-namespace", "a.b",
                   "--dst-namespace", "a.b", "--dst-namespace", "c.d", timeout=60)
    assert r.code == 2 and "1 --src-namespace but 2 --dst-namespace values" in r.err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = run_verify("--src", src.uri, "--dst", dst.uri, "--port", str(port), "--clean", timeout=60)
    assert r.code == 2, r.text
    assert r.err.strip() == (f"error: cannot listen on 127.0.0.1:{port}: Address already in use — choose another "
                             "port with --port (0: any free port)")
    r = run_verify("--src", src.uri, "--dst", dst.uri, "--port", str(free_port()), "--clean", "--start",
                   "--include", "nope", timeout=60)
    assert r.code == 2 and "--include 'nope' matches no namespace" in r.err
    with dst.client() as c:
        assert c.mongoferry_meta.verify_state.count_documents({}) == 1  # nothing forgotten

    v = VerifierProcess(tmp_path, src, dst, "--include", "nope").start()  # the selection is read at /check
    try:
        r2 = v.post("/check")
        assert r2.status_code == 400 and "--include 'nope' matches no namespace" in r2.json()["error"]
        progress = v.http.get(v.base + "/progress").json()["progress"]
        assert progress["phase"] == "idle" and "matches no namespace" in progress["error"]  # pollers see it too
        health = v.http.get(v.base.removesuffix("/api/v1") + "/healthz").json()
        assert (health["ok"], health["state"]) == (False, "FAILED") and "matches no namespace" in health["lastError"]
        assert "mongoferry_healthy 0.0" in v.http.get(v.base.removesuffix("/api/v1") + "/metrics").text
    finally:
        v.close()


# ---------------------------------------------------------------------------------------------- server mode
class VerifierProcess:
    """`mongoferry verify` in server mode as a child process, driven through its HTTP API."""

    def __init__(self, tmp: Path, src: EmbeddedServer, dst: EmbeddedServer, *extra: str) -> None:
        self.port = free_port()
        self.args = verify_args("--src", src.uri, "--dst", dst.uri, "--port", str(self.port),
                                "--log-format", "text", *extra)
        self.log = tmp / f"verify-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.http = httpx.Client(timeout=30)

    def start(self) -> VerifierProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=child_env())

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            with contextlib.suppress(httpx.HTTPError):
                return self.http.get(self.base + "/progress").status_code == 200
            return False

        wait_for(up, timeout=60, interval=0.1)
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def post(self, path: str, body: Any = None, content: str | None = None) -> httpx.Response:
        if content is not None:
            return self.http.post(self.base + path, content=content)
        return self.http.post(self.base + path, json={} if body is None else body)

    def progress(self) -> dict[str, Any]:
        r = self.http.get(self.base + "/progress")
        assert r.status_code == 200
        body = r.json()
        assert "progress" in body, body
        p: dict[str, Any] = body["progress"]
        assert p["error"] is None, (p["error"], self.log_text()[-3000:])
        return p

    def mismatches(self) -> list[dict[str, Any]]:
        r = self.http.get(self.base + "/mismatches")
        assert r.status_code == 200
        items: list[dict[str, Any]] = r.json()
        return items

    def wait_gen0_done(self, timeout: float = 120) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def done() -> bool:
            p = self.progress()
            st = p["verificationStatus"]
            seen.update(p)
            return p["generation"] > 0 or (st["totalTasks"] > 0 and st["addedTasks"] == st["processingTasks"] == 0)

        wait_for(done, timeout=timeout, interval=0.2)
        return seen

    def finish(self, timeout: float = 180) -> dict[str, Any]:
        """writesOff, then wait for the final generation to end; returns the last progress."""
        r = self.post("/writesOff")
        assert r.json() == {"success": True}, r.text
        last: dict[str, Any] = {}

        def idle() -> bool:
            last.update(self.progress())
            return bool(last["phase"] == "idle" and last["done"])

        wait_for(idle, timeout=timeout, interval=0.25)
        return last

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        assert "Warning" not in self.log_text(), self.log_text()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.http.close()


@pytest.fixture
def verifiers(tmp_path: Path) -> Iterator[list[VerifierProcess]]:
    started: list[VerifierProcess] = []
    yield started
    for v in started:
        v.close()


def test_http_api_filter_and_bad_requests(servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path,
                                          verifiers: list[VerifierProcess]) -> None:
    src, dst = servers
    for server in servers:
        with server.client() as c:
            c.app.users.insert_many([{"_id": i, "region": "eu" if i % 2 else "us", "v": i} for i in range(400)])
    with dst.client() as c:
        c.app.users.update_one({"_id": 1}, {"$set": {"v": "changed"}})      # eu: reported
        c.app.users.update_one({"_id": 2}, {"$set": {"v": "changed"}})      # us: filtered out
        c.app.users.insert_one({"_id": 1001, "region": "eu", "v": 0})       # eu extra: reported
        c.app.users.delete_one({"_id": 4})                                  # us missing: filtered out
    v = VerifierProcess(tmp_path, src, dst)
    verifiers.append(v)
    v.start()
    idle = v.http.get(v.base + "/progress")
    assert idle.headers["server"].startswith("migration-verifier/") and len(idle.headers["trace-id"]) == 36
    assert idle.json()["progress"]["phase"] == "idle"
    root = v.base.removesuffix("/api/v1")
    health = v.http.get(root + "/healthz").json()  # the model every job's /healthz shares
    assert (health["ok"], health["state"], health["lastError"]) == (True, "IDLE", None)
    assert v.http.get(v.base + "/check").status_code == 405
    assert v.post("/writesOff").json() == {"error": "no verification is running; POST /api/v1/check first"}
    bad = v.post("/check", content="{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    assert v.post("/check", {"filter": "region == eu"}).status_code == 400
    bogus = v.post("/check", {"filter": {"$bogus": 1}})
    assert bogus.status_code == 400 and "invalid filter" in bogus.json()["error"]
    assert v.progress()["phase"] == "idle"

    assert v.post("/check", {"filter": {"region": "eu"}}).json() == {"success": True}
    assert v.post("/check", {}).json() == {"success": True}  # already checking: a no-op
    p = v.wait_gen0_done()
    assert p["phase"] == "check" and p["generation"] == 0
    assert p["verificationStatus"]["failedTasks"] == 1
    assert p["generationStats"]["docsCompared"] == 200  # the eu documents of the source
    gen0 = {(m["type"], json.dumps(m["_id"])) for m in v.mismatches()}
    assert gen0 == {("content", "1"), ("extraOnDst", "1001")}

    final = v.finish()
    assert final["verificationStatus"]["failedTasks"] == 1 and final["finalGeneration"]
    found = v.mismatches()
    assert {(m["type"], json.dumps(m["_id"])) for m in found} == gen0
    content = next(m for m in found if m["type"] == "content")
    assert content["diffs"][0]["path"] == "v" and content["diffs"][0]["dst"] == "changed"
    lines = [json.loads(line) for line in v.http.get(v.base + "/docMismatches").text.splitlines()]
    assert {(m["type"], m["_id"], m.get("field")) for m in lines} == {("content", 1, "v"), ("extraOnDst", 1001, None)}
    health = v.http.get(root + "/healthz").json()
    assert (health["ok"], health["state"]) == (True, "DONE")
    metrics = v.http.get(root + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for line in ('mongoferry_state{state="DONE"} 1.0', 'mongoferry_state{state="CHECKING"} 0.0',
                 'mongoferry_healthy 1.0', 'mongoferry_verify_mismatches{type="document:content"} 1.0',
                 'mongoferry_verify_mismatches{type="document:extraOnDst"} 1.0',
                 'mongoferry_verify_tasks{status="failed"} 1.0', 'mongoferry_verify_writes_off 1.0'):
        assert line in metrics.text, line
    assert 'mongoferry_job_info{kind="verify"' in metrics.text
    assert f"mongoferry_verify_docs_compared_total {final['docsCompared']}.0" in metrics.text
    assert v.terminate() == 0


class MirroredWriter:
    """Writes each change to the source, then the same change to the destination a moment later
    (a stand-in for a replicator), so the verifier sees short-lived differences."""

    def __init__(self, src: EmbeddedServer, dst: EmbeddedServer, seed: int) -> None:
        self.src, self.dst = src, dst
        self.seed = seed
        self.stop_event = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import random

        rnd = random.Random(self.seed)
        try:
            with self.src.client() as s, self.dst.client() as d:
                next_id = 100_000
                while not self.stop_event.is_set():
                    kind = rnd.choice(["insert", "update", "update", "delete", "replace"])
                    target = rnd.randrange(0, 3000)
                    for client in (s, d):
                        coll = client.app.users
                        if kind == "insert":
                            coll.insert_one({"_id": next_id, "name": f"new{next_id}", "n": 1})
                        elif kind == "update":
                            coll.update_one({"_id": target}, {"$inc": {"n": 1}, "$set": {"touched": True}})
                        elif kind == "delete":
                            coll.delete_one({"_id": target})
                        else:
                            coll.replace_one({"_id": target}, {"name": f"replaced{target}", "v": Int64(target)})
                        time.sleep(rnd.uniform(0, 0.01))
                    next_id += kind == "insert"
                    self.ops += 1
        except (PyMongoError, OSError) as exc:
            self.error = exc

    def start(self) -> MirroredWriter:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert self.error is None, self.error


def test_live_writes_then_writes_off_reach_a_clean_verdict(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path, verifiers: list[VerifierProcess]) -> None:
    src, dst = servers
    seed_identical(src, dst, docs=3000)
    v = VerifierProcess(tmp_path, src, dst, "--workers", "2")
    verifiers.append(v)
    v.start()
    writer = MirroredWriter(src, dst, seed=11).start()
    wait_for(lambda: writer.ops >= 20, timeout=60)
    assert v.post("/check").json() == {"success": True}
    v.wait_gen0_done()
    wait_for(lambda: v.progress()["generation"] >= 2, timeout=120)  # rechecks of live changes
    writer.stop()
    assert writer.ops > 40
    final = v.finish()
    st = final["verificationStatus"]
    assert st["failedTasks"] == 0 and st["metadataMismatchTasks"] == 0, (st, v.mismatches())
    assert final["error"] is None and final["phase"] == "idle"
    assert final["generation"] >= 3
    assert final["totalRechecksDone"] > 0
    src_counts = final["srcChangeStats"]["eventCounts"]
    assert src_counts["insert"] > 0 and src_counts["update"] > 0 and src_counts["delete"] > 0
    assert final["dstChangeStats"]["eventCounts"]["replace"] > 0
    assert v.mismatches() == []
    assert v.terminate() == 0


def test_verifier_killed_mid_check_continues_after_restart(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path, verifiers: list[VerifierProcess]) -> None:
    src, dst = servers
    for server in servers:
        with server.client() as c:
            for name in ("c1", "c2", "c3", "c4"):
                c.big[name].insert_many([{"_id": i, "pad": "x" * 100, "n": i} for i in range(8000)])
    with dst.client() as c:
        c.big.c3.delete_one({"_id": 777})  # the one real difference
    v = VerifierProcess(tmp_path, src, dst, "--workers", "1")
    verifiers.append(v)
    v.start()
    assert v.post("/check").json() == {"success": True}

    def mid_run() -> bool:
        st = v.progress()["verificationStatus"]
        return st["completedTasks"] + st["failedTasks"] >= 1 and st["addedTasks"] >= 1

    wait_for(mid_run, timeout=120, interval=0.05)
    v.kill()
    with MongoClient(dst.uri) as c:
        statuses = [t["status"] for t in c.mongoferry_meta.verify_tasks.find()]
        finished_before = {t["_id"]: t["finished"] for t in c.mongoferry_meta.verify_tasks.find(
            {"status": {"$in": ["completed", "failed"]}})}
    assert "added" in statuses and finished_before

    with dst.client() as c:
        c.big.c1.update_one({"_id": 5}, {"$set": {"n": -1}})  # while it is down: seen through the saved token
    v.start()  # same command: resumes by itself
    wait_for(lambda: "resuming the saved verification" in v.log_text(), timeout=30)
    p = v.wait_gen0_done()
    assert p["error"] is None
    with src.client() as c:
        c.big.c1.update_one({"_id": 5}, {"$set": {"n": -1}})  # the "replicator" catches up
    final = v.finish()
    assert final["dstChangeStats"]["eventCounts"]["update"] == 1  # made while down: read via the saved token
    assert final["verificationStatus"]["failedTasks"] == 1, v.mismatches()
    assert [(m["type"], m["namespace"], m["_id"]) for m in v.mismatches()] == [("missingOnDst", "big.c3", 777)]
    with MongoClient(dst.uri) as c:
        for task_id, finished in finished_before.items():  # work done before the kill was not redone
            task = c.mongoferry_meta.verify_tasks.find_one({"_id": task_id})
            assert task is not None and task["finished"] == finished
    assert "Traceback" not in v.log_text()
    assert v.terminate() == 0


def ndjson(v: VerifierProcess, path: str) -> list[dict[str, Any]]:
    r = v.http.get(v.base + path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_summary_durations_index_tolerance_and_late_namespaces(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path, verifiers: list[VerifierProcess]) -> None:
    src, dst = servers
    for server in servers:
        with server.client() as c:
            c.app.users.insert_many([{"_id": i, "n": i, "pad": "p" * 50} for i in range(500)])
    with src.client() as c:
        c.app.users.create_index("n", name="n_1")
    with dst.client() as c:
        c.app.users.create_index("n", name="n_1", unique=True)         # tolerable with indexSpecIgnore=unique
        c.app.users.update_one({"_id": 5}, {"$set": {"n": "stale"}})   # a difference that lasts
    v = VerifierProcess(tmp_path, src, dst)
    verifiers.append(v)
    v.start()
    assert v.http.get(v.base + "/summary").json()["estCheckSecsRemaining"] is None  # idle
    assert v.post("/check").json() == {"success": True}
    v.wait_gen0_done()

    # Namespaces created after the check started join it.
    with src.client() as c:
        c.app.late.insert_many([{"_id": i, "v": i} for i in range(50)])
        c.app.onlysrc.insert_one({"_id": 1})
    with dst.client() as c:
        c.app.late.insert_many([{"_id": i, "v": -i if i == 3 else i} for i in range(50)])
    wait_for(lambda: "new namespace joins the verification" in v.log_text(), timeout=30)

    def long_lasting() -> bool:
        lines = ndjson(v, "/docMismatches")
        return any(m["_id"] == 5 and m["durationSecs"] >= 2 for m in lines)

    wait_for(long_lasting, timeout=90, interval=0.5)
    wait_for(lambda: any(m["namespace"] == "app.late" for m in ndjson(v, "/docMismatches")), timeout=60)

    lines = ndjson(v, "/docMismatches")
    durations = [m["durationSecs"] for m in lines]
    assert durations == sorted(durations, reverse=True)  # longest first
    assert lines[0] == {"type": "content", "namespace": "app.users", "_id": 5, "field": "n",
                        "detail": lines[0]["detail"], "durationSecs": lines[0]["durationSecs"]}
    assert "type mismatch" in lines[0]["detail"]
    late = [m for m in lines if m["namespace"] == "app.late"]
    assert [(m["type"], m["_id"], m["field"]) for m in late] == [("content", 3, "v")]
    minimum = int(lines[0]["durationSecs"])
    filtered = ndjson(v, f"/docMismatches?minDurationSecs={minimum}")
    assert filtered and all(m["durationSecs"] >= minimum for m in filtered)
    assert ndjson(v, "/docMismatches?minDurationSecs=100000") == []
    bad = v.http.get(v.base + "/docMismatches?minDurationSecs=-1")
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid `minDurationSecs`")

    ns_rows = ndjson(v, "/nsMismatches")
    index_row = {"type": "content", "namespace": "app.users", "aspect": "index", "component": "n_1",
                 "detail": '{"op":"add","path":"/unique","value":true}'}
    assert index_row in ns_rows
    assert {"type": "missingOnDst", "namespace": "app.onlysrc", "aspect": "exist"} in ns_rows
    tolerant = ndjson(v, "/nsMismatches?indexSpecIgnore=unique")
    assert index_row not in tolerant and len(tolerant) == len(ns_rows) - 1
    assert ndjson(v, "/nsMismatches?indexSpecIgnore=expireAfterSeconds") == ns_rows
    bad = v.http.get(v.base + "/nsMismatches?indexSpecIgnore=unique,bogus")
    assert bad.status_code == 400 and bad.json() == {
        "error": "invalid `indexSpecIgnore`: [`bogus`] (allowed: expireAfterSeconds, unique)"}

    progress = v.progress()
    assert progress["generation"] >= 2 and progress["recentRecheckSecs"]
    assert progress["longestDocMismatch"]["_id"] == 5
    summary = v.http.get(v.base + f"/summary?minDurationSecs={minimum}").json()
    assert summary["estCheckSecsRemaining"] is None  # rechecking, not checking
    assert summary["checkStats"]["totalDocs"] == 500 and summary["checkStats"]["docsCompared"] == 500
    # MongoDB's $collStats gives the source's bytes; SecantusDB's reports none: omitted, as at 0
    assert "totalSrcBytes" not in summary["checkStats"]
    assert summary["checkStats"]["totalNamespaces"] == 1
    assert summary["nsMismatches"] == ns_rows  # tolerances never apply here
    assert summary["docMismatches"]["total"] == len(filtered)
    assert summary["docMismatches"]["byNamespace"]["app.users"] >= 1
    assert summary["notes"] == [f"Filtering document mismatches by minimum duration ({minimum} seconds)"]
    assert summary["srcChangeEvents"]["insert"] == 51 and summary["dstChangeEvents"]["insert"] == 50
    assert summary["totalRechecksDone"] > 0 and all(s >= 0 for s in summary["recentRecheckSecs"])
    assert v.http.get(v.base + "/summary?minDurationSecs=x").status_code == 400

    final = v.finish()
    assert final["generationStats"]["totalNamespaces"] == 3
    found = {(m["type"], m["namespace"], m.get("aspect"), json.dumps(m.get("_id"))) for m in v.mismatches()}
    assert found == {("content", "app.users", None, "5"), ("content", "app.late", None, "3"),
                     ("content", "app.users", "index", "null"), ("missingOnDst", "app.onlysrc", "exist", "null")}
    assert v.terminate() == 0


def test_shard_keys_are_compared_when_both_clusters_are_sharded(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    """SecantusDB is no mongos, so the sharded-cluster probe is preset; the shard keys are read
    from `config.collections` documents in MongoDB's format."""
    from mongoferry.verify.engine import Engine
    from mongoferry.verify.findings import Pair
    from mongoferry.verify.metadata import compare_metadata, is_sharded

    src, dst = servers
    keys = {"app.same": ({"userId": 1}, {"userId": 1.0}), "app.changed": ({"userId": 1}, {"userId": "hashed"}),
            "app.srconly": ({"userId": 1}, None), "app.plain": (None, None)}
    for server, side in ((src, 0), (dst, 1)):
        with server.client() as c:
            for ns, pair in keys.items():
                c.app[ns.split(".")[1]].insert_one({"_id": 1})
                if pair[side] is not None:
                    c.config.collections.insert_one({"_id": ns, "lastmodEpoch": ObjectId(), "key": pair[side],
                                                     "unique": False, "uuid": Binary(b"\x01" * 16, 4)})
    with MongoClient(src.uri) as s, MongoClient(dst.uri) as d:
        engine = Engine(s, d, "ignore-order")
        assert not is_sharded(engine, "src")  # a replica set: shard keys are not compared
        assert compare_metadata(engine, Pair("app.changed", "app.changed"), lambda ns: ns).findings == []
        engine.sharded.update(src=True, dst=True)
        found = {ns: [(f.type, f.aspect, f.detail)
                      for f in compare_metadata(engine, Pair(ns, ns), lambda n: n).findings] for ns in keys}
    assert found == {
        "app.same": [], "app.plain": [],
        "app.changed": [("content", "shard key",
                         'Mismatch: src: {"userId": {"$numberInt": "1"}}, dst: {"userId": "hashed"}')],
        "app.srconly": [("missingOnDst", "shard key", None)],
    }


def test_merge_confirms_suspects_by_lookup_when_the_order_disagrees(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    """The lookup path of the merge join (collations, or a server whose `_id` order is not ours):
    the destination stream delivers one document out of order; it is found by lookup, compared
    once, and skipped when the stream delivers it; real differences are still reported."""
    import bson

    from mongoferry.verify.compare import doc_key_for_value
    from mongoferry.verify.engine import Engine, _Merge
    from mongoferry.verify.findings import DocFinding, NsFinding, Pair, Sink

    class Collect(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[DocFinding] = []

        def doc(self, finding: DocFinding) -> None:
            self.found.append(finding)

        def namespace(self, finding: NsFinding) -> None:
            raise AssertionError(finding)

    src, dst = servers
    only_src, only_dst = list(range(1000, 1300)), list(range(2000, 2300))  # > one settle round each
    with src.client() as c:
        c.app.c.insert_many([{"_id": i, "v": i} for i in [*range(10), *only_src]])
    with dst.client() as c:
        c.app.c.insert_many([{"_id": i, "v": -i if i == 5 else i} for i in [*range(10), *only_dst]])
    src_docs = [bson.encode({"_id": i, "v": i}) for i in [*range(10), *only_src]]
    # _id 3 comes last from the destination: the source's 3 is settled by a lookup long before
    dst_docs = [bson.encode({"_id": i, "v": -i if i == 5 else i}) for i in [0, 1, 2, *range(4, 10), *only_dst, 3]]
    with MongoClient(src.uri) as s, MongoClient(dst.uri) as d:
        sink = Collect()
        merge = _Merge(Engine(s, d, "ignore-order"), Pair("app.c", "app.c"), None, sink, confirm=True)
        merge.run(iter([src_docs[:6], src_docs[6:]]), iter([dst_docs[:5], dst_docs[5:]]))
    expected = [("content", doc_key_for_value(5))]
    expected += [("missingOnDst", doc_key_for_value(i)) for i in only_src]
    expected += [("extraOnDst", doc_key_for_value(i)) for i in only_dst]
    assert sorted((f.type, f.key) for f in sink.found) == sorted(expected)
    assert sink.src_docs == len(src_docs) and sink.dst_docs == len(dst_docs)


def test_generations_ages_order_and_change_stats(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path, verifiers: list[VerifierProcess]) -> None:
    src, dst = servers
    ids = [-1, 1, 2, 255, 256, 257, 1000, 65536]  # little-endian key bytes sort differently
    for server, value in ((src, 1), (dst, 2)):
        with server.client() as c:
            c.app.c.insert_many([{"_id": i, "v": value} for i in reversed(ids)])
            c.app.busy.insert_one({"_id": 42, "n": 0})
    v = VerifierProcess(tmp_path, src, dst, "--include", "app")
    verifiers.append(v)
    v.start()
    bad = v.post("/check", {"filter": {"_id": {"$oid": "zz"}}})
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid JSON body")
    assert v.post("/check").json() == {"success": True}
    wait_for(lambda: v.progress()["generation"] >= 1, timeout=60)  # no writes: generation 1 follows anyway
    p = v.progress()
    assert p["phase"] == "recheck" and p["gen0Stats"]["docsCompared"] == len(ids) + 1
    gen0 = ndjson(v, "/docMismatches")
    assert [m["_id"] for m in gen0] == ids  # all 0 s old: ordered by _id value

    with src.client() as c:  # outside the selection: neither counted nor rechecked
        c.other.x.insert_many([{"_id": i} for i in range(10)])
    stop = threading.Event()

    def busy_writer() -> None:
        """A document that keeps changing, its replica always one version behind: different at
        every recheck, but not a lasting difference (each change restarts its age)."""
        n = 0
        with src.client() as s, dst.client() as d:
            while not stop.is_set():
                n += 1
                s.app.busy.update_one({"_id": 42}, {"$set": {"n": n}})
                d.app.busy.update_one({"_id": 42}, {"$set": {"n": n - 1}})
                time.sleep(0.3)

    writer = threading.Thread(target=busy_writer, daemon=True)
    writer.start()
    writing_since = time.monotonic()
    try:
        # Served findings are a generation old; by the time app.c's are 10 s old, 42 has differed
        # (at every recheck) for 7 s or more, but it changed less than a generation ago.
        wait_for(lambda: ndjson(v, "/docMismatches")[0]["durationSecs"] >= 10, timeout=90, interval=0.5)
        assert time.monotonic() - writing_since > 6
        lasting = ndjson(v, "/docMismatches?minDurationSecs=5")
        p = v.progress()
    finally:
        stop.set()
        writer.join(10)
    assert sorted(m["_id"] for m in lasting) == ids  # app.busy 42 is young every generation
    assert any(m["namespace"] == "app.busy" for m in ndjson(v, "/docMismatches"))  # but it does differ
    assert p["srcChangeStats"]["eventCounts"]["insert"] == 0 and p["srcChangeStats"]["eventCounts"]["update"] > 3
    assert isinstance(p["srcChangeStats"]["lagSecs"], int) and p["srcChangeStats"]["lagSecs"] <= 5
    with src.client() as c:
        c.app.busy.update_one({"_id": 42}, {"$set": {"n": -1}})
    with dst.client() as c:
        c.app.busy.update_one({"_id": 42}, {"$set": {"n": -1}})
    final = v.finish()
    assert final["verificationStatus"]["failedTasks"] == 1
    assert sorted(m["_id"] for m in v.mismatches()) == sorted(ids)
    assert all(m["idType"] == "32-bit integer" for m in v.mismatches())
    assert v.terminate() == 0


def test_a_transaction_committed_just_before_writes_off_is_rechecked_whole(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path, verifiers: list[VerifierProcess]) -> None:
    """All events of a transaction share its commit time, which can be the writes-off time
    itself: the reader must not stop after the first of them."""
    src, dst = servers
    for server in servers:
        with server.client() as c:
            c.app.t.insert_many([{"_id": i, "v": 0} for i in range(4)])
    v = VerifierProcess(tmp_path, src, dst, "--include", "app")
    verifiers.append(v)
    v.start()
    assert v.post("/check").json() == {"success": True}
    wait_for(lambda: v.progress()["generation"] >= 1, timeout=60)
    with src.client() as c, c.start_session() as session, session.start_transaction():
        for i in range(4):
            c.app.t.update_one({"_id": i}, {"$set": {"v": 1}}, session=session)
    with dst.client() as c:  # the "replicator" applied only the first document
        c.app.t.update_one({"_id": 0}, {"$set": {"v": 1}})
    final = v.finish()
    assert final["verificationStatus"]["failedTasks"] >= 1
    assert sorted(m["_id"] for m in v.mismatches()) == [1, 2, 3]
    assert v.terminate() == 0
