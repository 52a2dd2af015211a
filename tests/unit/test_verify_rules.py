"""Pure rules of the verifier outside compare.py: the `_id` sort order and exact `$in` filters,
shard keys, new-namespace pairing, and the HTTP API's parameters and summaries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import bson
import pytest
from bson import Decimal128, Int64, MaxKey, MinKey, ObjectId

from mongoferry.core.namespaces import NamespaceMap
from mongoferry.verify.api import (
    ns_mismatch_info,
    parse_index_spec_ignore,
    parse_min_duration,
)
from mongoferry.verify.compare import doc_key_for_value
from mongoferry.verify.findings import Pair, id_type, tolerated
from mongoferry.verify.keys import fast_id_key, id_sort_key, id_value, raw_id_in_filter, split_batch
from mongoferry.verify.metadata import pair_for_new_namespace, source_of
from mongoferry.verify.spec_compare import compare_shard_keys, shard_keys_equal
from mongoferry.verify.tasks import merge_entry, mismatch_since

# ---------------------------------------------------------------------------------------
# `_id` sort order: the server's type brackets, numbers by value across types
# ---------------------------------------------------------------------------------------

# In the order MongoDB sorts them (BSON comparison order).
SORTED_IDS: list[Any] = [
    MinKey(),
    None,
    -2.5,
    Int64(-1),
    0,
    Decimal128("0.5"),
    1,
    Int64(2),
    3.0,
    "",
    "a",
    "b",
    {"a": 1},
    {"a": 2},
    {"b": 0},
    [1],
    bson.Binary(b"\x00", 0),
    ObjectId("000000000000000000000001"),
    ObjectId("ffffffffffffffffffffffff"),
    False,
    True,
    dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    bson.Timestamp(1, 1),
    bson.Regex("a", "i"),
    MaxKey(),
]


def test_id_sort_key_orders_like_the_server() -> None:
    keys = [doc_key_for_value(v) for v in SORTED_IDS]
    assert sorted(keys, key=id_sort_key) == keys


def test_numbers_of_different_types_share_a_sort_position_but_not_a_key() -> None:
    one, long_one, double_one = (doc_key_for_value(v) for v in (1, Int64(1), 1.0))
    assert id_sort_key(one) == id_sort_key(long_one) == id_sort_key(double_one)
    assert len({one, long_one, double_one}) == 3


def test_fast_id_key_matches_the_walk_when_id_is_not_first() -> None:
    first = bson.encode({"_id": "x", "a": 1})
    later = bson.encode({"a": 1, "_id": "x"})
    assert fast_id_key(first) == fast_id_key(later) == doc_key_for_value("x")


@pytest.mark.parametrize("value", [1, Int64(1), 1.0, "s", ObjectId(), {"a": [1, 2]}, Decimal128("1")])
def test_raw_in_filter_keeps_exact_types(value: Any) -> None:
    filt = bson.decode(raw_id_in_filter([doc_key_for_value(value)]).raw)
    got = filt["_id"]["$in"][0]
    assert got == value and type(got) is type(value)


def test_id_value_round_trips_for_display() -> None:
    assert id_value(doc_key_for_value(Int64(7))) == 7
    assert id_value(b"\x99garbage") == {"$binary": b"\x99garbage".hex()}


def test_split_batch() -> None:
    docs = [bson.encode({"_id": i}) for i in range(3)]
    assert split_batch(b"".join(docs)) == docs
    assert split_batch(b"") == []


# ---------------------------------------------------------------------------------------
# Shard keys (only compared when both clusters are sharded)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b", [
    ({"x": 1}, {"x": 1.0}), ({"x": 1}, {"x": Int64(1)}), ({"x": 1}, {"x": Decimal128("1")}),
    ({"x": "hashed"}, {"x": "hashed"}), ({"_id": 1, "y": -1}, {"_id": 1.0, "y": Int64(-1)})])
def test_equal_shard_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert shard_keys_equal(a, b)
    assert compare_shard_keys(a, b) is None


@pytest.mark.parametrize("a,b", [({"_id": 1, "foo": 1}, {"foo": 1, "_id": 1}), ({"x": 1}, {"x": -1}),
                                 ({"x": 1}, {"x": "hashed"}), ({"x": 1}, {"y": 1}), ({"x": 1}, {"x": 1, "y": 1}),
                                 ({"x": True}, {"x": 1})])
def test_different_shard_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert not shard_keys_equal(a, b)
    diff = compare_shard_keys(a, b)
    assert diff is not None and diff.aspect == "shard key" and diff.kind == "content"
    assert diff.detail is not None and diff.detail.startswith("Mismatch: src: {")


def test_shard_key_on_one_side_only() -> None:
    assert compare_shard_keys(None, None) is None
    only_src = compare_shard_keys({"x": 1}, None)
    only_dst = compare_shard_keys(None, {"x": 1})
    assert only_src is not None and only_src.kind == "missing_on_dst" and only_src.aspect == "shard key"
    assert only_dst is not None and only_dst.kind == "missing_on_src"


# ---------------------------------------------------------------------------------------
# Namespaces that appear after a check started
# ---------------------------------------------------------------------------------------


def test_new_source_namespace_pairs_through_renames() -> None:
    nsmap = NamespaceMap.build(rename=["app=app2", "shop.a=shop.b"], exclude=["logs"])
    assert pair_for_new_namespace(nsmap, "src", "app.new") == Pair("app.new", "app2.new")
    assert pair_for_new_namespace(nsmap, "src", "shop.a") == Pair("shop.a", "shop.b")
    assert pair_for_new_namespace(nsmap, "src", "logs.x") is None
    assert pair_for_new_namespace(nsmap, "src", "app.system.views") is None


def test_new_destination_namespace_pairs_with_its_origin() -> None:
    nsmap = NamespaceMap.build(rename=["app=app2"], include=["app", "shop"])
    assert pair_for_new_namespace(nsmap, "dst", "app2.new") == Pair("app.new", "app2.new")
    assert pair_for_new_namespace(nsmap, "dst", "shop.c") == Pair("shop.c", "shop.c")
    assert pair_for_new_namespace(nsmap, "dst", "other.c") is None
    # app.c would have become app2.c, so a destination app.c belongs to no selected source
    assert source_of(nsmap, "app.c") is None


# ---------------------------------------------------------------------------------------
# HTTP API parameters and summaries
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [(None, 0), ("", 0), ("0", 0), ("60", 60), ("4294967295", 4294967295)])
def test_min_duration_accepts_uint32(value: str | None, expected: int) -> None:
    assert parse_min_duration(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "4294967296", " 5"])
def test_min_duration_refuses_other_values(value: str) -> None:
    with pytest.raises(ValueError, match="invalid `minDurationSecs`"):
        parse_min_duration(value)


def test_index_spec_ignore_lists() -> None:
    assert parse_index_spec_ignore([]) == frozenset()
    assert parse_index_spec_ignore(["unique, expireAfterSeconds"]) == {"unique", "expireAfterSeconds"}
    assert parse_index_spec_ignore(["unique", "expireAfterSeconds"]) == {"unique", "expireAfterSeconds"}
    with pytest.raises(ValueError, match=r"invalid `indexSpecIgnore`: \[`bogus`\]"):
        parse_index_spec_ignore(["unique,bogus"])


INDEX_FINDING = {"type": "content", "namespace": "d.c", "aspect": "index", "component": "a_1",
                 "detail": '{"op":"add","path":"/unique","value":true}'}


def test_tolerated_only_suppresses_index_patches_it_covers() -> None:
    assert tolerated(INDEX_FINDING, frozenset({"unique"}))
    assert not tolerated(INDEX_FINDING, frozenset())
    assert not tolerated(INDEX_FINDING, frozenset({"expireAfterSeconds"}))
    assert not tolerated({**INDEX_FINDING, "type": "missingOnDst"}, frozenset({"unique"}))
    assert not tolerated({**INDEX_FINDING, "aspect": "spec"}, frozenset({"unique"}))


def test_ns_mismatch_info_shapes() -> None:
    assert ns_mismatch_info(INDEX_FINDING) == INDEX_FINDING
    missing = {"type": "missingOnDst", "namespace": "d.c", "aspect": "exist", "component": None, "detail": "Missing"}
    assert ns_mismatch_info(missing) == {"type": "missingOnDst", "namespace": "d.c", "aspect": "exist"}


# ---------------------------------------------------------------------------------------
# Recheck queue: how long a document has differed
# ---------------------------------------------------------------------------------------

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)
T1 = T0 + dt.timedelta(seconds=5)


def test_a_change_restarts_a_mismatch_age() -> None:
    assert mismatch_since(T0, None) == T0          # differing, untouched since
    assert mismatch_since(T0, T1) == T1            # changed after it was first seen different
    assert mismatch_since(T1, T0) == T1            # a change before the first mismatch does not count
    assert mismatch_since(None, T1) is None        # only changed: no mismatch known yet


def test_duplicate_queue_entries_merge_earliest_mismatch_and_latest_change() -> None:
    key = {"g": 2, "ns": "a.b", "k": b"\x10\x01\x00\x00\x00"}
    assert merge_entry({"_id": key, "dst": "a.b"}) is None
    op = merge_entry({"_id": key, "dst": "a.b", "first": T0, "changed": T1})
    assert op is not None
    assert op._filter == {"_id": key}
    assert op._doc == {"$min": {"first": T0}, "$max": {"changed": T1}}


def test_id_type_names_the_bson_type() -> None:
    assert id_type(doc_key_for_value(1)) == "32-bit integer"
    assert id_type(doc_key_for_value(Int64(1))) == "64-bit integer"
    assert id_type(b"") == "missing"


def test_long_values_are_cut_with_their_length() -> None:
    from mongoferry.verify.keys import to_json_value

    assert to_json_value("short") == "short"
    cut = to_json_value("x" * 600 + "A")
    other = to_json_value("x" * 600 + "B")
    assert cut.endswith("… (603 characters)") and other.endswith("… (603 characters)")
    assert to_json_value("x" * 700) != cut  # same prefix, other length: told apart


def test_remaining_check_time() -> None:
    from mongoferry.verify.tasks import estimate_remaining

    stats = {"docsCompared": 250, "totalDocs": 1000, "srcBytesCompared": 2500, "totalSrcBytes": 10_000}
    assert estimate_remaining(stats, 50.0, 100.0) == 75.0                           # bytes left / bytes per s
    no_size = {k: v for k, v in stats.items() if k != "totalSrcBytes"}
    assert estimate_remaining(no_size, 50.0, 100.0) == 15.0                         # documents left / docs per s
    assert estimate_remaining(no_size, 0.0, 0.0) is None                            # no rate yet
    assert estimate_remaining({**stats, "docsCompared": 1000}, 0.0, 0.0) == 0.0     # all compared


def test_resume_token_time_of_mongodb_tokens_only() -> None:
    from mongoferry.verify.readers import token_timestamp

    # KeyString: 0x82, then the timestamp's time and increment, big-endian (then the rest)
    token = {"_data": "8265F0A1B2000000072B022C0100296E5A1004"}
    assert token_timestamp(token) == bson.Timestamp(0x65F0A1B2, 7)
    assert token_timestamp({"_data": "3b000000107300010000001174"}) is None  # another server's opaque token
    assert token_timestamp(None) is None and token_timestamp({"_data": "82zz"}) is None


def test_api_answers_bad_parameters_400_and_server_errors_200_redacted() -> None:
    import asyncio
    from typing import cast

    import httpx
    from pymongo.errors import ServerSelectionTimeoutError

    from mongoferry.verify.api import verifier_app
    from mongoferry.verify.server import Verifier

    class Unreachable:
        def progress(self) -> dict[str, Any]:
            raise ServerSelectionTimeoutError("no server at mongodb://u:s3cret@h:1/")

    async def ask(*paths: str) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=verifier_app(cast(Verifier, Unreachable())))
        async with httpx.AsyncClient(transport=transport, base_url="http://verifier") as client:
            return [await client.get(path) for path in paths]

    progress, summary, mismatches = asyncio.run(ask(
        "/api/v1/progress", "/api/v1/summary?minDurationSecs=-1", "/api/v1/mismatches?generation=x"))
    assert progress.status_code == 200 and progress.json() == {"error": "no server at mongodb://u:***@h:1/"}
    assert summary.status_code == 400 and summary.json()["error"].startswith("invalid `minDurationSecs`")
    assert mismatches.status_code == 400 and mismatches.json() == {"error": "invalid `generation`"}
    assert progress.headers["server"].startswith("migration-verifier/")
