"""The split's routing rule (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId

from mongoferry.core.errors import UsageError
from mongoferry.core.routing import (
    MISSING,
    Rule,
    bson_type,
    key_value,
    parse_rule,
    rule_from_spec,
    rule_spec,
    stable_hash,
)


def test_mod_routes_integral_numbers_of_every_type_and_negative_keys_non_negatively() -> None:
    rule = parse_rule(2, "mod", ["userId"], [], [], None)
    assert [rule.part_of("a.b", {"userId": v}) for v in (4, 5, Int64(7), 6.0, -3)] == [0, 1, 1, 0, 1]
    assert rule.part_of("a.b", {"userId": 2.5}) is None
    assert rule.part_of("a.b", {"userId": "5"}) is None
    assert rule.part_of("a.b", {"userId": True}) is None, "a boolean is not a number here"
    assert rule.part_of("a.b", {}) is None
    assert rule.part_of("a.b", {"userId": None}) is None


def test_a_dotted_key_and_a_per_namespace_key() -> None:
    rule = parse_rule(3, "mod", ["user.id", "shop.orders=customer"], [], [], None)
    assert rule.part_of("app.users", {"user": {"id": 4}}) == 1
    assert rule.part_of("shop.orders", {"customer": 5, "user": {"id": 4}}) == 2
    assert key_value({"user": [{"id": 1}]}, "user.id") is MISSING, "arrays are not traversed"


def test_unrouted_documents_go_to_the_given_part_only_when_asked() -> None:
    assert parse_rule(2, "mod", ["k"], [], [], 1).part_of("a.b", {}) == 1
    assert parse_rule(2, "mod", ["k"], [], [], None).part_of("a.b", {}) is None


def test_broadcast_namespaces_belong_to_every_part() -> None:
    rule = parse_rule(2, "mod", ["k"], [], ["ref", "app.countries"], None)
    assert all(rule.owns(i, "ref.x", {}) for i in (0, 1))
    assert all(rule.owns(i, "app.countries", {}) for i in (0, 1))
    assert rule.owns(0, "app.users", {"k": 2}) and not rule.owns(1, "app.users", {"k": 2})


def test_hash_is_stable_and_the_same_for_one_integral_number_of_any_type() -> None:
    assert stable_hash(5) == stable_hash(Int64(5)) == stable_hash(5.0)
    assert stable_hash("5") != stable_hash(5)
    # Fixed values: a change here re-routes every existing split.
    assert (stable_hash(1), stable_hash("acme")) == (0x40F7A1B2C1E3C0A8, 0xBD8741D1E5AEEDAB)
    rule = parse_rule(4, "hash", ["k"], [], [], None)
    parts = {rule.part_of("a.b", {"k": i}) for i in range(200)}
    assert parts == {0, 1, 2, 3}
    assert rule.part_of("a.b", {"k": ObjectId("65a000000000000000000000")}) in {0, 1, 2, 3}


def test_range_by_bounds_in_mongodb_order() -> None:
    rule = parse_rule(3, "range", ["name"], ['"h"', '"p"'], [], None)
    assert [rule.part_of("a.b", {"name": v}) for v in ("apple", "h", "kiwi", "p", "zebra")] == [0, 1, 1, 2, 2]
    assert rule.part_of("a.b", {"name": 5}) == 0, "numbers sort before strings"
    assert rule.part_of("a.b", {"name": {"x": 1}}) is None
    assert rule.part_of("a.b", {"name": MinKey()}) == 0 and rule.part_of("a.b", {"name": MaxKey()}) == 2
    dated = parse_rule(2, "range", ["at"], ['{"$date": "2024-01-01T00:00:00Z"}'], [], None)
    assert dated.part_of("a.b", {"at": dt.datetime(2023, 5, 1)}) == 0
    assert dated.part_of("a.b", {"at": dt.datetime(2024, 5, 1)}) == 1


def test_range_compares_every_numeric_type_as_one_number_line() -> None:
    rule = parse_rule(3, "range", ["k"], ["0", "100"], [], None)
    values = [-5, Int64(-1), -0.5, 0, 0.0, Decimal128("0"), 99.999, Decimal128("99.5"), Int64(100), 100.0,
              Decimal128("1E+3"), float("inf"), float("-inf")]
    assert [rule.part_of("a.b", {"k": v}) for v in values] == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0]
    assert rule.part_of("a.b", {"k": float("nan")}) == 0 and rule.part_of("a.b", {"k": Decimal128("NaN")}) == 0
    assert rule.part_of("a.b", {"k": MinKey()}) == 0 and rule.part_of("a.b", {"k": MaxKey()}) == 2
    assert rule.part_of("a.b", {"k": "0"}) == 2, "every string sorts after every number"


def test_range_bounds_may_be_minkey_or_maxkey() -> None:
    rule = parse_rule(2, "range", ["k"], ['{"$maxKey": 1}'], [], None)
    assert rule.part_of("a.b", {"k": "zzz"}) == 0 and rule.part_of("a.b", {"k": MaxKey()}) == 1


@pytest.mark.parametrize(("update", "changes"), [
    ({"$set": {"name": "x"}}, False),
    ({"$set": {"userId": 3}}, True),
    ({"$unset": {"userId": ""}}, True),
    ({"$v": 2, "diff": {"u": {"n": 1}}}, False),
    ({"$v": 2, "diff": {"u": {"userId": 1}}}, True),
    ({"$v": 2, "diff": {"suser": {"u": {"id": 1}}}}, False),
    ({"$v": 2, "diff": {"updatedFields": {"userId": 9}, "removedFields": []}}, True),
    ({"updatedFields": {"a.b": 1}, "removedFields": ["c"]}, False),
    ({"updatedFields": {"userId": 1}, "removedFields": []}, True),
    ({"_id": 1, "userId": 4}, True),  # a replacement
])
def test_an_update_may_change_the_key_only_when_it_names_a_path_over_it(update: dict, changes: bool) -> None:
    assert Rule(2, "mod", "userId").key_may_change("a.b", update) is changes


def test_dotted_key_paths_overlap_with_their_parents_and_children() -> None:
    rule = Rule(2, "mod", "user.id")
    assert rule.key_may_change("a.b", {"$set": {"user": {"id": 1}}})
    assert rule.key_may_change("a.b", {"$set": {"user.id": 1}})
    assert not rule.key_may_change("a.b", {"$set": {"user.name": 1}})


@pytest.mark.parametrize(("args", "needle"), [
    ((1, "mod", ["k"], [], [], None), "at least two --dst"),
    ((2, "spread", ["k"], [], [], None), "--by 'spread'"),
    ((2, "mod", [], [], [], None), "needs --key"),
    ((2, "mod", ["a", "b"], [], [], None), "two default keys"),
    ((2, "mod", ["$a"], [], [], None), "not a field path"),
    ((2, "mod", ["k"], ["5"], [], None), "--bound is for --by range"),
    ((3, "range", ["k"], ["5"], [], None), "needs 2 --bound"),
    ((3, "range", ["k"], ["9", "5"], [], None), "not increasing"),
    ((2, "mod", ["k"], [], [], 2), "--unrouted 2"),
])
def test_bad_rules_are_refused_with_what_to_do(args: tuple, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_rule(*args)
    assert needle in info.value.message and info.value.hint


def test_describe_names_the_rule() -> None:
    text = parse_rule(2, "mod", ["userId"], [], ["ref"], 0).describe()
    assert "userId mod 2" in text and "ref" in text and "part 0" in text


# ---------------------------------------------------------------- prune's view of the rule
def test_prunable_is_another_parts_document() -> None:
    rule = Rule(2, "mod", "u")
    assert rule.prunable(0, "a.b", {"u": 3}) and not rule.prunable(1, "a.b", {"u": 3})
    assert not rule.prunable(0, "a.b", {"x": 1}), "nobody's document is kept"
    assert Rule(2, "mod", "u", unrouted=1).prunable(0, "a.b", {"x": 1}), "the unrouted part's document goes"
    assert not Rule(2, "mod", "u", broadcast=frozenset({"a"})).prunable(0, "a.b", {"u": 3})


def test_arrays_are_not_routable() -> None:
    for by in ("mod", "hash"):
        assert Rule(2, by, "u").part_of_value([1]) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "type_name"), [
    (5, "int"), (2**40, "long"), (Int64(5), "long"), (5.0, "double"), ("x", "string"), (True, "bool"),
    (ObjectId("5f0000000000000000000000"), "objectId"), (dt.datetime(2024, 1, 1), "date"),
    (Decimal128("5"), "decimal"), ({"a": 1}, "object"), (None, "null"),
])
def test_bson_type_names_what_the_server_stores(value: object, type_name: str) -> None:
    assert bson_type(value) == type_name


def test_unchanged_filter_pins_type_and_value() -> None:
    rule = Rule(2, "mod", "u")
    assert rule.unchanged_filter("a.b", {"_id": 1, "u": 3}) == {
        "_id": 1, "u": {"$eq": 3, "$type": "int", "$not": {"$type": "array"}}}
    assert rule.unchanged_filter("a.b", {"_id": 1}) == {"_id": 1, "u": {"$exists": False}}
    assert rule.unchanged_filter("a.b", {"_id": 1, "u": None})["u"] == {"$type": "null", "$not": {"$type": "array"}}


def test_unchanged_filter_of_a_dotted_key_refuses_arrays_on_the_way() -> None:
    rule = Rule(2, "mod", "user.id", ns_keys={"x.y": "k"})
    f = rule.unchanged_filter("a.b", {"_id": "i", "user": {"id": Int64(7)}})
    assert f == {"_id": "i", "user": {"$not": {"$type": "array"}},
                 "user.id": {"$eq": Int64(7), "$type": "long", "$not": {"$type": "array"}}}
    assert rule.unchanged_filter("x.y", {"_id": 2, "k": 1})["k"]["$eq"] == 1, "the namespace's own key"


def test_rule_spec_round_trips() -> None:
    rule = parse_rule(3, "range", ["u", "a.b=c.d"], ["10", '{"$oid": "5f0000000000000000000000"}'], ["ref"], 2)
    again = rule_from_spec(rule_spec(rule))
    assert again == rule
    assert all(again.part_of_value(v) == rule.part_of_value(v) for v in (1, 10, 11, "z"))


def test_prune_parts_flag_is_named() -> None:
    with pytest.raises(UsageError) as err:
        parse_rule(1, "mod", ["u"], [], [], None, parts_flag="--parts")
    assert "--parts 1" in err.value.one_line()


def test_hash_of_an_integral_double_beyond_int64_is_its_double_encoding() -> None:
    rule = Rule(2, "hash", "k")
    assert rule.part_of_value(1e19) == stable_hash(1e19) % 2
    assert stable_hash(1e19) != stable_hash(Int64(2**63 - 1)) and stable_hash(-1e19) != stable_hash(1e19)
    assert stable_hash(2.0**62) == stable_hash(Int64(2**62)), "inside int64 every integral type is one value"


def test_unchanged_filter_of_a_missing_dotted_key_does_not_look_into_arrays() -> None:
    rule = Rule(2, "mod", "a.b.c")
    query = rule.unchanged_filter("x.y", {"_id": 1, "a": [{"b": {"c": 1}}]})
    present = {"a": {"$type": "object", "$not": {"$type": "array"}},
               "a.b": {"$type": "object", "$not": {"$type": "array"}}, "a.b.c": {"$exists": True}}
    assert query == {"_id": 1, "$nor": [present]}
    assert Rule(2, "mod", "a").unchanged_filter("x.y", {"_id": 1}) == {"_id": 1, "a": {"$exists": False}}
