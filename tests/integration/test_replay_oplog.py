"""`mongoferry replay-oplog` end to end: real formats from fixtures, limits, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import Timestamp, json_util

from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.conftest import RAW, run_cli, user_namespaces

FIXTURES = Path(__file__).parent.parent / "fixtures" / "oplog"
ENTRIES = Path(__file__).parent.parent / "fixtures" / "oplog_entries"


def load(path: Path) -> Any:
    return json_util.loads(path.read_text(), json_options=json_util.CANONICAL_JSON_OPTIONS)


def write_bson(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(bson.encode(e) for e in entries))
    return path


@pytest.fixture
def dst(tmp_path: Path) -> Any:
    s = EmbeddedServer(tmp_path / "dst").start()
    yield s
    s.stop()


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_update_format_gives_the_servers_post_image_byte_for_byte(dst: EmbeddedServer, tmp_path: Path,
                                                                         fixture: Path) -> None:
    case = load(fixture)
    ns = case["entry"]["ns"]
    db, _, coll = ns.partition(".")
    with dst.client() as c:
        c[db][coll].insert_one(case["pre"])
    f = write_bson(tmp_path / "oplog.bson", [case["entry"]])
    r = run_cli("replay-oplog", "--dst", dst.uri, str(f))
    assert r.code == 0, r.text
    with dst.client() as c:
        got = c[db].get_collection(coll, codec_options=RAW).find_one({"_id": case["pre"]["_id"]})
    assert got is not None
    assert got.raw == bson.encode(case["post"]), case["description"]


def test_a_dump_of_a_live_oplog_rebuilds_the_data(tmp_path: Path) -> None:
    src = EmbeddedServer(tmp_path / "src").start()
    dst = EmbeddedServer(tmp_path / "dst2").start()
    try:
        with src.client() as c:
            start = c.admin.command("ping")["operationTime"]
            c.shop.items.insert_many([{"_id": i, "n": i, "tags": ["a"], "sub": {"k": i}} for i in range(50)])
            c.shop.items.update_many({"n": {"$lt": 20}}, {"$set": {"sub.k": -1, "new": True}, "$push": {"tags": "b"}})
            c.shop.items.replace_one({"_id": 3}, {"replaced": 1})
            c.shop.items.delete_many({"n": {"$gte": 40}})
            c.shop.items.create_index("n")
            with c.start_session() as s, s.start_transaction():
                c.shop.items.insert_one({"_id": "t1"}, session=s)
                c.shop.other.insert_one({"_id": "t2"}, session=s)
            entries = list(c.local["oplog.rs"].find({"ts": {"$gt": start}}).sort("$natural", 1))
            expected = {d["_id"]: d.raw for d in c.shop.get_collection("items", codec_options=RAW).find()}
        f = write_bson(tmp_path / "oplog.bson", entries)
        r = run_cli("replay-oplog", "--dst", dst.uri, str(f))
        assert r.code == 0, r.text
        with dst.client() as c:
            got = {d["_id"]: d.raw for d in c.shop.get_collection("items", codec_options=RAW).find()}
            assert got == expected
            assert c.shop.other.count_documents({}) == 1
            assert "n_1" in c.shop.items.index_information()
    finally:
        src.stop()
        dst.stop()


def test_a_mongodump_shaped_dump_replays_onto_documents_that_already_hold_later_updates(tmp_path: Path) -> None:
    """mongodump --oplog reads each collection while the oplog runs on; its documents may already hold
    updates that oplog.bson replays after them. Replaying must converge to the source's state."""
    src = EmbeddedServer(tmp_path / "src").start()
    dst = EmbeddedServer(tmp_path / "dst2").start()
    try:
        with src.client() as c:
            items = c.oplogt.w
            items.insert_many([{"_id": i, "n": i, "tags": ["a", "b", "c"], "sub": {"k": i, "deep": {"x": 1}},
                               "gone": 1} for i in range(100)])
            start = c.admin.command("ping")["operationTime"]  # mongodump's oplog starts here ...
            def updates(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    items.update_one({"_id": i}, {"$set": {"n": i * 2, "sub.k": -i, "sub.deep.y": i, "new": i}})
                    items.update_one({"_id": i}, {"$unset": {"gone": ""}, "$push": {"tags": "d"}})
                    items.update_one({"_id": i}, {"$pop": {"tags": 1}, "$inc": {"n": 1}})
                    items.update_one({"_id": i}, {"$set": {"tags.0": "z", "n": i * 2 + 1}})
            updates(0, 50)
            # ... the collection is read half-way through the updates ...
            dumped = list(items.find_raw_batches(sort=[("_id", 1)]))
            updates(50, 100)
            updates(0, 100)  # ... and documents already dumped change again.
            items.delete_one({"_id": 7})
            entries = list(c.local["oplog.rs"].find({"ts": {"$gt": start}}).sort("$natural", 1))
            expected = {d["_id"]: d.raw for d in c.oplogt.get_collection("w", codec_options=RAW).find()}
        with dst.client() as c:
            for batch in dumped:
                c.oplogt.get_collection("w", codec_options=RAW).insert_many(bson.decode_all(batch, RAW))
        f = write_bson(tmp_path / "oplog.bson", entries)
        r = run_cli("replay-oplog", "--dst", dst.uri, str(f))
        assert r.code == 0, r.text
        with dst.client() as c:
            got = {d["_id"]: d.raw for d in c.oplogt.get_collection("w", codec_options=RAW).find()}
        assert got == expected
    finally:
        src.stop()
        dst.stop()


def _insert(ts: int, _id: int, ns: str = "db.c", **extra: Any) -> dict[str, Any]:
    return {"op": "i", "ns": ns, "o": {"_id": _id}, "ts": Timestamp(ts, 1), "t": 1, "v": 2, **extra}


def test_oplog_limit_is_exclusive_and_from_migrate_is_skipped(dst: EmbeddedServer, tmp_path: Path) -> None:
    f = write_bson(tmp_path / "oplog.bson", [
        _insert(100, 1), _insert(101, 2, fromMigrate=True), _insert(102, 3), _insert(103, 4), _insert(104, 5),
        {"op": "n", "ns": "", "o": {"msg": "periodic noop"}, "ts": Timestamp(102, 5), "t": 1, "v": 2},
    ][:-1])
    r = run_cli("replay-oplog", "--dst", dst.uri, "--oplog-limit", "103", str(f))
    assert r.code == 0, r.text
    with dst.client() as c:
        assert sorted(d["_id"] for d in c.db.c.find()) == [1, 3]


def test_files_are_merged_in_timestamp_order(dst: EmbeddedServer, tmp_path: Path) -> None:
    a = write_bson(tmp_path / "a.bson", [_insert(100, 1), {"op": "d", "ns": "db.c", "o": {"_id": 2},
                                                            "ts": Timestamp(103, 1), "t": 1, "v": 2}])
    b = write_bson(tmp_path / "b.bson", [_insert(101, 2)])
    r = run_cli("replay-oplog", "--dst", dst.uri, str(a), str(b))
    assert r.code == 0, r.text
    with dst.client() as c:
        assert [d["_id"] for d in c.db.c.find()] == [1]


def test_unknown_operation_is_refused_and_nothing_is_written(dst: EmbeddedServer, tmp_path: Path) -> None:
    entries = load(ENTRIES / "xi_global_index.json")["entries"]
    f = write_bson(tmp_path / "oplog.bson", [_insert(1, 1), *entries])
    r = run_cli("replay-oplog", "--dst", dst.uri, str(f))
    assert r.code == 4, r.text
    assert "xi" in r.err and "Traceback" not in r.err
    assert user_namespaces(dst) == set()


@pytest.mark.parametrize(("content", "args", "needle"), [
    (b"not bson at all", [], "is not a BSON file of oplog entries (a document claims 544501614 bytes), at byte 0"),
    (b"".join(bson.encode(e) for e in [_insert(1, 1), _insert(2, 2)])[:-7], [],
     "is truncated: a 71-byte document starts with only 64 bytes left, at byte 71 after 1 entries"),
    (bson.encode(_insert(1, 1)) + b"\x07\x00", [], "is truncated: a document header is cut off, at byte 71"),
    (bson.encode({"hello": 1}), [], "no timestamp"),
    (None, ["--oplog-limit", "12:x"], "invalid oplog limit"),
])
def test_bad_files_and_flags_exit_2_and_write_nothing(dst: EmbeddedServer, tmp_path: Path, content: bytes | None,
                                                       args: list[str], needle: str) -> None:
    f = tmp_path / "oplog.bson"
    if content is None:
        write_bson(f, [_insert(1, 1)])
    else:
        f.write_bytes(content)
    r = run_cli("replay-oplog", "--dst", dst.uri, *args, str(f))
    assert r.code == 2, r.text
    assert needle in r.err
    assert user_namespaces(dst) == set()


def test_missing_file(dst: EmbeddedServer, tmp_path: Path) -> None:
    r = run_cli("replay-oplog", "--dst", dst.uri, str(tmp_path / "nope.bson"))
    assert r.code == 2 and "does not exist" in r.err


def test_summary_line_counts_operations(dst: EmbeddedServer, tmp_path: Path) -> None:
    f = write_bson(tmp_path / "oplog.bson", [_insert(100, 1), _insert(101, 2)])
    r = run_cli("replay-oplog", "--dst", dst.uri, "--log-format", "json", str(f))
    assert r.code == 0
    assert "replayed 2 operations from 2 entries" in r.out
    assert any(line.get("msg") == "oplog replay complete" for line in r.json_lines())
    assert json.loads(r.err.splitlines()[-1])["insert"] == 2
