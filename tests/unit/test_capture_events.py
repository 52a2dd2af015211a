"""Pure parts of capture, status and server: change events → internal events, commit readiness, binds."""

from __future__ import annotations

import datetime as dt

import bson
import pytest
from bson import Timestamp

from mongoferry.core.errors import UsageError
from mongoferry.http.server import parse_bind
from mongoferry.source.capture import change_event_to_event, lag_seconds, leaves_room
from mongoferry.state.status import JobStatus

TOKEN = {"_data": "8265"}


def change(op: str, **extra: object) -> dict[str, object]:
    return {"_id": TOKEN, "operationType": op, "clusterTime": Timestamp(10, 2),
            "wallTime": dt.datetime(2026, 1, 1), "ns": {"db": "shop", "coll": "items"}, **extra}


def test_insert_carries_document_key_position_and_wall_time() -> None:
    e = change_event_to_event(change("insert", documentKey={"_id": 7}, fullDocument={"_id": 7, "a": 1}))
    assert (e.op, e.ns, e.doc_id, e.has_id, e.document) == ("insert", "shop.items", 7, True, {"_id": 7, "a": 1})
    assert e.position.ts == Timestamp(10, 2) and e.position.token == TOKEN
    assert e.wall == dt.datetime(2026, 1, 1) and e.txn is None


def test_update_uses_the_raw_description_when_the_server_sends_it() -> None:
    desc = {"updatedFields": {"a.b": 1}, "removedFields": ["c"], "truncatedArrays": []}
    e = change_event_to_event(change("update", documentKey={"_id": 1}, updateDescription=desc))
    assert e.update_kind == "description" and e.update == desc
    raw = {"$v": 2, "diff": {"u": {"a": 1}}}
    e = change_event_to_event(change("update", documentKey={"_id": 1}, updateDescription=desc,
                                     rawUpdateDescription=raw))
    assert e.update_kind == "oplog" and e.update == raw


def test_transaction_fields_become_a_txn_id() -> None:
    lsid = {"id": bson.Binary(b"\x01" * 16, 4)}
    e = change_event_to_event(change("delete", documentKey={"_id": 1}, lsid=lsid, txnNumber=5))
    assert e.txn is not None and e.txn.txn_number == 5 and e.txn.lsid == bson.encode(lsid)


@pytest.mark.parametrize(("op", "extra", "ddl"), [
    ("create", {"operationDescription": {"capped": True, "size": 10}}, {"create": "items", "capped": True, "size": 10}),
    ("create", {"operationDescription": {"viewOn": "raw", "pipeline": [{"$match": {"a": 1}}]}},  # MongoDB's
     {"create": "items", "viewOn": "raw", "pipeline": [{"$match": {"a": 1}}]}),
    ("create", {"operationDescription": {"viewOn": "raw", "viewPipeline": [{"$match": {"a": 1}}]}},  # SecantusDB's
     {"create": "items", "viewOn": "raw", "pipeline": [{"$match": {"a": 1}}]}),
    ("drop", {}, {"drop": "items"}),
    ("rename", {"to": {"db": "shop", "coll": "goods"}, "operationDescription": {"dropTarget": bson.Binary(b"x", 4)}},
     {"renameCollection": "shop.items", "to": "shop.goods", "dropTarget": True}),
    ("createIndexes", {"operationDescription": {"indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1"}]}},
     {"createIndexes": "items", "indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1"}]}),
    ("dropIndexes", {"operationDescription": {"indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1"}]}},
     {"dropIndexes": "items", "index": ["a_1"]}),
    ("modify", {"operationDescription": {"validator": {"a": {"$exists": True}}}},
     {"collMod": "items", "validator": {"a": {"$exists": True}}}),
])
def test_ddl_events_become_oplog_style_commands(op: str, extra: dict[str, object], ddl: dict[str, object]) -> None:
    e = change_event_to_event(change(op, **extra))
    assert e.op == "ddl" and e.ns == "shop.items" and e.ddl == ddl


def test_drop_database_has_a_database_namespace() -> None:
    e = change_event_to_event({"_id": TOKEN, "operationType": "dropDatabase", "clusterTime": Timestamp(1, 1),
                               "ns": {"db": "shop"}})
    assert e.ns == "shop.$cmd" and e.ddl == {"dropDatabase": 1}


def test_unknown_event_types_are_kept_visible_as_unsupported_ddl() -> None:
    e = change_event_to_event(change("shardCollection", operationDescription={"shardKey": {"a": 1}}))
    assert e.op == "ddl" and e.ddl is not None and e.ddl["unsupported"] == "shardCollection"


def test_lag_is_zero_without_a_wall_time_and_positive_for_old_events() -> None:
    assert lag_seconds(None) == 0.0
    assert lag_seconds(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)) >= 4.9


def test_can_commit_needs_a_finished_copy_and_small_lag() -> None:
    s = JobStatus()
    s.set(state="RUNNING", lag=0.2)
    assert not s.can_commit()
    s.set(copy_done=True)
    assert s.can_commit() and s.snapshot()["canCommit"] is True
    s.set(lag=3.0)
    assert not s.can_commit()
    s.set(lag=0.0, state="COMMITTED")
    assert not s.can_commit()


def test_snapshot_has_every_documented_field() -> None:
    snap = JobStatus().snapshot()
    assert set(snap) >= {"state", "canCommit", "lagTimeSeconds", "copy", "events", "namespaces"}
    assert set(snap["copy"]) == {"totalDocs", "copiedDocs", "totalBytes", "copiedBytes", "etaSeconds"}
    assert snap["copyNamespaces"] == [] and snap["recentErrors"] == []
    assert set(snap["events"]) == {"insert", "update", "replace", "delete", "ddl", "txn", "skipped"}


@pytest.mark.parametrize(("text", "expected"), [("127.0.0.1:27182", ("127.0.0.1", 27182)),
                                                ("0.0.0.0:0", ("0.0.0.0", 0)), ("off", None), ("none", None)])
def test_parse_bind(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["nonsense", "host:", ":80", "host:99999", "host:x"])
def test_parse_bind_rejects_bad_addresses(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_bind(text)
    assert err.value.exit_code == 2 and text in err.value.message


def _entries(*ts: tuple[int, int]) -> list[dict[str, object]]:
    return [{"ts": Timestamp(t, i)} for t, i in ts]


@pytest.mark.parametrize(("before", "after", "room"), [
    ((10, 4), [(10, 5), (10, 6)], False),   # consecutive ordinals: nothing can be missing
    ((10, 4), [(10, 5), (10, 5)], True),    # one transaction's entries share a ts: more may follow
    ((10, 4), [(10, 6)], True),             # (10, 5) skipped
    ((10, 4), [(10, 5), (10, 7)], True),
    ((10, 4), [(11, 1)], True),             # the end of second 10 is unknown
    (None, [(10, 1)], True),                # nothing handed on yet
])
def test_leaves_room_for_a_missing_oplog_entry(before: tuple[int, int] | None,
                                                after: list[tuple[int, int]], room: bool) -> None:
    start = Timestamp(*before) if before else None
    assert leaves_room(start, _entries(*after)) is room


def test_a_transaction_entry_always_leaves_room() -> None:
    entry = {"ts": Timestamp(10, 5), "op": "i", "lsid": {"id": 1}, "txnNumber": 1}
    assert leaves_room(Timestamp(10, 4), [entry])
    assert not leaves_room(Timestamp(10, 4), [{"ts": Timestamp(10, 5), "op": "i"}])


def test_a_costly_re_read_waits_ten_times_its_cost_for_the_next() -> None:
    from mongoferry.source.capture import REREAD_EVERY_S, next_reread_after

    assert next_reread_after(0.005) == REREAD_EVERY_S  # MongoDB: a seek, once a second
    assert next_reread_after(1.2) == pytest.approx(12.0)  # SecantusDB at 50k entries: a scan, a tenth of the time
    assert next_reread_after(60.0) == 15.0  # one read stalled by a failover does not hold entries for 10 minutes


def test_a_re_read_never_drops_what_the_tail_saw() -> None:
    from mongoferry.source.capture import merge_reread

    held = [{"ts": Timestamp(10, i), "n": i} for i in (1, 2, 3)]
    filled = [{"ts": Timestamp(10, i), "n": i} for i in (1, 2, 3, 4)]  # a hole filled
    assert merge_reread(held, filled) == filled
    short = [held[0], held[2]]  # the oplog lost (10, 2) between the tail and the re-read
    assert [e["ts"] for e in merge_reread(held, short)] == [Timestamp(10, 1), Timestamp(10, 2), Timestamp(10, 3)]
