"""The MongoDB sink's plan without a server: final states, lookups, ownership and the writes."""

from __future__ import annotations

from typing import Any

from bson import Timestamp

from mongoferry.core import apply_plan as plan
from mongoferry.core.events import ChangeEvent, Position
from mongoferry.core.routing import Rule

N = iter(range(1, 10**6))


def ev(op: str, doc_id: Any, document: Any = None, update: Any = None, kind: str | None = None,
       ns: str = "app.users") -> ChangeEvent:
    return ChangeEvent(op, ns, Position(Timestamp(100, next(N))), doc_id=doc_id, has_id=True,  # type: ignore[arg-type]
                       document=document, update=update, update_kind=kind)  # type: ignore[arg-type]


def planned(events: list[ChangeEvent], current: dict[Any, dict[str, Any]] | None = None,
            ownership: plan.Ownership | None = None, in_transaction: bool = False) -> dict[str, list[plan.Write]]:
    states, _ = plan.by_document(events, lambda ns: ns.replace("app", "app2"), 0)
    need = plan.reads_needed(states, lambda e: False)
    for key, st in states.items():
        if not st.lookup:
            plan.simulate(st, (current or {}).get(st.doc_id) if key[1] in need.get(st.dst_ns, set()) else None,
                          ownership)
    if ownership is not None:
        plan.keep_owned(states.values(), ownership)
    return plan.final_writes(states.values(), in_transaction)


def test_one_write_per_document_in_last_event_order() -> None:
    writes = planned([ev("insert", 1, {"_id": 1, "a": 1}), ev("insert", 2, {"_id": 2}),
                      ev("update", 1, update={"$v": 2, "diff": {"u": {"a": 2}}}, kind="oplog"),
                      ev("delete", 3)])
    assert writes == {"app2.users": [("insert", 2, {"_id": 2}), ("replace", 1, {"_id": 1, "a": 2}),
                                     ("delete", 3, None)]}


def test_an_update_is_replayed_onto_the_destinations_document() -> None:
    current = {7: {"_id": 7, "n": 1, "tags": ["a"]}}
    writes = planned([ev("update", 7, update={"$v": 2, "diff": {"u": {"n": 2}}}, kind="oplog")], current)
    assert writes == {"app2.users": [("replace", 7, {"_id": 7, "n": 2, "tags": ["a"]})]}


def test_an_update_of_a_document_not_there_writes_nothing_and_is_counted() -> None:
    states, _ = plan.by_document([ev("update", 9, update={"$v": 2, "diff": {"u": {"n": 2}}}, kind="oplog")],
                                 lambda ns: ns, 0)
    st = next(iter(states.values()))
    assert plan.simulate(st, None) == 1
    assert plan.final_writes(states.values(), False) == {}


def test_insert_then_delete_is_one_delete_and_in_a_transaction_inserts_are_upserts() -> None:
    assert planned([ev("insert", 1, {"_id": 1}), ev("delete", 1)]) == {"app2.users": [("delete", 1, None)]}
    assert planned([ev("insert", 1, {"_id": 1})], in_transaction=True) == {
        "app2.users": [("replace", 1, {"_id": 1})]}


def test_an_insert_without_its_document_is_read_from_the_source() -> None:
    states, _ = plan.by_document([ev("insert", 1, None)], lambda ns: ns, 0)
    assert plan.reads_needed(states, lambda e: False) == {}
    assert next(iter(states.values())).lookup


class Part:
    def __init__(self, rule: Rule, part: int) -> None:
        self.rule, self.part = rule, part

    def owns(self, ns: str, doc: Any) -> bool:
        return self.rule.owns(self.part, ns, doc)

    def key_may_change(self, ns: str, update: Any) -> bool:
        return self.rule.key_may_change(ns, update)


def test_a_split_part_deletes_a_document_whose_key_moved_away_and_never_writes_another_parts() -> None:
    part0 = Part(Rule(2, "mod", "u"), 0)
    current = {1: {"_id": 1, "u": 2}}
    moved = planned([ev("update", 1, update={"$v": 2, "diff": {"u": {"u": 3}}}, kind="oplog")], current, part0)
    assert moved == {"app2.users": [("delete", 1, None)]}, "the key moved to part 1: deleted here"
    assert planned([ev("insert", 5, {"_id": 5, "u": 5})], ownership=part0) == {}, "never here: nothing to do"
    assert planned([ev("insert", 4, {"_id": 4, "u": 4})], ownership=part0) == {
        "app2.users": [("insert", 4, {"_id": 4, "u": 4})]}


def test_an_update_that_may_make_a_document_ours_is_looked_up() -> None:
    states, _ = plan.by_document([ev("update", 1, update={"$v": 2, "diff": {"u": {"u": 4}}}, kind="oplog")],
                                 lambda ns: ns, 0)
    st = next(iter(states.values()))
    plan.simulate(st, None, Part(Rule(2, "mod", "u"), 0))
    assert st.lookup, "not here, and the key changes: the source's document decides"
