"""Oplog entries -> ChangeEvents -> apply units, against the fixtures in tests/fixtures/oplog_entries.

Each fixture is canonical extended JSON: {"description", "server", "entries"}, where "entries" are
whole oplog entries as a 4.4-8.0 server (or SecantusDB) writes them, in ts order.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoferry.core.errors import EXIT_INCONSISTENT, InconsistencyError, UsageError
from mongoferry.core.events import ChangeEvent, Position, TxnId
from mongoferry.core.oplog import (
    TransactionAssembler,
    UnsupportedOplogEntry,
    entry_sort_key,
    entry_to_events,
    parse_oplog_limit,
)

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "oplog_entries"
FIXTURES = sorted(FIXTURE_DIR.glob("*.json"))

Entry = dict[str, Any]
Unit = list[ChangeEvent]


def load(name: str) -> dict[str, Any]:
    case: dict[str, Any] = json_util.loads(
        (FIXTURE_DIR / f"{name}.json").read_text(encoding="utf-8"), json_options=CANONICAL_JSON_OPTIONS
    )
    return case


def entries(name: str) -> list[Entry]:
    found: list[Entry] = load(name)["entries"]
    return found


def only(name: str) -> Entry:
    (entry,) = entries(name)
    return entry


def feed_all(stream: list[Entry], assembler: TransactionAssembler | None = None) -> list[Unit]:
    assembler = assembler or TransactionAssembler()
    units: list[Unit] = []
    for entry in stream:
        units.extend(assembler.feed(entry))
    return units + assembler.flush()


def txn_id(entry: Entry) -> TxnId:
    return TxnId(lsid=bson.encode(entry["lsid"]), txn_number=int(entry["txnNumber"]))


def positions(unit: Unit) -> list[tuple[Timestamp, int]]:
    return [(event.position.ts, event.position.index) for event in unit]


def shape(unit: Unit) -> list[tuple[str, str, Any]]:
    return [(event.op, event.ns, event.doc_id) for event in unit]


# ---------------------------------------------------------------------------------------------
# The fixtures themselves
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_is_canonical_extended_json_in_ts_order(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    case = json_util.loads(text, json_options=CANONICAL_JSON_OPTIONS)
    assert json.loads(json_util.dumps(case, json_options=CANONICAL_JSON_OPTIONS)) == json.loads(text)
    assert case["description"] and case["server"] and case["entries"]
    stream = case["entries"]
    for entry in stream:
        assert isinstance(entry["ts"], Timestamp) and entry["op"] in {"i", "u", "d", "c", "n", "xi"}
        assert isinstance(entry["ns"], str) and "wall" in entry
    assert [entry_sort_key(e) for e in stream] == sorted(entry_sort_key(e) for e in stream)


COMMANDS = """create drop renameCollection dropDatabase createIndexes startIndexBuild commitIndexBuild dropIndexes
collMod emptycapped convertToCapped applyOps commitTransaction abortTransaction"""


def test_fixture_set_covers_the_brief() -> None:
    names = {path.stem for path in FIXTURES}
    assert len(names) >= 29
    commands = set()
    for name in names:
        for entry in entries(name):
            if entry["op"] == "c":
                commands.add(next(iter(entry["o"])))
    assert set(COMMANDS.split()) <= commands


# ---------------------------------------------------------------------------------------------
# entry_to_events: CRUD and no-ops
# ---------------------------------------------------------------------------------------------


def test_insert_44_without_o2() -> None:
    entry = only("crud_insert_44_without_o2")
    (event,) = entry_to_events(entry)
    assert event.op == "insert" and event.ns == "app.orders"
    assert event.doc_id == ObjectId("655400000000000000000001") and event.has_id
    assert event.document == entry["o"]
    assert event.position == Position(ts=Timestamp(1700000100, 1), index=0)
    assert event.wall == entry["wall"] and event.wall is not None
    assert event.txn is None and not event.from_migrate
    assert event.update is None and event.ddl is None


def test_insert_80_with_o2_and_base_index() -> None:
    (event,) = entry_to_events(only("crud_insert_80_with_o2"), base_index=4)
    assert (event.op, event.doc_id, event.document) == ("insert", 7, {"_id": 7, "sku": "B-2", "qty": 5})
    assert event.position == Position(ts=Timestamp(1700000200, 3), index=4)


@pytest.mark.parametrize("name", ["crud_update_v1_44", "crud_update_v2_60"])
def test_updates_pass_the_oplog_update_through(name: str) -> None:
    entry = only(name)
    (event,) = entry_to_events(entry)
    assert event.op == "update" and event.ns == "app.orders"
    assert event.doc_id == 7 and event.has_id
    assert event.update == entry["o"] and event.update_kind == "oplog"
    assert event.document is None


def test_replacement_becomes_replace_with_the_target_id() -> None:
    entry = only("crud_replace_60")
    (event,) = entry_to_events(entry)
    assert event.op == "replace" and event.doc_id == 7 and event.has_id
    assert list(event.document.items()) == [("_id", 7), ("sku", "B-3"), ("qty", 1)]
    assert event.update is None and event.update_kind is None


def test_replacement_id_comes_from_o2_and_first() -> None:
    entry = only("crud_replace_60")
    entry["o"] = {"sku": "B-4", "_id": 99, "qty": 2}  # _id not first, and not the target's
    (event,) = entry_to_events(entry)
    assert event.op == "replace"
    assert list(event.document.items()) == [("_id", 7), ("sku", "B-4"), ("qty", 2)]
    entry["o"] = {"sku": "B-5"}  # no _id at all
    assert list(entry_to_events(entry)[0].document.items()) == [("_id", 7), ("sku", "B-5")]


def test_delete() -> None:
    (event,) = entry_to_events(only("crud_delete_80"))
    assert (event.op, event.ns, event.doc_id, event.has_id) == ("delete", "app.orders", 7, True)
    assert event.document is None and event.position == Position(ts=Timestamp(1700000600, 4))


def test_noop_with_empty_ns() -> None:
    (event,) = entry_to_events(only("noop_periodic_60"))
    assert (event.op, event.ns, event.doc_id, event.has_id) == ("noop", "", None, False)
    assert event.position.ts == Timestamp(1700000700, 1)


def test_from_migrate_is_marked_not_dropped() -> None:
    entry = only("crud_insert_from_migrate_60")
    (event,) = entry_to_events(entry)
    assert event.from_migrate and event.op == "insert" and event.doc_id == 41
    assert [[e.from_migrate for e in unit] for unit in feed_all([entry])] == [[True]]


def test_retryable_write_carries_its_session() -> None:
    entry = only("crud_insert_80_with_o2")
    entry.update(lsid={"id": bson.Binary(b"\x01" * 16, 4)}, txnNumber=bson.Int64(9), stmtId=0)
    (event,) = entry_to_events(entry)
    assert event.txn == TxnId(lsid=bson.encode(entry["lsid"]), txn_number=9)
    assert type(event.txn.txn_number) is int


def test_malformed_update_version_is_refused() -> None:
    entry = only("crud_update_v2_60")
    entry["o"] = {"$v": 3, "diff": {}}
    with pytest.raises(UnsupportedOplogEntry, match="malformed update"):
        entry_to_events(entry)


def test_update_without_o2_is_refused() -> None:
    entry = only("crud_update_v2_60")
    del entry["o2"]
    with pytest.raises(UnsupportedOplogEntry, match=r"o2\._id"):
        entry_to_events(entry)


# ---------------------------------------------------------------------------------------------
# entry_to_events: DDL and views
# ---------------------------------------------------------------------------------------------

DDL_CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    # (fixture, expected ns, expected ddl; None = the entry's `o` as written)
    ("ddl_create_80", "app.items", None),
    ("ddl_drop_60", "app.items", {"drop": "items"}),
    ("ddl_rename_60", "app.items", None),
    ("ddl_drop_database_60", "scratch.$cmd", {"dropDatabase": 1}),
    (
        "ddl_create_indexes_60",
        "app.orders",
        {"createIndexes": "orders", "indexes": [{"v": 2, "key": {"sku": 1}, "name": "sku_1", "unique": True}]},
    ),
    ("ddl_drop_indexes_60", "app.orders", {"dropIndexes": "orders", "index": "qty_-1"}),
    ("ddl_coll_mod_60", "app.sessions", None),
    ("ddl_emptycapped_44", "app.log", {"emptycapped": "log"}),
    ("ddl_convert_to_capped_44", "app.audit", {"convertToCapped": "audit", "size": 1048576.0}),
]


@pytest.mark.parametrize(("name", "ns", "ddl"), DDL_CASES, ids=[case[0] for case in DDL_CASES])
def test_ddl(name: str, ns: str, ddl: dict[str, Any] | None) -> None:
    entry = only(name)
    (event,) = entry_to_events(entry)
    assert event.op == "ddl" and event.ns == ns
    expected = entry["o"] if ddl is None else ddl
    assert event.ddl is not None and bson.encode(event.ddl) == bson.encode(
        expected
    )  # same fields, same order, same types
    assert event.doc_id is None and event.position == Position(ts=entry["ts"])
    [unit] = feed_all([entry])
    assert unit == [event]


def test_rename_keeps_target_and_drop_target() -> None:
    (event,) = entry_to_events(only("ddl_rename_60"))
    assert event.ddl is not None
    assert event.ddl["to"] == "app.items_v2" and isinstance(event.ddl["dropTarget"], bson.Binary)
    assert (event.db, event.coll) == ("app", "items")


def test_index_build_pair_gives_one_create_indexes() -> None:
    start, commit = entries("ddl_index_build_60")
    assert entry_to_events(start) == []
    (event,) = entry_to_events(commit)
    assert event.op == "ddl" and event.ns == "app.orders" and event.position.ts == commit["ts"]
    assert event.ddl == {"createIndexes": "orders", "indexes": commit["o"]["indexes"]}
    assert [shape(u) for u in feed_all([start, commit])] == [[("ddl", "app.orders", None)]]
    abort = copy.deepcopy(start)
    abort["o"] = {"abortIndexBuild": "orders", "indexBuildUUID": start["o"]["indexBuildUUID"], "cause": {"ok": 0}}
    assert entry_to_events(abort) == []


def test_view_create_through_system_views() -> None:
    create_system_views, insert = entries("view_create_60")
    assert entry_to_events(create_system_views) == []
    (event,) = entry_to_events(insert)
    assert event.op == "ddl" and event.ns == "app.big_orders"
    assert event.ddl is not None and list(event.ddl) == ["create", "viewOn", "pipeline", "collation"]
    assert event.ddl == {
        "create": "big_orders",
        "viewOn": "orders",
        "pipeline": insert["o"]["pipeline"],
        "collation": {"locale": "en", "strength": 2},
    }
    assert [shape(u) for u in feed_all([create_system_views, insert])] == [[("ddl", "app.big_orders", None)]]


def test_a_view_created_by_one_create_entry_replays_with_the_create_commands_field_names() -> None:
    """SecantusDB logs a view as one `create` entry naming its pipeline `viewPipeline` (seen in a
    `mongodump --oplog` of it); the create command takes `pipeline`."""
    entry = {"op": "c", "ns": "crm.$cmd", "ui": bson.Binary(b"i" * 16, 4), "ts": Timestamp(1796644650, 708),
             "o": {"create": "big_orders", "viewOn": "orders", "viewPipeline": [{"$match": {"total": {"$gt": 100}}}],
                   "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}}
    (event,) = entry_to_events(entry)
    assert (event.op, event.ns) == ("ddl", "crm.big_orders")
    assert event.ddl is not None and list(event.ddl) == ["create", "viewOn", "pipeline", "idIndex"]
    assert event.ddl["pipeline"] == [{"$match": {"total": {"$gt": 100}}}]


def test_view_modify_and_drop_through_system_views() -> None:
    update, delete = entries("view_modify_drop_60")
    (modified,) = entry_to_events(update)
    assert (modified.op, modified.ns) == ("ddl", "app.big_orders")
    assert modified.ddl == {"collMod": "big_orders", "viewOn": "orders_v2", "pipeline": update["o"]["pipeline"]}
    (dropped,) = entry_to_events(delete)
    assert (dropped.op, dropped.ns, dropped.ddl) == ("ddl", "app.big_orders", {"drop": "big_orders"})


def test_view_update_as_a_delta() -> None:
    update = entries("view_modify_drop_60")[0]
    update["o"] = {"$v": 2, "diff": {"u": {"viewOn": "orders_v3", "pipeline": []}}}
    assert entry_to_events(update)[0].ddl == {"collMod": "big_orders", "viewOn": "orders_v3", "pipeline": []}
    update["o"] = {"$v": 2, "diff": {"u": {"pipeline": []}}}  # viewOn unknown: collMod needs both
    with pytest.raises(UnsupportedOplogEntry, match="viewOn") as raised:
        entry_to_events(update)
    assert "app.big_orders" in raised.value.hint


def test_unknown_command_is_refused_with_op_command_ts_and_ns() -> None:
    entry = only("ddl_drop_60")
    entry["o"] = {"importCollection": "items", "collectionProperties": {}}
    with pytest.raises(UnsupportedOplogEntry) as raised:
        entry_to_events(entry)
    message = raised.value.message
    assert "'importCollection'" in message and "app.$cmd" in message and "Timestamp(1700001100, 1)" in message
    assert raised.value.hint and raised.value.exit_code == EXIT_INCONSISTENT
    assert isinstance(raised.value, InconsistencyError) and "\n" not in raised.value.one_line()


@pytest.mark.parametrize("op", ["xi", "xd", "z", None])
def test_refused_ops(op: str | None) -> None:
    entry = only("xi_global_index")
    entry["op"] = op
    with pytest.raises(UnsupportedOplogEntry) as raised:
        entry_to_events(entry)
    assert repr(op) in raised.value.message and "app.orders" in raised.value.message
    assert "Timestamp(1700005000, 1)" in raised.value.message and raised.value.hint


def test_xi_is_refused_inside_applyops_and_by_the_assembler() -> None:
    xi = only("xi_global_index")
    outer = only("applyops_batched_delete_many_70")
    outer["o"]["applyOps"].append({k: xi[k] for k in ("op", "ns", "ui", "o")})
    with pytest.raises(UnsupportedOplogEntry, match="'xi'"):
        entry_to_events(outer)
    assembler = TransactionAssembler()
    with pytest.raises(UnsupportedOplogEntry):
        assembler.feed(xi)
    assert not assembler.pending()


# ---------------------------------------------------------------------------------------------
# applyOps that are not transactions
# ---------------------------------------------------------------------------------------------


def test_batched_delete_many_is_one_unit_per_op() -> None:
    entry = only("applyops_batched_delete_many_70")
    units = feed_all([entry])
    assert [shape(u) for u in units] == [[("delete", "app.orders", i)] for i in (11, 12, 13)]
    assert [positions(u) for u in units] == [[(entry["ts"], i)] for i in range(3)]
    assert all(u[0].txn is None and u[0].wall == entry["wall"] for u in units)


def test_multi_op_type_1_is_applied_op_by_op() -> None:
    entry = only("applyops_multi_op_type_80")
    units = feed_all([entry])
    assert [shape(u) for u in units] == [[("insert", "app.orders", 500)], [("insert", "app.orders", 501)]]
    assert all(u[0].txn == txn_id(entry) for u in units)
    assert [positions(u) for u in units] == [[(entry["ts"], 0)], [(entry["ts"], 1)]]


def test_nested_applyops_expand_depth_first() -> None:
    entry = only("applyops_nested_44")
    expected = [
        ("insert", "app.orders", 600),
        ("update", "app.orders", 600),
        ("insert", "other.things", 601),
        ("delete", "app.orders", 600),
    ]
    events = entry_to_events(entry, base_index=5)
    assert shape(events) == expected
    assert positions(events) == [(entry["ts"], i) for i in range(5, 9)]
    assert [shape(u) for u in feed_all([entry])] == [[e] for e in expected]


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------


def test_single_entry_transaction_spanning_two_databases_is_one_unit() -> None:
    entry = only("txn_single_entry_two_dbs_60")
    expected = [("update", "app.orders", 7), ("insert", "billing.invoices", "inv-7"), ("delete", "app.carts", 7)]
    assert shape(entry_to_events(entry)) == expected
    assembler = TransactionAssembler()
    [unit] = assembler.feed(entry)
    assert shape(unit) == expected
    assert positions(unit) == [(entry["ts"], i) for i in range(3)]
    assert {e.txn for e in unit} == {txn_id(entry)} and not assembler.pending()


def test_partial_transaction_chain_is_buffered_until_its_final_entry() -> None:
    first, second, final = entries("txn_partial_chain_60")
    assembler = TransactionAssembler()
    assert assembler.feed(first) == [] and assembler.pending()
    assert assembler.feed(second) == []
    assert assembler.oldest_pending_ts == first["ts"]
    [unit] = assembler.feed(final)
    assert shape(unit) == [
        ("insert", "app.orders", 100),
        ("insert", "app.orders", 101),
        ("insert", "app.orders", 102),
        ("update", "app.orders", 100),
        ("delete", "app.orders", 101),
        ("insert", "billing.invoices", "inv-100"),
    ]
    assert positions(unit) == [(final["ts"], i) for i in range(6)]  # at the entry that completed it
    assert {e.txn for e in unit} == {txn_id(final)} and {e.wall for e in unit} == {final["wall"]}
    assert not assembler.pending() and assembler.oldest_pending_ts is None
    assert assembler.flush() == []


def test_partial_chain_with_a_missing_entry_is_refused_and_state_kept() -> None:
    first, _, final = entries("txn_partial_chain_60")
    assembler = TransactionAssembler()
    assembler.feed(first)
    with pytest.raises(InconsistencyError, match="'count' is 6 but 4"):
        assembler.feed(final)
    assert assembler.pending() and assembler.oldest_pending_ts == first["ts"]


@pytest.mark.parametrize("skip", [1, 2])
def test_partial_chain_read_from_the_middle_is_refused(skip: int) -> None:
    stream = entries("txn_partial_chain_60")[skip:]
    with pytest.raises(InconsistencyError, match="earlier applyOps entries were not read") as raised:
        feed_all(stream)
    assert not isinstance(raised.value, UnsupportedOplogEntry) and raised.value.hint


def test_prepared_transaction_commits_at_the_commit_entry() -> None:
    prepare, commit = entries("txn_prepared_commit_60")
    assembler = TransactionAssembler()
    assert assembler.feed(prepare) == [] and assembler.oldest_pending_ts == prepare["ts"]
    assert assembler.flush() == [] and assembler.pending()  # flush never releases a prepared transaction
    [unit] = assembler.feed(commit)
    assert shape(unit) == [("insert", "app.orders", 200), ("update", "app.orders", 200)]
    assert positions(unit) == [(commit["ts"], 0), (commit["ts"], 1)]
    assert {e.wall for e in unit} == {commit["wall"]} and {e.txn for e in unit} == {txn_id(commit)}
    assert not assembler.pending()
    assert entry_to_events(commit) == []


def test_aborted_prepared_transaction_yields_nothing() -> None:
    prepare, abort = entries("txn_prepared_abort_60")
    assembler = TransactionAssembler()
    assert assembler.feed(prepare) == [] and assembler.pending()
    assert assembler.feed(abort) == []
    assert not assembler.pending() and assembler.oldest_pending_ts is None and assembler.flush() == []
    assert feed_all([abort]) == []  # an abort whose prepare was never read discards nothing


def test_commit_without_its_prepare_is_refused() -> None:
    _, commit = entries("txn_prepared_commit_60")
    with pytest.raises(InconsistencyError, match="prepare entry was not read"):
        TransactionAssembler().feed(commit)


def test_interleaved_transactions_complete_independently() -> None:
    first, second, final = entries("txn_partial_chain_60")
    prepare, commit = entries("txn_prepared_commit_60")
    other = only("crud_insert_80_with_o2")
    prepare["ts"], other["ts"], commit["ts"] = (
        Timestamp(1700003100, 2),
        Timestamp(1700003100, 3),
        Timestamp(1700003100, 4),
    )
    second["ts"], final["ts"] = Timestamp(1700003100, 5), Timestamp(1700003100, 6)
    assembler = TransactionAssembler()
    out: list[list[Unit]] = [assembler.feed(e) for e in (first, prepare, other, commit, second)]
    assert [len(units) for units in out] == [0, 0, 1, 1, 0]
    assert shape(out[3][0]) == [("insert", "app.orders", 200), ("update", "app.orders", 200)]
    assert assembler.oldest_pending_ts == first["ts"]
    [unit] = assembler.feed(final)
    assert len(unit) == 6 and unit[0].position == Position(ts=final["ts"])


def test_oldest_pending_ts_keeps_checkpoints_before_an_unfinished_transaction() -> None:
    prepare, commit = entries("txn_prepared_commit_60")
    later = [only("crud_insert_80_with_o2"), only("crud_delete_80")]
    later[0]["ts"], later[1]["ts"] = Timestamp(1700003201, 1), Timestamp(1700003203, 1)
    stream = [prepare, *later, commit]
    assembler = TransactionAssembler()
    checkpoint: tuple[int, int] | None = None  # what a careful caller saves after applying each unit
    for entry in stream:
        for unit in assembler.feed(entry):
            applied = entry_sort_key({"ts": unit[-1].position.ts})
            oldest = assembler.oldest_pending_ts
            if oldest is None or applied < entry_sort_key({"ts": oldest}):
                checkpoint = applied
            if entry is not commit:
                assert checkpoint is None  # the inserts/deletes after the prepare did not move it
    assert checkpoint == entry_sort_key(commit)
    # Why: a restart from after the prepare entry could never commit that transaction.
    with pytest.raises(InconsistencyError):
        feed_all([*later, commit])


# ---------------------------------------------------------------------------------------------
# SecantusDB dialect
# ---------------------------------------------------------------------------------------------


def test_secantus_transaction_groups_until_another_key_arrives() -> None:
    stream = entries("secantus_txn")
    assembler = TransactionAssembler()
    for entry in stream[:3]:
        assert assembler.feed(entry) == []
    assert assembler.pending() and assembler.oldest_pending_ts == stream[0]["ts"]
    txn_unit, plain = assembler.feed(stream[3])
    assert shape(txn_unit) == [
        ("insert", "app.orders", 700),
        ("update", "app.orders", 700),
        ("delete", "app.orders", 7),
    ]
    assert positions(txn_unit) == [(stream[0]["ts"], i) for i in range(3)]
    assert {e.txn for e in txn_unit} == {txn_id(stream[0])}
    assert shape(plain) == [("insert", "app.orders", 701)] and plain[0].txn is None
    assert not assembler.pending()


def test_secantus_transaction_completes_on_flush() -> None:
    stream = entries("secantus_txn")[:3]
    assembler = TransactionAssembler()
    assert all(assembler.feed(entry) == [] for entry in stream)
    [unit] = assembler.flush()
    assert len(unit) == 3 and not assembler.pending() and assembler.oldest_pending_ts is None
    assert assembler.flush() == []


def test_secantus_consecutive_transactions_stay_apart() -> None:
    first, second, third, _ = entries("secantus_txn")
    third["txnNumber"] = bson.Int64(2)  # same session and ts, next transaction
    units = feed_all([first, second, third])
    assert [len(u) for u in units] == [2, 1]
    assert units[1][0].position == Position(ts=third["ts"], index=0)


def test_secantus_entries_with_different_ts_are_different_transactions() -> None:
    first, second, _, _ = entries("secantus_txn")
    second["ts"] = Timestamp(1700006000, 2)  # same session and txnNumber, but another commit
    units = feed_all([first, second])
    assert [positions(u) for u in units] == [[(first["ts"], 0)], [(second["ts"], 0)]]


def test_secantus_group_survives_a_refused_entry() -> None:
    stream = entries("secantus_txn")
    assembler = TransactionAssembler()
    assembler.feed(stream[0])
    with pytest.raises(UnsupportedOplogEntry):
        assembler.feed(only("xi_global_index"))
    assert assembler.pending()
    [unit] = assembler.flush()
    assert shape(unit) == [("insert", "app.orders", 700)]


def test_real_server_retryable_write_is_not_held_back() -> None:
    entry = only("crud_insert_80_with_o2")
    entry.update(lsid={"id": bson.Binary(b"\x02" * 16, 4)}, txnNumber=bson.Int64(3), stmtId=0)
    assembler = TransactionAssembler()
    [unit] = assembler.feed(entry)
    assert shape(unit) == [("insert", "app.orders", 7)] and not assembler.pending()


# ---------------------------------------------------------------------------------------------
# All fixtures as one stream
# ---------------------------------------------------------------------------------------------


def test_every_fixture_as_one_stream() -> None:
    stream = [entry for path in FIXTURES if path.stem != "xi_global_index" for entry in entries(path.stem)]
    stream.sort(key=entry_sort_key)
    units = feed_all(stream)
    sizes = [len(unit) for unit in units]
    # 8 CRUD/no-op, 9 DDL, 1 index build, 1 view create, 2 view changes, 3+6+2 in transactions (abort: none),
    # 3 batched deletes, 2 vectored inserts, 4 nested, SecantusDB 3 + 1.
    assert sizes.count(1) == 8 + 9 + 1 + 1 + 2 + 3 + 2 + 4 + 1
    assert sorted(size for size in sizes if size > 1) == [2, 3, 3, 6]
    flat = [event.position for unit in units for event in unit]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)  # positions only move forward


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000", Timestamp(1700000000, 0)),
        ("1700000000:5", Timestamp(1700000000, 5)),
        (" 12:3 ", Timestamp(12, 3)),
        ("0", Timestamp(0, 0)),
        ("4294967295:4294967295", Timestamp(4294967295, 4294967295)),
    ],
)
def test_parse_oplog_limit(text: str, expected: Timestamp) -> None:
    assert parse_oplog_limit(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "12:",
        ":3",
        "1:2:3",
        "-1",
        "1.5",
        "12 :3",
        "4294967296",
        "1:4294967296",
        "\uff11\uff12",
        "12\n:3",
        "0x10",
    ],
)
def test_parse_oplog_limit_rejects(text: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_oplog_limit(text)
    assert "SECONDS[:ORDINAL]" in raised.value.message or "at most" in raised.value.message
    assert "\n" not in raised.value.one_line()


def test_entry_sort_key_orders_by_time_then_increment() -> None:
    stream = [{"ts": Timestamp(5, 2)}, {"ts": Timestamp(4, 9)}, {"ts": Timestamp(5, 1)}]
    assert [entry_sort_key(e) for e in sorted(stream, key=entry_sort_key)] == [(4, 9), (5, 1), (5, 2)]
