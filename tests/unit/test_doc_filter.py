"""--filter (pure): parsing, the fields a query reads, which changes need the source's verdict."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId, Timestamp

from mongoferry.core import apply_plan as plan
from mongoferry.core.doc_filter import and_filter, filter_paths, may_change_match, parse_filters
from mongoferry.core.errors import UsageError
from mongoferry.core.events import ChangeEvent, Position
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.config import CopySettings, load_settings


def test_entries_parse_as_extended_json_per_namespace() -> None:
    got = parse_filters(['shop.orders={"tenant": "acme"}', 'app.users={"_id": {"$oid": "5f0000000000000000000001"}}'])
    assert got == {"shop.orders": {"tenant": "acme"}, "app.users": {"_id": ObjectId("5f0000000000000000000001")}}


@pytest.mark.parametrize(("entry", "says"), [
    ('{"tenant": "acme"}', "write DB.COLL=QUERY"),
    ('shop={"tenant": 1}', "not a DB.COLL namespace"),
    ("shop.orders={tenant: acme}", "not valid extended JSON"),
    ("shop.orders=[1, 2]", "not a query document"),
    ("shop.orders=", "write DB.COLL=QUERY"),
])
def test_a_bad_entry_is_one_clear_usage_error(entry: str, says: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_filters([entry])
    assert says in err.value.one_line()


def test_two_different_filters_for_one_namespace_are_refused() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_filters(['a.b={"x": 1}', 'a.b={"x": 2}'])


def test_the_fields_a_query_reads() -> None:
    assert filter_paths({"tenant": "acme", "a.b": {"$gt": 1}}) == ["tenant", "a.b"]
    assert filter_paths({"$or": [{"x": 1}, {"$and": [{"y": 2}]}], "$comment": "why"}) == ["x", "y"]
    assert filter_paths({"$expr": {"$eq": ["$x", 1]}}) is None
    assert filter_paths({"$or": [{"x": 1}, {"$where": "true"}]}) is None


@pytest.mark.parametrize(("update", "changes"), [
    ({"$set": {"name": "n"}}, False),  # $v:1 modifiers clear of the filter
    ({"$set": {"tenant": "x"}}, True),
    ({"$unset": {"tenant.sub": ""}}, True),  # inside the filtered field
    ({"$set": {"a": {"b": 2}}}, True),  # replaces the parent of a filtered path
    ({"$set": {"a.0.b": 1}}, True),  # `a.b` also reads inside an array `a`
    ({"$set": {"a.1": {"b": 1}}}, True),  # a whole element of it
    ({"$set": {"abc": 1}}, False),  # a field that merely starts with the same letters
    ({"diff": {"u": {"name": "n"}}}, False),  # oplog $v:2
    ({"diff": {"stenant": {"u": {"x": 1}}}}, True),
    ({"updatedFields": {"other": 1}, "removedFields": []}, False),  # a change event's description
    ({"updatedFields": {}, "removedFields": ["tenant"]}, True),
    ({"name": "a whole replacement"}, True),
    (None, True),
])
def test_which_updates_may_change_whether_a_document_matches(update: dict[str, Any] | None, changes: bool) -> None:
    assert may_change_match({"tenant": "acme", "a.b": 1}, update) is changes


def test_an_opaque_query_makes_every_update_a_question_for_the_source() -> None:
    assert may_change_match({"$expr": {"$gt": ["$n", 1]}}, {"$set": {"other": 1}})


def test_and_filter() -> None:
    assert and_filter({"_id": 1}, None) == {"_id": 1}
    assert and_filter({"_id": 1}, {"t": 2}) == {"_id": 1, "t": 2}  # an index lookup everywhere
    assert and_filter({"_id": 1}, {"_id": {"$gt": 0}}) == {"$and": [{"_id": 1}, {"_id": {"$gt": 0}}]}


def _event(op: str, _id: int, ns: str = "app.users", update: dict[str, Any] | None = None,
           document: dict[str, Any] | None = None) -> ChangeEvent:
    return ChangeEvent(op=op, ns=ns, position=Position(Timestamp(1, 1)), doc_id=_id,  # type: ignore[arg-type]
                       has_id=True, document=document, update=update)


def test_changes_in_a_filtered_namespace_read_the_source_only_where_the_match_may_change() -> None:
    events = [_event("insert", 1, document={"_id": 1, "t": 1}),
              _event("update", 2, update={"$set": {"name": "x"}}),
              _event("update", 3, update={"$set": {"t": "two"}}),
              _event("delete", 4),
              _event("replace", 5, document={"_id": 5}),
              _event("insert", 6, ns="app.other", document={"_id": 6})]
    states, _ = plan.by_document(events, lambda ns: ns, 0)
    plan.read_filtered(states.values(), {"app.users": {"t": {"$type": "int"}}})
    looked_up = {st.doc_id for st in states.values() if st.lookup}
    assert looked_up == {1, 3, 5}


def test_a_filter_is_part_of_the_selection_and_of_its_fingerprint() -> None:
    m = NamespaceMap.build(include=["app"], filters=['app.users={"t": 1}'])
    assert m.filter_of("app.users") == {"t": 1} and m.filter_of("app.orders") is None
    assert m.fingerprint()["filter"] == ['app.users={"t": {"$numberInt": "1"}}']
    assert "filter" not in NamespaceMap.build(include=["app"]).fingerprint()  # older jobs still resume
    with pytest.raises(UsageError, match="not a selected collection"):
        m.resolve(["app.orders"])


def test_filters_come_from_flags_env_lines_and_yaml_mappings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(CopySettings, {"filter": ['a.b={"x": 1, "y": 2}']})
    assert s.filter == ['a.b={"x": 1, "y": 2}']
    monkeypatch.setenv("MONGOFERRY_FILTER", 'a.b={"x": 1}\nc.d={"y": {"$in": [1, 2]}}')
    assert load_settings(CopySettings, {}).filter == ['a.b={"x": 1}', 'c.d={"y": {"$in": [1, 2]}}']
    monkeypatch.delenv("MONGOFERRY_FILTER")
    config = tmp_path / "c.yaml"
    config.write_text("filter:\n  shop.orders: {tenant: acme}\n")
    assert load_settings(CopySettings, {}, config).filter == ['shop.orders={"tenant": "acme"}']
