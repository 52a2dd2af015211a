"""The split's routing rule (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from bson.int64 import Int64
from bson.objectid import ObjectId

from mongoferry.core.errors import UsageError
from mongoferry.core.routing import MISSING, Rule, key_value, parse_rule, stable_hash


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
    dated = parse_rule(2, "range", ["at"], ['{"$date": "2024-01-01T00:00:00Z"}'], [], None)
    assert dated.part_of("a.b", {"at": dt.datetime(2023, 5, 1)}) == 0
    assert dated.part_of("a.b", {"at": dt.datetime(2024, 5, 1)}) == 1


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
