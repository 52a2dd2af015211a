"""Replaying an oplog update onto a document that already holds its result (or a later one) converges.

This is what `mongorestore --oplogReplay` and MongoDB's initial sync rely on: a dump is not a
point-in-time image, so a dumped document may already show updates whose entries are replayed after
it. For every update kind: apply(post) == post, and replaying a run of entries onto the image after
the last of them gives that image again.
"""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson import Timestamp

from mongoferry.core.events import ChangeEvent, Position
from mongoferry.core.simulate import updated_document

PRE: dict[str, Any] = {"_id": 1, "a": 1, "b": {"x": 1, "y": [1, 2, 3]}, "c": "z", "arr": [{"k": 1}, {"k": 2}]}

# (name, oplog `o` of an op:'u' entry) in every format a server writes.
UPDATES: list[tuple[str, dict[str, Any]]] = [
    ("v1 $set existing", {"$v": 1, "$set": {"a": 2}}),
    ("v1 $set new nested", {"$v": 1, "$set": {"b.new": 1, "d.e": 2}}),
    ("v1 $unset", {"$v": 1, "$unset": {"c": True}}),
    ("v1 $set array element", {"$v": 1, "$set": {"b.y.1": 9}}),
    ("pre-3.6 modifier", {"$set": {"a": 3}}),
    ("v2 update", {"$v": 2, "diff": {"u": {"a": 5}}}),
    ("v2 insert", {"$v": 2, "diff": {"i": {"n1": 1, "n2": 2}}}),
    ("v2 delete", {"$v": 2, "diff": {"d": {"c": False}}}),
    ("v2 move existing to end", {"$v": 2, "diff": {"i": {"a": 1}}}),
    ("v2 sub-document", {"$v": 2, "diff": {"sb": {"u": {"x": 7}, "i": {"z": 1}}}}),
    ("v2 array append", {"$v": 2, "diff": {"sb": {"sy": {"a": True, "u3": 4}}}}),
    ("v2 array truncate", {"$v": 2, "diff": {"sb": {"sy": {"a": True, "l": 1}}}}),
    ("v2 array element diff", {"$v": 2, "diff": {"sarr": {"a": True, "s1": {"u": {"k": 20}}}}}),
    ("replacement", {"_id": 1, "q": 1}),
    # The test server's dialect: change-event style descriptions inside $v:2 entries.
    ("dialect set", {"$v": 2, "diff": {"updatedFields": {"a": 2, "n": 1}, "removedFields": [],
                                       "truncatedArrays": []}}),
    ("dialect unset", {"$v": 2, "diff": {"updatedFields": {}, "removedFields": ["c"], "truncatedArrays": []}}),
    ("dialect nested", {"$v": 2, "diff": {"updatedFields": {"b.x": 5, "b.new": 1}, "removedFields": [],
                                          "truncatedArrays": []}}),
    ("dialect push", {"$v": 2, "diff": {"updatedFields": {"b.y.3": 4}, "removedFields": [],
                                        "truncatedArrays": []}}),
    ("dialect truncate", {"$v": 2, "diff": {"updatedFields": {}, "removedFields": [],
                                            "truncatedArrays": [{"field": "b.y", "newSize": 2}]}}),
    ("dialect whole array", {"$v": 2, "diff": {"updatedFields": {"b.y": [9]}, "removedFields": [],
                                               "truncatedArrays": []}}),
]


def event(o: dict[str, Any]) -> ChangeEvent:
    return ChangeEvent(op="update", ns="t.c", position=Position(Timestamp(1, 1)), doc_id=1, has_id=True,
                       update=o, update_kind="oplog")


def apply(doc: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    out = updated_document(bson.decode(bson.encode(doc)), event(o))
    assert out is not None, f"refused to replay {o!r} onto {doc!r}"
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bson.encode(a) == bson.encode(b)


@pytest.mark.parametrize(("name", "o"), UPDATES, ids=[n for n, _ in UPDATES])
def test_replaying_an_update_onto_its_own_result_changes_nothing(name: str, o: dict[str, Any]) -> None:
    post = apply(PRE, o)
    assert same(apply(post, o), post), name


FAMILIES = {family: [o for name, o in UPDATES if name.startswith(family)] for family in ("v1", "v2", "dialect")}
CASES = [(family, start) for family, run in FAMILIES.items() for start in range(len(run))]


@pytest.mark.parametrize(("family", "start"), CASES)
def test_replaying_a_run_of_updates_onto_the_image_after_the_run_converges(family: str, start: int) -> None:
    """A dumped document read after the whole run, then the run's entries replayed from `start` on.
    (Within one format: a server writes one. For $v:2, a replayed `i` moves its field to the end
    again, so values converge but the order of fields appended after it may not: that is the
    server's own oplog application, which a replayer must not improve on.)"""
    run = FAMILIES[family]
    final = PRE
    for o in run:
        final = apply(final, o)
    replayed = final
    for o in run[start:]:
        replayed = apply(replayed, o)
    if family == "v2":
        assert bson.decode(bson.encode(replayed)) == bson.decode(bson.encode(final))
        assert sorted(replayed) == sorted(final)
    else:
        assert same(replayed, final)


def test_a_later_replacement_blocks_nothing_and_converges() -> None:
    """`$set b.x` logged before `b` became a scalar: replayed onto the later image it is a no-op
    until the entry that made `b` a scalar is replayed too."""
    first = {"$v": 2, "diff": {"updatedFields": {"b.x": 5}, "removedFields": [], "truncatedArrays": []}}
    second = {"$v": 2, "diff": {"updatedFields": {"b": 7}, "removedFields": [], "truncatedArrays": []}}
    final = apply(apply(PRE, first), second)
    assert same(apply(apply(final, first), second), final)
