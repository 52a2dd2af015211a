"""`mongoferry copy` end to end, through the CLI, against real servers."""

from __future__ import annotations

import datetime as dt
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from bson import SON, Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.conftest import (
    PASSWORD,
    auth_uri,
    raw_docs,
    run_cli,
    start_cli,
    user_namespaces,
    wait_for,
)

ODD_IDS: list[Any] = [
    # numerically equal ids (1, Int64(1), 1.0) are one key to the _id index, so each type gets its own value
    ObjectId("65f0a1b2c3d4e5f601234567"), 1, Int64(2), 3.5, Decimal128("4.25"), -0.0, 2**31 - 1, Int64(2**40),
    float("inf"), "1", "", "ünïcødé", Binary(uuid.UUID(int=5).bytes, 4), Binary(b"\x00\x01", 0), Binary(b"x", 128),
    SON([("b", 1), ("a", 2)]), SON([("a", 2), ("b", 1)]), dt.datetime(1969, 7, 20, 20, 17), True, False,
    MinKey(), MaxKey(), Timestamp(5, 6), None,
]


def odd_document(i: int, _id: Any) -> dict[str, Any]:
    return SON([
        ("_id", _id), ("z", 1), ("a", {"y": [1, Int64(2), 3.5, Decimal128("4.50"), None, [], {}]}),
        ("bin", Binary(bytes(range(256)), 0)), ("code", Code("function(){return 1}")),
        ("codews", Code("x", {"s": 1})), ("re", Regex("^a.*b$", "im")), ("ts", Timestamp(1, i)),
        ("neg0", -0.0), ("nan", float("nan")), ("min", MinKey()), ("max", MaxKey()),
        ("date", dt.datetime(2262, 4, 11, 23, 47, 16)), ("dec", Decimal128("-1.23E+400")),
        ("nested", {"deep": {"deeper": {"deepest": ["x" * 10, {"k": "v"}]}}}), ("i", i),
    ])


def test_every_id_type_and_odd_bson_types_arrive_byte_exact(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        c.odd.docs.insert_many([odd_document(i, _id) for i, _id in enumerate(ODD_IDS)])
        c.odd.big.insert_one({"_id": "big", "blob": Binary(b"\x07" * (15 * 1024 * 1024), 0)})  # near 16 MB
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--log-format", "json")
    assert r.code == 0, r.text
    for ns in ("odd.docs", "odd.big"):
        source, dest = raw_docs(src, ns), raw_docs(dst, ns)
        assert len(source) == len(dest) == (len(ODD_IDS) if ns == "odd.docs" else 1)
        assert source == dest  # same _ids (type-exact), same bytes, same field order


def test_options_views_and_every_index_kind(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        db = c.app
        db.create_collection("capped", capped=True, size=65536, max=50)
        db.capped.insert_many([{"n": i} for i in range(80)])  # only the last 50 remain, in order
        db.create_collection("validated", validator={"$jsonSchema": {"required": ["a"]}},
                             validationLevel="moderate", validationAction="warn")
        db.validated.insert_one({"a": 1})
        db.create_collection("collated", collation={"locale": "fr", "strength": 2})
        db.collated.insert_one({"name": "Élan"})
        db.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
        db.clustered.insert_many([{"_id": i} for i in range(10)])
        db.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m", "granularity": "hours"})
        db.metrics.insert_many([{"t": dt.datetime(2024, 1, 1, h), "m": {"s": h % 3}, "v": h} for h in range(24)])
        db.create_collection("names", viewOn="collated", pipeline=[{"$project": {"name": 1}}])
        ix = db.indexed
        ix.insert_many([{"a": i, "b": -i, "p": i, "s": i, "ttl": dt.datetime(2030, 1, 1), "loc":
                         {"type": "Point", "coordinates": [i % 90, i % 45]}, "hid": i, "cc": str(i)}
                        for i in range(100)])
        ix.create_index([("a", 1), ("b", -1)], unique=True, name="my_custom_ab")
        ix.create_index("p", partialFilterExpression={"p": {"$gt": 5}})
        ix.create_index("s", sparse=True)
        ix.create_index("ttl", expireAfterSeconds=3600)
        ix.create_index([("loc", "2dsphere")])
        ix.create_index("hid", hidden=True)
        ix.create_index("cc", collation={"locale": "en", "strength": 1})
        specs = {name: src_specs(c, "app", name) for name in db.list_collection_names()}
        capped_before = [d["n"] for d in db.capped.find().sort("$natural", 1)]
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--workers", "3")
    assert r.code == 0, r.text
    with dst.client() as c:
        for name, (info, indexes) in specs.items():
            got_info, got_indexes = src_specs(c, "app", name)
            assert got_info == info, name
            assert got_indexes == indexes, name
        assert [d["n"] for d in c.app.capped.find().sort("$natural", 1)] == capped_before
        assert c.app.names.count_documents({}) == 1
        assert c.app.metrics.count_documents({}) == 24
    assert raw_docs(src, "app.indexed") == raw_docs(dst, "app.indexed")


def src_specs(client: Any, db: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    info = next(iter(client[db].list_collections(filter={"name": name})))
    normalized = {"type": info.get("type"), "options": info.get("options")}
    if info.get("type") == "view":
        return normalized, []
    indexes = sorted(({k: v for k, v in ix.items() if k not in ("ns", "v")} for ix in client[db][name].list_indexes()),
                     key=lambda ix: ix["name"])
    return normalized, indexes


def test_renames_at_database_and_collection_level(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        c.old.a.insert_many([{"_id": i} for i in range(5)])
        c.old.b.insert_many([{"_id": i} for i in range(3)])
        c.keep.c.insert_one({"_id": 1})
        c.skip.d.insert_one({"_id": 1})
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--rename", "old=new", "--rename", "old.b=other.bee",
                "--exclude", "skip")
    assert r.code == 0, r.text
    assert {ns for ns in user_namespaces(dst) if not ns.startswith("mongoferry_meta.")} == {"new.a", "other.bee",
                                                                                          "keep.c"}
    assert raw_docs(src, "old.b") == raw_docs(dst, "other.bee")


def test_include_selects_only_what_it_names(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        c.one.a.insert_one({"_id": 1})
        c.one.b.insert_one({"_id": 1})
        c.two.c.insert_one({"_id": 1})
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--include", "one.a", "--include", "two")
    assert r.code == 0, r.text
    assert {ns for ns in user_namespaces(dst) if not ns.startswith("mongoferry_meta")} == {"one.a", "two.c"}


def seed_many(server: EmbeddedServer, n: int, db: str = "big") -> None:
    with server.client() as c:
        for start in range(0, n, 2000):
            end = min(n, start + 2000)
            c[db].docs.insert_many([{"_id": i, "v": "x" * 200, "k": {"n": i}} for i in range(start, end)])
            c[db].other.insert_many([{"_id": ObjectId(), "n": i} for i in range(start, end, 10)])


def test_sigkill_during_copy_then_rerun_ends_identical(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                      tmp_path: Path) -> None:
    src, dst = servers
    seed_many(src, 30_000)
    args = ("copy", "--src", src.uri, "--dst", dst.uri, "--workers", "3", "--ranges", "on", "--batch-size", "200",
            "--partition-docs", "10000", "--log-format", "json")
    for round_ in range(2):
        proc = start_cli(*args, log=tmp_path / "copy.log")

        def copied_some(floor: int = 3000 * (round_ + 1)) -> bool:
            with dst.client() as c:
                return sum(p.get("docs", 0) for p in c.mongoferry_meta.partitions.find()) >= floor

        wait_for(copied_some, timeout=120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with dst.client() as c:
        partially = sum(p.get("docs", 0) for p in c.mongoferry_meta.partitions.find())
        assert 0 < partially < 33_000
        assert c.mongoferry_meta.partitions.count_documents({"ns": "big.docs"}) == 3  # parallel ranges, resumed
    r = run_cli(*args)
    assert r.code == 0, r.text
    assert any(line.get("msg") == "copy resuming" for line in r.json_lines())
    for ns in ("big.docs", "big.other"):
        assert raw_docs(src, ns) == raw_docs(dst, ns)


def test_workers_auto_keeps_one_reader_where_opening_a_cursor_costs_a_scan(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    seed_many(src, 60_000)  # the test server reads the whole collection to open any cursor
    # held to 3,000 docs/s so that the collection has time left when it is measured; the share is
    # lowered so the decision does not hang on how fast this machine opened the cursor
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--max-docs-per-s", "3000", "--log-format", "json",
                env={"MONGOFERRY_AUTO_OPEN_SHARE": "0.001"})
    assert r.code == 0, r.text
    plans = [line for line in r.json_lines() if str(line.get("msg", "")).startswith("copy plan")]
    mine = [p for p in plans if p["ns"] == "big.docs"]
    assert [p["msg"] for p in mine] == ["copy plan: one reader"]
    assert "opening a cursor took" in mine[0]["reason"]
    with dst.client() as c:
        assert c.mongoferry_meta.partitions.count_documents({"ns": "big.docs"}) == 1
    assert raw_docs(src, "big.docs") == raw_docs(dst, "big.docs")


# --ranges auto's tuning, set so that a second reader is tried here (kept, or given up)
TRY_SECOND = {"MONGOFERRY_AUTO_OPEN_SHARE": "1000"}


def seed_mixed_ids(server: EmbeddedServer, n: int) -> None:
    """`n` documents whose _ids span BSON types (numbers, strings, ObjectIds, dates, MinKey…), so the
    two readers meet wherever the types' order puts them."""
    with server.client() as c:
        c.mixed.docs.insert_many([odd_document(i, _id) for i, _id in enumerate(ODD_IDS)])
        for start in range(0, n, 3000):
            batch: list[dict[str, Any]] = []
            for i in range(start, min(n, start + 3000)):
                _id: Any = (i + 10 if i % 3 == 0 else f"s{i:07d}" if i % 3 == 1
                            else ObjectId(i.to_bytes(4, "big") + bytes(8)))
                batch.append({"_id": _id, "v": "x" * 150, "i": i})
            c.mixed.docs.insert_many(batch)


def test_a_second_reader_from_the_end_meets_the_first_across_id_types_and_survives_sigkill(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path) -> None:
    src, dst = servers
    seed_mixed_ids(src, 60_000)
    args = ("copy", "--src", src.uri, "--dst", dst.uri, "--batch-size", "200", "--max-docs-per-s", "3000",
            "--log-format", "json")  # held, so the collection has time left when it is measured
    env = {**TRY_SECOND, "MONGOFERRY_AUTO_GAIN": "0"}  # kept whatever it gives
    proc = start_cli(*args, env=env, log=tmp_path / "copy.log")

    def second_reader_wrote() -> bool:
        with dst.client() as c:
            return any(p.get("docs", 0) >= 2000 for p in c.mongoferry_meta.partitions.find({"descending": True}))

    wait_for(second_reader_wrote, timeout=180)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with dst.client() as c:
        parts = list(c.mongoferry_meta.partitions.find({"ns": "mixed.docs"}))
        assert len(parts) == 2 and not all(p["done"] for p in parts)
    r = run_cli(*args, env=env)
    assert r.code == 0, r.text
    assert any(line.get("msg") == "copy resuming" for line in r.json_lines())
    log = (tmp_path / "copy.log").read_text()
    assert "copy plan: trying a second reader from the end" in log
    # the resumed run goes on with the two readers it had: no new trial
    assert not [line for line in r.json_lines() if str(line.get("msg", "")).startswith("copy plan: trying")]
    source, dest = raw_docs(src, "mixed.docs"), raw_docs(dst, "mixed.docs")
    assert len(source) == 60_000 + len(ODD_IDS)
    assert source == dest


def test_a_second_reader_that_is_not_faster_stops_and_the_first_reads_on(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    seed_mixed_ids(src, 60_000)
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--batch-size", "200", "--max-docs-per-s", "3000",
                "--log-format", "json", env={**TRY_SECOND, "MONGOFERRY_AUTO_GAIN": "1000"})  # never fast enough
    assert r.code == 0, r.text
    msgs = [line["msg"] for line in r.json_lines() if str(line.get("msg", "")).startswith("copy plan")]
    assert msgs == ["copy plan: trying a second reader from the end",
                    "copy plan: back to one reader (two were not faster)"], msgs
    with dst.client() as c:
        down = c.mongoferry_meta.partitions.find_one({"ns": "mixed.docs", "descending": True})
        assert down is not None and down["done"] and 0 < down["docs"] < 30_000
    assert raw_docs(src, "mixed.docs") == raw_docs(dst, "mixed.docs")


def test_sigterm_stops_cleanly_and_rerun_finishes(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                 tmp_path: Path) -> None:
    src, dst = servers
    seed_many(src, 20_000)
    args = ("copy", "--src", src.uri, "--dst", dst.uri, "--workers", "2", "--batch-size", "200", "--log-format", "json")
    proc = start_cli(*args, log=tmp_path / "copy.log")

    def started() -> bool:
        with dst.client() as c:
            return sum(p.get("docs", 0) for p in c.mongoferry_meta.partitions.find()) > 0

    wait_for(started, timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    assert "run the same command again to resume" in (tmp_path / "copy.log").read_text()
    assert run_cli(*args).code == 0
    assert raw_docs(src, "big.docs") == raw_docs(dst, "big.docs")


def test_rerun_with_a_different_selection_is_refused(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                     tmp_path: Path) -> None:
    src, dst = servers
    seed_many(src, 20_000)
    proc = start_cli("copy", "--src", src.uri, "--dst", dst.uri, "--batch-size", "100", "--workers", "1",
                     log=tmp_path / "copy.log")

    def started() -> bool:
        with dst.client() as c:
            return c.mongoferry_meta.partitions.count_documents({"docs": {"$gt": 0}}) > 0

    wait_for(started, timeout=120)
    proc.kill()
    proc.wait()
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--exclude", "big.other")
    assert r.code == 2
    assert "different selection" in r.err and "rerun with the original options" in r.err


def test_destination_with_data_is_refused_unless_drop_dst(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        c.shop.items.insert_many([{"_id": i} for i in range(10)])
    with dst.client() as c:
        c.shop.items.insert_one({"_id": "stale"})
    before = user_namespaces(dst)
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri)
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "shop.items already holds 1 document" in r.err
    assert "--drop-dst" in r.err and user_namespaces(dst) == before  # nothing written, not even metadata
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri, "--drop-dst")
    assert r.code == 0, r.text
    assert raw_docs(src, "shop.items") == raw_docs(dst, "shop.items")


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--src", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500"], 3, "cannot reach the source"),
        (["--src", "mongodb://bad uri::"], 2, "--src"),
        (["--src", "http://127.0.0.1:27017"], 2, "not a valid MongoDB URI"),
        (["--include", "nosuchdb"], 2, "--include 'nosuchdb' matches no namespace"),
        (["--rename", "a.b=c"], 2, "mixes a database and a collection"),
        (["--rename", "nodelimiter"], 2, "is malformed"),
        (["--rename", "one=two", "--rename", "three=two"], 2, "two sources are renamed onto one"),
        (["--rename", "one.a=one.b"], 2, "two sources are renamed onto one destination"),
        (["--workers", "0"], 2, "workers"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code_and_writes_nothing(
        servers: tuple[EmbeddedServer, EmbeddedServer], args: list[str], code: int, needle: str) -> None:
    src, dst = servers
    with src.client() as c:
        c.one.a.insert_one({"_id": 1})
        c.one.b.insert_one({"_id": 1})
        c.three.c.insert_one({"_id": 1})
    flags = {"--src": src.uri, "--dst": dst.uri}
    extra = list(args)
    if extra and extra[0] in flags:
        flags[extra[0]] = extra[1]
        extra = extra[2:]
    r = run_cli("copy", "--src", flags["--src"], "--dst", flags["--dst"], "--connect-timeout", "2", *extra)
    assert r.code == code, r.text
    assert needle in r.err
    assert "Traceback" not in r.text
    assert len([line for line in r.err.splitlines() if line.startswith("error:")]) == 1
    assert user_namespaces(dst) == set()


def test_wrong_password_exits_3_and_never_shows_the_password(auth_server: EmbeddedServer,
                                                           servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    _, dst = servers
    wrong = "Wr0ng-Secret-Value"
    r = run_cli("copy", "--src", auth_uri(auth_server, wrong), "--dst", dst.uri)
    assert r.code == 3, r.text
    assert "authentication failed for the source" in r.err
    assert wrong not in r.text and "***" in r.err
    assert user_namespaces(dst) == set()


def test_password_never_appears_in_progress_logs_or_summary(auth_server: EmbeddedServer,
                                                          servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    _, dst = servers
    with auth_server.client(username="admin", password=PASSWORD, authSource="admin") as c:
        c.secret.things.insert_many([{"_id": i} for i in range(50)])
    for fmt in ("json", "text"):
        r = run_cli("copy", "--src", auth_uri(auth_server), "--dst", dst.uri, "--log-format", fmt, "--drop-dst",
                    "--log-level", "debug")
        assert r.code == 0, r.text
        assert PASSWORD not in r.text
    assert len(raw_docs(dst, "secret.things")) == 50


def test_config_file_env_and_flags_layer_in_order(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                  tmp_path: Path) -> None:
    src, dst = servers
    with src.client() as c:
        for db in ("a", "b", "c"):
            c[db].x.insert_one({"_id": 1})
    cfg = tmp_path / "copy.yaml"
    cfg.write_text(f"src: {src.uri}\ndst: mongodb://127.0.0.1:1/\ninclude: [a]\nworkers: 2\nlog-format: json\n")
    # file says include a; env overrides with b; the flag --dst overrides the file's bad destination
    r = run_cli("copy", "--config", str(cfg), "--dst", dst.uri, env={"MONGOFERRY_INCLUDE": "b"})
    assert r.code == 0, r.text
    assert {ns for ns in user_namespaces(dst) if not ns.startswith("mongoferry_meta")} == {"b.x"}
    assert all(isinstance(line, dict) for line in r.json_lines()) and r.json_lines()


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("src: mongodb://127.0.0.1:1/\nwrokers: 3\n")
    r = run_cli("copy", "--config", str(cfg))
    assert r.code == 2 and "unknown option 'wrokers'" in r.err


def test_a_capped_collection_over_its_max_on_the_source_is_named_as_the_cause(
        servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:  # the test server does not enforce `max` inside one large insert
        c.app.create_collection("cap", capped=True, size=10_000_000, max=50)
        c.app.cap.insert_many([{"n": i} for i in range(5000)])
        c.app.plain.insert_many([{"n": i} for i in range(10)])
        held = c.app.cap.count_documents({})
    r = run_cli("copy", "--src", src.uri, "--dst", dst.uri)
    assert r.code == 4, r.text  # the two sides differ: inconsistent, with the cause named
    with dst.client() as c:
        kept = c.app.cap.count_documents({})
    assert 50 < held != kept
    assert (f"app.cap: source {held}, destination {kept} ({held - kept} missing on the destination; it is capped "
            "at max 50 documents and the source holds more than its max, so the destination trims it "
            "differently)") in r.out
    assert "the source changed during the copy" not in r.out  # that is not what happened
    assert "app.plain" not in r.out
