"""Which index options are kept on a replayed build, and how remembered indexes follow DDL."""

from __future__ import annotations

from typing import Any, cast

from bson import SON

from mongoferry.core.namespaces import NamespaceMap
from mongoferry.sinks.index_options import IndexOptions
from mongoferry.sinks.mongo import has_options


def test_an_index_with_every_option_of_the_spec_is_kept_and_one_lacking_any_is_not() -> None:
    built = {"v": 2, "key": SON([("k", 1), ("j", -1)]), "name": "k_u", "unique": True}
    assert has_options(built, {"v": 2, "key": {"k": 1, "j": -1}, "name": "k_u"})  # an event without options
    assert has_options(built, dict(built))
    assert not has_options(built, {**built, "expireAfterSeconds": 60})
    assert not has_options(built, {**built, "unique": False})
    assert not has_options(built, {**built, "key": {"j": -1, "k": 1}})  # another field order: another index


def test_remembered_indexes_follow_renames_and_drops() -> None:
    watch = IndexOptions(cast(Any, None), cast(Any, None), NamespaceMap())
    watch.unsure = {"a.n": {"k_u", "t"}, "a.other": {"x"}, "b.c": {"y"}}
    watch.follow("a.n", {"renameCollection": "a.n", "to": "a.n2", "dropTarget": False})
    assert watch.unsure == {"a.n2": {"k_u", "t"}, "a.other": {"x"}, "b.c": {"y"}}
    watch.follow("a.n2", {"dropIndexes": "n2", "index": ["t"]})
    watch.follow("a.other", {"renameCollection": "a.other", "to": "a.n2", "dropTarget": True})
    assert watch.unsure == {"a.n2": {"x"}, "b.c": {"y"}}  # the target dropped: its indexes with it
    watch.follow("a.n2", {"drop": "n2"})
    watch.follow("b.$cmd", {"dropDatabase": 1})
    assert watch.unsure == {}
