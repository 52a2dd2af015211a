"""Tests for mongoferry.sinks.redis.format: oplogtoredis-compatible publications.

The vectors come from /work/shared/reference/oplogtoredis-protocol.md, which
summarises OTR's unit and acceptance tests. Deep-mode field lists are compared
sorted, because OTR walks a Go map. Shallow mode and everything else is compared
exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from bson.binary import Binary
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoferry.core.namespaces import split_ns
from mongoferry.sinks.redis.format import (
    DEDUPE_PUBLISH_LUA,
    PROBLEM_BAD_UPDATE,
    PROBLEM_MALFORMED,
    PROBLEM_MISSING_ID,
    PROBLEM_UNPROCESSABLE_FIELD,
    PROBLEM_UNSUPPORTED_ID,
    Publication,
    dedupe_key,
    encode_channel,
    flattened_update_fields,
    go_json_string,
    last_processed_key,
    meteor_id_stringify,
    parse_resume_value,
    publications_from_change_event,
    publications_from_oplog_entry,
    resume_value,
    script_keys_and_args,
    write_shard,
)

TS = Timestamp(1700000000, 7)
TS_U64 = (1700000000 << 32) | 7
OID = ObjectId("deadbeefdeadbeefdeadbeef")
OID_JSON = '{"$type":"oid","$value":"deadbeefdeadbeefdeadbeef"}'


# --------------------------------------------------------------------------- helpers


def oplog(
    op: str, ns: str, o: Mapping[str, Any], o2: Mapping[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"ts": TS, "op": op, "ns": ns, "o": dict(o)}
    if o2 is not None:
        entry["o2"] = dict(o2)
    entry.update(extra)
    return entry


def single(entry: Mapping[str, Any], **kwargs: Any) -> Publication:
    pubs, problems = publications_from_oplog_entry(entry, **kwargs)
    assert problems == []
    assert len(pubs) == 1
    return pubs[0]


def update_fields(o: Mapping[str, Any], *, deep: bool = False) -> tuple[list[str], list[str]]:
    """Fields (in message order) and problems for an update of foo.bar::someid."""
    pubs, problems = publications_from_oplog_entry(
        oplog("u", "foo.bar", o, {"_id": "someid"}), deep_fields=deep
    )
    assert len(pubs) == 1
    fields = json.loads(pubs[0].message)["f"]
    assert isinstance(fields, list)
    return fields, problems


def deep_fields(diff: Mapping[str, Any]) -> list[str]:
    fields, _ = update_fields({"$v": 2, "diff": diff}, deep=True)
    return sorted(fields)


def category(problem: str) -> str:
    return problem.split(":", 1)[0]


# --------------------------------------------------------------------------- §2.1 JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("someid", '"someid"'),
        ("", '""'),
        ("<script>&</script>", '"\\u003cscript\\u003e\\u0026\\u003c/script\\u003e"'),
        ("a\u2028b\u2029c", '"a\\u2028b\\u2029c"'),
        ("é日本🎉", '"é日本🎉"'),
        ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'),
        ("line\nret\rtab\t", '"line\\nret\\rtab\\t"'),
        ("\x00\x01\x0b\x1a\x1f", '"\\u0000\\u0001\\u000b\\u001a\\u001f"'),
        ("\b\f", '"\\b\\f"'),  # Go >= 1.22 (current OTR images build with Go 1.24)
        ("\x7f/", '"\x7f/"'),  # DEL and '/' pass through
        ("\ufffd", '"\ufffd"'),  # a valid U+FFFD stays raw
    ],
)
def test_go_json_string_escapes(text: str, expected: str) -> None:
    assert go_json_string(text) == expected


def test_go_json_string_pre_go122_control_escapes() -> None:
    assert go_json_string("\b\f\x01\n", pre_go122=True) == '"\\u0008\\u000c\\u0001\\n"'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a\xffb", '"a\\ufffdb"'),
        (b"\xe2\x82A", '"\\ufffd\\ufffdA"'),  # truncated sequence: one per byte, like Go
        (b"\xed\xa0\x80", '"\\ufffd\\ufffd\\ufffd"'),  # encoded surrogate: Go rejects each byte
        (b"\xc3\xa9\x80", '"é\\ufffd"'),
    ],
)
def test_go_json_string_invalid_utf8_becomes_escaped_replacement(raw: bytes, expected: str) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    assert go_json_string(text) == expected


def test_go_json_string_matches_targeted_json_dumps_for_every_bmp_character() -> None:
    """json.dumps(ensure_ascii=False) plus Go's extra escapes agrees everywhere except the surrogates."""
    extra = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
    for cp in [*range(0xD800), *range(0xE000, 0x10000), 0x1F389, 0x10FFFF]:
        ch = chr(cp)
        reference = json.dumps(ch, ensure_ascii=False)
        reference = extra.get(ch, reference[1:-1]).join('""')
        assert go_json_string(ch) == reference, hex(cp)
    mixed = "".join(chr(c) for c in range(0x0, 0x300)) + "\u2028x\u2029<&>"
    expected = json.dumps(mixed, ensure_ascii=False)
    for ch, esc in extra.items():
        expected = expected.replace(ch, esc)
    assert go_json_string(mixed) == expected


def test_message_bytes_keep_non_ascii_raw_and_escape_html() -> None:
    pub = single(oplog("i", "db.c", {"_id": "ü<1>", "naïve&": 1}))
    assert pub.message == '{"e":"i","d":{"_id":"ü\\u003c1\\u003e"},"f":["_id","naïve\\u0026"]}'.encode()
    assert pub.channels == ("db.c", "db.c::ü<1>")


# --------------------------------------------------------------------------- §1.1/§1.2/§2 basic ops


def test_insert_exact_bytes_channels_and_key() -> None:
    pub = single(oplog("i", "tests.Foo", {"_id": "someid", "hello": "world"}))
    assert pub.channels == ("tests.Foo", "tests.Foo::someid")
    assert pub.message == b'{"e":"i","d":{"_id":"someid"},"f":["_id","hello"]}'
    assert pub.dedupe_key == f"oplogtoredis::processed::{TS_U64}::0"
    assert pub.ts == TS
    assert pub.tx_index == 0


def test_delete_exact_bytes() -> None:
    pub = single(oplog("d", "tests.Foo", {"_id": "someid"}))
    assert pub.channels == ("tests.Foo", "tests.Foo::someid")
    assert pub.message == b'{"e":"r","d":{"_id":"someid"},"f":[]}'


def test_replacement_update_lists_top_level_keys_including_id() -> None:
    pub = single(oplog("u", "tests.Foo", {"_id": "someid", "world": "new"}, {"_id": "someid"}))
    assert pub.message == b'{"e":"u","d":{"_id":"someid"},"f":["_id","world"]}'
    assert pub.channels == ("tests.Foo", "tests.Foo::someid")


def test_replacement_unit_case_with_document_dollar_v() -> None:
    fields, problems = update_fields({"$v": {"foo": "bar"}, "foo": "bar"})
    assert fields == ["$v", "foo"]
    assert problems == []


def test_update_id_comes_from_o2_not_o() -> None:
    pub = single(oplog("u", "foo.bar", {"_id": "ignored", "a": 1}, {"_id": "updateid"}))
    assert pub.channels[1] == "foo.bar::updateid"
    assert json.loads(pub.message)["d"] == {"_id": "updateid"}


def test_objectid_channel_and_message_bytes() -> None:
    pub = single(oplog("i", "foo.bar", {"_id": OID, "some": "field"}))
    assert pub.channels == ("foo.bar", "foo.bar::deadbeefdeadbeefdeadbeef")
    assert pub.message == ('{"e":"i","d":{"_id":' + OID_JSON + '},"f":["_id","some"]}').encode()


def test_objectid_update_example_bytes_from_reference() -> None:
    pub = single(oplog("u", "foo.bar", {"$v": 1, "$set": {"some": 1}}, {"_id": OID}))
    assert pub.message == ('{"e":"u","d":{"_id":' + OID_JSON + '},"f":["some"]}').encode()


def test_objectid_hex_is_lowercase() -> None:
    pub = single(oplog("d", "foo.bar", {"_id": ObjectId("DEADBEEFDEADBEEFDEADBEEF")}))
    assert pub.channels[1] == "foo.bar::deadbeefdeadbeefdeadbeef"
    assert b"DEADBEEF" not in pub.message


def test_string_id_with_dollar_is_kept_in_the_publication() -> None:
    pub = single(oplog("i", "db.c", {"_id": "a$b"}))
    assert pub.channels == ("db.c", "db.c::a$b")  # the Lua split happens in Redis (see below)


def test_custom_metadata_prefix_only_changes_the_dedupe_key() -> None:
    pub = single(oplog("i", "tests.Foo", {"_id": "x"}), metadata_prefix="myprefix:")
    assert pub.dedupe_key == f"myprefix:processed::{TS_U64}::0"
    assert pub.channels == ("tests.Foo", "tests.Foo::x")


# --------------------------------------------------------------------------- §1.2 unsupported ids


@pytest.mark.parametrize(
    "bad_id",
    [
        1234,
        Int64(1234),
        1.5,
        True,
        None,
        {"a": 1},
        Binary(b"\x00\x01"),
        uuid.UUID(int=5),
        Decimal128("1"),
    ],
)
def test_unsupported_id_type_is_reported_and_not_published(bad_id: Any) -> None:
    pubs, problems = publications_from_oplog_entry(oplog("i", "foo.bar", {"_id": bad_id, "some": "field"}))
    assert pubs == []
    assert len(problems) == 1
    assert category(problems[0]) == PROBLEM_UNSUPPORTED_ID
    assert "expected string or ObjectID" in problems[0]


def test_unsupported_id_unit_case_mentions_go_like_type() -> None:
    _, problems = publications_from_oplog_entry(oplog("i", "foo.bar", {"_id": 1234, "some": "field"}))
    assert problems == [
        "unsupported-id: foo.bar (txIdx 0): expected string or ObjectID, got int instead",
    ]


@pytest.mark.parametrize(
    "entry",
    [
        oplog("i", "foo.bar", {"some": "field"}),
        oplog("d", "foo.bar", {}),
        oplog("u", "foo.bar", {"$set": {"a": 1}}),
        oplog("u", "foo.bar", {"$set": {"a": 1}}, {"other": 1}),
    ],
)
def test_missing_id_is_dropped_with_a_problem(entry: dict[str, Any]) -> None:
    pubs, problems = publications_from_oplog_entry(entry)
    assert pubs == []
    assert [category(p) for p in problems] == [PROBLEM_MISSING_ID]


# --------------------------------------------------------------------------- §1.2 Meteor idStringify


@pytest.mark.parametrize(
    ("doc_id", "suffix"),
    [
        ("plain", "plain"),
        ("", ""),
        ("-abc", "--abc"),
        ("~x", "-~x"),
        ("{x", "-{x"),
        ("deadbeefdeadbeefdeadbeef", "-deadbeefdeadbeefdeadbeef"),
        ("DEADBEEFDEADBEEFDEADBEEF", "DEADBEEFDEADBEEFDEADBEEF"),  # uppercase: not ObjectID-like
        ("deadbeefdeadbeefdeadbee", "deadbeefdeadbeefdeadbee"),  # 23 chars
        ("a-b", "a-b"),
    ],
)
def test_meteor_ids_string_suffix_and_unchanged_body(doc_id: str, suffix: str) -> None:
    meteor = single(oplog("i", "db.c", {"_id": doc_id}), meteor_ids=True)
    plain = single(oplog("i", "db.c", {"_id": doc_id}))
    assert meteor.channels == ("db.c", "db.c::" + suffix)
    assert plain.channels == ("db.c", "db.c::" + doc_id)  # OTR never adds the '-'
    assert (
        meteor.message
        == plain.message
        == ('{"e":"i","d":{"_id":' + go_json_string(doc_id) + '},"f":["_id"]}').encode()
    )


@pytest.mark.parametrize(
    ("doc_id", "suffix", "body"),
    [
        (OID, "deadbeefdeadbeefdeadbeef", OID_JSON),
        (5, "~5", "5"),
        (-7, "~-7", "-7"),
        (Int64(2**53), "~9007199254740992", "9007199254740992"),
        (-(2**53), "~-9007199254740992", "-9007199254740992"),
        (2.5, "~2.5", "2.5"),
        (5.0, "~5", "5"),
        (1e21, "~1e+21", "1e+21"),
        (1.5e-7, "~1.5e-7", "1.5e-7"),
        (-0.0, "~0", "-0"),  # JS JSON.stringify(-0) is "0"; Go marshals -0 as "-0"
        (True, "~true", "true"),
        (False, "~false", "false"),
        (None, "~null", "null"),
    ],
)
def test_meteor_ids_non_string_ids_are_published(doc_id: Any, suffix: str, body: str) -> None:
    pub = single(oplog("d", "db.c", {"_id": doc_id}), meteor_ids=True)
    assert pub.channels == ("db.c", "db.c::" + suffix)
    assert pub.message == ('{"e":"r","d":{"_id":' + body + '},"f":[]}').encode()


@pytest.mark.parametrize(
    "doc_id",
    [
        2**53 + 1,
        Int64(-(2**53) - 1),
        math.nan,
        math.inf,
        {"a": 1},
        Binary(b"x"),
        uuid.UUID(int=1),
        Decimal128("1"),
    ],
)
def test_meteor_ids_reject_what_meteor_cannot_name(doc_id: Any) -> None:
    pubs, problems = publications_from_oplog_entry(oplog("d", "db.c", {"_id": doc_id}), meteor_ids=True)
    assert pubs == []
    assert [category(p) for p in problems] == [PROBLEM_UNSUPPORTED_ID]


@pytest.mark.parametrize(
    ("number", "js"),
    [
        (0.1, "0.1"),
        (100.0, "100"),
        (123.456, "123.456"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e16, "10000000000000000"),
        (1e20, "100000000000000000000"),
        (1.2345678901234568e20, "123456789012345680000"),
        (1e21, "1e+21"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (1.2e-10, "1.2e-10"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-1.5, "-1.5"),
        (float(2**53), "9007199254740992"),
    ],
)
def test_meteor_id_stringify_formats_numbers_like_javascript(number: float, js: str) -> None:
    assert meteor_id_stringify(number) == "~" + js


# --------------------------------------------------------------------------- §1.3 filtering


@pytest.mark.parametrize(
    "entry",
    [
        oplog("i", "foo.system.indexes", {"_id": "someid", "some": "field"}),  # unit "Index update"
        oplog("d", "config.transactions", {"_id": {"id": Binary(b"x", 4), "uid": b"y"}}),  # "Config update"
        oplog("i", "admin.system.users", {"_id": "admin.root"}),
        oplog("i", "config.system.sessions", {"_id": "s"}),
        oplog("c", "foo.$cmd", {"drop": "Foo"}),  # unit "Command"
        oplog("c", "foo.$cmd", {"create": "Foo"}),
        oplog("c", "foo.$cmd", {"createIndexes": "Foo", "v": 2, "key": {"a": 1}, "name": "a_1"}),
        oplog("c", "admin.$cmd", {"renameCollection": "a.b", "to": "a.c"}),
        oplog("c", "admin.$cmd", {"commitTransaction": 1}),
        oplog("n", "", {"msg": "periodic noop"}),
        oplog("db", "foo", {}),
        oplog("x", "foo.bar", {"_id": "a"}),
    ],
)
def test_filtered_entries_publish_nothing_and_report_nothing(entry: dict[str, Any]) -> None:
    assert publications_from_oplog_entry(entry) == ([], [])


def test_local_and_admin_are_not_filtered() -> None:
    assert single(oplog("i", "local.foo", {"_id": "a"})).channels == ("local.foo", "local.foo::a")
    assert single(oplog("i", "admin.foo", {"_id": "a"})).channels == ("admin.foo", "admin.foo::a")


def test_denylist_drops_by_database_before_anything_else() -> None:
    entry = oplog("i", "secret.c", {"some": "field"})  # no _id: denylist wins, no problem
    assert publications_from_oplog_entry(entry, denylist={"secret"}) == ([], [])
    assert single(oplog("i", "public.c", {"_id": "a"}), denylist={"secret"}).channels[0] == "public.c"


# --------------------------------------------------------------------------- §1.3 transactions


def transaction(*ops: Any, ns: str = "admin.$cmd") -> dict[str, Any]:
    return oplog("c", ns, {"applyOps": [dict(op) if isinstance(op, Mapping) else op for op in ops]})


def test_transaction_tx_index_zero_to_three_with_nested_apply_ops() -> None:
    entry = transaction(
        {
            "op": "c",
            "ns": "admin.$cmd",
            "o": {"applyOps": [{"op": "i", "ns": "foo.Bar", "o": {"_id": "id1", "foo": "baz"}}]},
        },
        {"op": "i", "ns": "foo.Bar", "o": {"_id": "id1", "foo": "bar"}, "ts": Timestamp(1, 1)},
        {"op": "u", "ns": "foo.Bar", "o": {"foo": "quux"}, "o2": {"_id": "id2"}},
        {"op": "d", "ns": "foo.Bar", "o": {"_id": "id3"}},
    )
    pubs, problems = publications_from_oplog_entry(entry)
    assert problems == []
    assert [p.tx_index for p in pubs] == [0, 1, 2, 3]
    assert [p.ts for p in pubs] == [TS] * 4  # the outer ts, even where an element has its own
    assert [p.dedupe_key for p in pubs] == [f"oplogtoredis::processed::{TS_U64}::{i}" for i in range(4)]
    assert [p.channels for p in pubs] == [
        ("foo.Bar", "foo.Bar::id1"),
        ("foo.Bar", "foo.Bar::id1"),
        ("foo.Bar", "foo.Bar::id2"),
        ("foo.Bar", "foo.Bar::id3"),
    ]
    assert [p.message for p in pubs] == [
        b'{"e":"i","d":{"_id":"id1"},"f":["_id","foo"]}',
        b'{"e":"i","d":{"_id":"id1"},"f":["_id","foo"]}',
        b'{"e":"u","d":{"_id":"id2"},"f":["foo"]}',
        b'{"e":"r","d":{"_id":"id3"},"f":[]}',
    ]


def test_transaction_index_is_used_before_the_id_check_and_by_filtered_ops() -> None:
    entry = transaction(
        {"op": "i", "ns": "foo.Bar", "o": {"no_id": 1}},
        {"op": "i", "ns": "foo.system.views", "o": {"_id": "v"}},
        {"op": "d", "ns": "config.transactions", "o": {"_id": "t"}},
        {"op": "n", "ns": "", "o": {"msg": "noop"}},
        {"op": "i", "ns": "foo.Bar", "o": {"_id": "ok"}},
    )
    pubs, problems = publications_from_oplog_entry(entry)
    assert [p.tx_index for p in pubs] == [3]
    assert [category(p) for p in problems] == [PROBLEM_MISSING_ID]


def test_transaction_denylisted_and_non_document_elements_use_no_index() -> None:
    entry = transaction(
        {"op": "i", "ns": "secret.c", "o": {"_id": "hidden"}},
        "not a document",
        42,
        {"op": "i", "ns": "foo.Bar", "o": {"_id": "ok"}},
        {"op": "u", "ns": "foo.Bar", "o": {"$set": {"a": 1}}, "o2": {"_id": 7}},
        {"op": "d", "ns": "foo.Bar", "o": {"_id": "gone"}},
    )
    pubs, problems = publications_from_oplog_entry(entry, denylist={"secret", "admin"})
    assert [(p.channels[1], p.tx_index) for p in pubs] == [("foo.Bar::ok", 0), ("foo.Bar::gone", 2)]
    assert [category(p) for p in problems] == [PROBLEM_MALFORMED, PROBLEM_MALFORMED, PROBLEM_UNSUPPORTED_ID]


def test_apply_ops_only_counts_on_admin_cmd() -> None:
    entry = transaction({"op": "i", "ns": "foo.Bar", "o": {"_id": "x"}}, ns="foo.$cmd")
    assert publications_from_oplog_entry(entry) == ([], [])


def test_apply_ops_that_is_not_an_array_is_malformed() -> None:
    pubs, problems = publications_from_oplog_entry(oplog("c", "admin.$cmd", {"applyOps": {"op": "i"}}))
    assert pubs == []
    assert [category(p) for p in problems] == [PROBLEM_MALFORMED]


def test_deeply_nested_apply_ops_are_flattened_depth_first() -> None:
    def nest(*ops: dict[str, Any]) -> dict[str, Any]:
        return {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": list(ops)}}

    ins = [{"op": "i", "ns": "d.c", "o": {"_id": f"x{i}"}} for i in range(5)]
    entry = transaction(nest(ins[0], nest(ins[1], ins[2])), ins[3], nest(nest(ins[4])))
    pubs, problems = publications_from_oplog_entry(entry)
    assert problems == []
    assert [(p.channels[1], p.tx_index) for p in pubs] == [(f"d.c::x{i}", i) for i in range(5)]


# --------------------------------------------------------------------------- malformed entries


@pytest.mark.parametrize(
    "entry",
    [
        {"op": "i", "ns": "a.b", "o": {"_id": "x"}},
        {"ts": 1234, "op": "i", "ns": "a.b", "o": {"_id": "x"}},
        {**oplog("i", "a.b", {"_id": "x"}), "op": 5},
        {**oplog("i", "a.b", {"_id": "x"}), "ns": b"a.b"},
        {**oplog("i", "a.b", {"_id": "x"}), "o": ["_id"]},
        {**oplog("u", "a.b", {"$set": {}}), "o2": "x"},
        oplog("i", "a.b", {"_id": "x"}, wall="yesterday"),
    ],
)
def test_wrongly_typed_entries_are_dropped_as_malformed(entry: dict[str, Any]) -> None:
    pubs, problems = publications_from_oplog_entry(entry)
    assert pubs == []
    assert [category(p) for p in problems] == [PROBLEM_MALFORMED]


# --------------------------------------------------------------------------- §2.2 v2 detection


@pytest.mark.parametrize(
    ("o", "fields"),
    [
        ({"diff": {"sa": "123"}}, ["diff"]),  # no $v: replacement
        ({"$v": 1, "diff": {"sa": "123"}}, ["$v", "diff"]),  # $v 1: replacement
        ({"$v": "2", "diff": {"sa": "123"}}, ["$v", "diff"]),  # string "2" does not count
        ({"$v": 2, "$set": {"a": "123"}}, ["a"]),  # no diff: v1
        ({"$v": 2, "diff": {"sa": "123"}}, ["a"]),  # valid v2
        ({"$v": Int64(2), "diff": {"sb": {}}}, ["b"]),
        ({"$v": 2.0, "diff": {"sc": {}}}, ["c"]),
        ({"$v": 2.9, "diff": {"sd": {}}}, ["d"]),  # Go AsInt64 truncates doubles
        ({"$v": True, "diff": {"se": {}}}, ["$v", "diff"]),
        ({"$v": Decimal128("2"), "diff": {"sf": {}}}, ["$v", "diff"]),
    ],
)
def test_update_v2_detection(o: dict[str, Any], fields: list[str]) -> None:
    got, _ = update_fields(o)
    assert got == fields


def test_v2_diff_that_is_not_a_document_is_a_bad_update() -> None:
    pubs, problems = publications_from_oplog_entry(oplog("u", "a.b", {"$v": 2, "diff": "x"}, {"_id": "i"}))
    assert pubs == []
    assert [category(p) for p in problems] == [PROBLEM_BAD_UPDATE]


# --------------------------------------------------------------------------- §2.2 v1


def test_v1_update_fields_in_order_with_dotted_paths() -> None:
    fields, problems = update_fields(
        {"$v": "1.0", "$set": {"foo": "a", "bar": {"xxx": "yyy"}, "baz.qux": 10}, "$unset": {"qax": True}}
    )
    assert fields == ["foo", "bar", "baz.qux", "qax"]
    assert problems == []


def test_v1_update_with_no_operations() -> None:
    assert update_fields({"$v": "1.0", "$set": {}}) == ([], [])


def test_v1_update_unexpected_operation_value_type_is_skipped_and_reported() -> None:
    fields, problems = update_fields({"$v": "1.0", "weird": "thing", "$set": {"foo": "a"}})
    assert fields == ["foo"]
    assert [category(p) for p in problems] == [PROBLEM_UNPROCESSABLE_FIELD]


def test_v1_update_order_follows_the_oplog_document() -> None:
    fields, _ = update_fields({"$unset": {"z": True}, "$set": {"hello.1.value": 2, "a": 1}})
    assert fields == ["z", "hello.1.value", "a"]


# --------------------------------------------------------------------------- §2.2 v2 shallow


def test_v2_shallow_unit_case_exact_order() -> None:
    fields, problems = update_fields(
        {
            "$v": 2,
            "diff": {
                "i": {"a": 1, "b": "2"},
                "u": {"c": 1, "d": "2"},
                "d": {"e": 1, "f": "2"},
                "sg": 10,
                "sfoobar": {},
            },
        }
    )
    assert fields == ["a", "b", "c", "d", "e", "f", "g", "foobar"]
    assert problems == []


def test_v2_shallow_no_operations() -> None:
    assert update_fields({"$v": 2, "diff": {}}) == ([], [])


def test_v2_shallow_unexpected_operation_value_types() -> None:
    fields, problems = update_fields(
        {"$v": 2, "weird": "thing", "diff": {"i": 10, "otherwierd": "thing", "sfoo": "bar"}}
    )
    assert fields == ["foo"]
    # 'otherwierd' starts with 'o', which shallow mode ignores silently; only 'i' is counted.
    assert problems == ["unprocessable-field: foo.bar (txIdx 0): v2 diff key 'i' is not a document"]


def test_v2_shallow_ignores_a_and_o_keys_silently() -> None:
    assert update_fields({"$v": 2, "diff": {"a": True, "ofoo": 1, "sx": {"a": True, "l": 1}}}) == (["x"], [])


def test_v2_shallow_reports_top_level_names_only() -> None:
    # README: $set {"one.two.three": 123, four: 4} -> one, four on MongoDB 5.x
    fields, _ = update_fields({"$v": 2, "diff": {"i": {"four": 4}, "sone": {"stwo": {"i": {"three": 123}}}}})
    assert sorted(fields) == ["four", "one"]


# --------------------------------------------------------------------------- §2.2 v2 deep


@pytest.mark.parametrize(
    ("diff", "expected"),
    [
        ({"scustom": {"sEJSON$value": {"u": {"EJSONtail": "d"}}}}, ["custom.EJSON$value.EJSONtail"]),
        ({"u": {"d": "2", "oi": "asdas"}}, ["d", "oi"]),
        ({"sasd": {"a": True, "u0": 2}}, ["asd.0"]),
        ({"sasd": {"a": True, "u0": None}}, ["asd.0"]),
        ({"i": {"a": {"b": 2}}}, ["a.b"]),
        ({"u": {"count": 1}, "i": {"nested": {"state": {}}}}, ["count", "nested.state"]),
        ({"sa": {"i": {"b": 3, "c": 1}}}, ["a.b", "a.c"]),
        ({"sa": {"d": {"b": False}}}, ["a.b"]),
        ({"u": {"c": "bar"}, "sb": {"a": True, "u0": 2}}, ["b.0", "c"]),
        ({"sservices": {"sresume": {"u": {"loginTokens": []}}}}, ["services.resume.loginTokens"]),
        ({"i": {"tShirt": {"sizes": ["small", "medium", "large"]}}}, ["tShirt.sizes"]),
        ({"slist": {"a": True, "u3": "i", "u4": "h"}}, ["list.3", "list.4"]),
        ({"sobject": {"u": {"array": ["2", "2", "4", "3"]}}}, ["object.array"]),
        (
            {"slayout": {"sjourneyStepIds": {"sj4aqp3tiK6xCPCYu8": {"a": True, "u2": "zTkxivNrKuBi2iJ2m"}}}},
            ["layout.journeyStepIds.j4aqp3tiK6xCPCYu8.2"],
        ),
        ({"sarray": {"a": True, "s2": {"u": {"a": "something"}}}}, ["array.2.a"]),
        (
            {
                "i": {"a": 1, "b": "2"},
                "u": {"c": 1, "d": "2"},
                "d": {"e": 1, "f": "2"},
                "sg": {},
                "sfoobar": {},
            },
            ["a", "b", "c", "d", "e", "f"],
        ),
        ({"i": 10, "otherwierd": "thing", "sfoo": {"u": {"x": "10"}}}, ["foo.x"]),
        ({}, []),
    ],
)
def test_v2_deep_converter_table(diff: dict[str, Any], expected: list[str]) -> None:
    assert deep_fields(diff) == sorted(expected)


def test_v2_deep_unprocessable_parts_are_reported_but_published() -> None:
    fields, problems = update_fields(
        {"$v": 2, "weird": "thing", "diff": {"i": 10, "otherwierd": "thing", "sfoo": {"u": {"x": "10"}}}},
        deep=True,
    )
    assert fields == ["foo.x"]
    assert [category(p) for p in problems] == [PROBLEM_UNPROCESSABLE_FIELD] * 2


def test_v2_deep_array_truncation_yields_no_field() -> None:
    fields, problems = update_fields({"$v": 2, "diff": {"sarr": {"a": True, "l": 2}}}, deep=True)
    assert fields == []
    assert [category(p) for p in problems] == [PROBLEM_UNPROCESSABLE_FIELD]


def test_v2_deep_u_index_next_to_s_index_is_dropped() -> None:
    diff = {"sarr": {"a": True, "u1": 5, "s0": {"u": {"x": 1}}}}
    fields, problems = update_fields({"$v": 2, "diff": diff}, deep=True)
    assert fields == ["arr.0.x"]
    assert [category(p) for p in problems] == [PROBLEM_UNPROCESSABLE_FIELD]


def test_v2_deep_is_array_operator_regex_is_not_end_anchored() -> None:
    assert deep_fields({"sarr": {"a": True, "u1x": 5, "u12": 6}}) == ["arr.12", "arr.1x"]


def test_v2_deep_array_operator_check_applies_to_any_key() -> None:
    # OTR checks isArrayOperator before the 's' prefix, so any key with such a value
    # loses its first character.
    assert deep_fields({"foo": {"a": True, "u0": 1}}) == ["oo.0"]


def test_v2_deep_flattens_dbref_values_like_go_maps() -> None:
    diff = {"i": {"owner": DBRef("users", "u1"), "n": 1}}
    assert deep_fields(diff) == ["n", "owner.$id", "owner.$ref"]


def test_v2_deep_and_shallow_on_the_same_entry() -> None:
    o = {"$v": 2, "diff": {"u": {"c": "bar"}, "sb": {"a": True, "u0": 2}, "sn": {"sm": {"i": {"k": 1}}}}}
    assert update_fields(o) == (["c", "b", "n"], [])
    assert sorted(update_fields(o, deep=True)[0]) == ["b.0", "c", "n.m.k"]


def test_acceptance_style_positional_inc_and_push() -> None:
    # $inc {"hello.$.value": 1} on 5.0 -> diff {shello: {a: true, s1: {u: {value: 2}}}}
    assert deep_fields({"shello": {"a": True, "s1": {"u": {"value": 2}}}}) == ["hello.1.value"]
    # $push with $position rewrites the whole array -> diff {u: {hello: [...]}}
    assert deep_fields({"u": {"hello": [1, 25, 2]}}) == ["hello"]
    # 4.4 (v1) keeps the dotted path verbatim
    assert update_fields({"$v": 1, "$set": {"hello.1.value": 2}}) == (["hello.1.value"], [])


# --------------------------------------------------------------------------- §1.1 namespaces


@pytest.mark.parametrize(
    ("ns", "db", "coll"),
    [
        ("foo.bar", "foo", "bar"),
        ("foo.system.indexes", "foo", "system.indexes"),
        ("foo", "foo", ""),
        ("", "", ""),
    ],
)
def test_namespace_split(ns: str, db: str, coll: str) -> None:
    assert split_ns(ns) == (db, coll)


# --------------------------------------------------------------------------- §3/§4 keys


@pytest.mark.parametrize(
    ("ts", "value"),
    [
        (Timestamp(1234, 5678), "5299989648942"),
        (Timestamp(0, 1234), "1234"),
        (Timestamp(1234, 0), "5299989643264"),
        (Timestamp(2**32 - 1, 2**32 - 1), "18446744073709551615"),
        (Timestamp(0, 0), "0"),
    ],
)
def test_resume_value_round_trip(ts: Timestamp, value: str) -> None:
    assert resume_value(ts) == value
    assert parse_resume_value(value) == ts
    assert parse_resume_value(value.encode()) == ts


@pytest.mark.parametrize(
    "bad",
    ["not a number", "", "-1", "+1", " 1", "1 ", "1_0", "0x10", "1.0", "18446744073709551616", "١٢٣"],
)
def test_parse_resume_value_rejects_what_go_parseuint_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid resume value"):
        parse_resume_value(bad)


def test_dedupe_and_resume_key_formats() -> None:
    assert dedupe_key(Timestamp(1234, 5678), 3) == "oplogtoredis::processed::5299989648942::3"
    assert dedupe_key(Timestamp(0, 1), 0, "p:") == "p:processed::1::0"
    assert last_processed_key() == "oplogtoredis::lastProcessedEntry.0"
    assert last_processed_key(2, "x::") == "x::lastProcessedEntry.2"


# --------------------------------------------------------------------------- §5 shards


def _go_shard(k: int, w: int) -> int:
    rem = abs(k) % w  # Go's % truncates toward zero
    rem = -rem if k < 0 else rem
    return ((rem % w) + w) % w


def test_write_shard_matches_reference_constant_for_foo() -> None:
    k = int.from_bytes(hashlib.sha256(b"foo").digest()[-8:], "little", signed=True)
    assert k == -5843589418109203719
    for w in range(1, 33):
        assert write_shard("foo", w) == _go_shard(k, w) == k % w
    assert write_shard("foo", 1) == 0


def test_write_shard_rejects_non_positive_parallelism() -> None:
    with pytest.raises(ValueError):
        write_shard("foo", 0)


# --------------------------------------------------------------------------- script arguments


def test_script_keys_and_args_layout() -> None:
    a = single(oplog("i", "db.c", {"_id": "a"}))
    b = single(oplog("d", "db.c", {"_id": "b$c"}))
    keys, args = script_keys_and_args([a, b], 150)
    assert keys == [a.dedupe_key, b.dedupe_key]
    assert args == [150, a.message, b"db.c$db.c::a", b.message, b"db.c$db.c::b$c"]
    with pytest.raises(ValueError):
        script_keys_and_args([a], 0)


def test_encode_channel_restores_undecodable_bytes() -> None:
    name = b"db.c::id\xff".decode("utf-8", "surrogateescape")
    assert encode_channel(name) == b"db.c::id\xff"
    assert encode_channel("db.é") == "db.é".encode()


# --------------------------------------------------------------------------- change events


def event(operation_type: str, doc_id: Any = "someid", **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "_id": {"_data": "8265"},
        "operationType": operation_type,
        "clusterTime": TS,
        "ns": {"db": "tests", "coll": "Foo"},
        "documentKey": {"_id": doc_id},
    }
    ev.update(extra)
    return ev


def single_event(ev: Mapping[str, Any], *, tx_index: int = 0, **kwargs: Any) -> Publication:
    pubs, problems = publications_from_change_event(ev, tx_index=tx_index, **kwargs)
    assert problems == []
    assert len(pubs) == 1
    return pubs[0]


def test_change_event_insert() -> None:
    pub = single_event(event("insert", fullDocument={"_id": "someid", "hello": "world"}))
    assert pub.channels == ("tests.Foo", "tests.Foo::someid")
    assert pub.message == b'{"e":"i","d":{"_id":"someid"},"f":["_id","hello"]}'
    assert pub.dedupe_key == f"oplogtoredis::processed::{TS_U64}::0"
    assert (pub.ts, pub.tx_index) == (TS, 0)


def test_change_event_replace() -> None:
    pub = single_event(event("replace", fullDocument={"_id": "someid", "world": "new"}))
    assert pub.message == b'{"e":"u","d":{"_id":"someid"},"f":["_id","world"]}'


def test_change_event_delete_with_objectid_in_a_transaction() -> None:
    pub = single_event(event("delete", OID, txnNumber=Int64(3), lsid={"id": uuid.UUID(int=9)}), tx_index=2)
    assert pub.channels == ("tests.Foo", "tests.Foo::deadbeefdeadbeefdeadbeef")
    assert pub.message == ('{"e":"r","d":{"_id":' + OID_JSON + '},"f":[]}').encode()
    assert pub.dedupe_key == f"oplogtoredis::processed::{TS_U64}::2"
    assert pub.tx_index == 2


UPDATE_DESCRIPTION = {
    "updatedFields": {"one.two.three": 123, "four": 4, "one.x": 1},
    "removedFields": ["gone", "one.y"],
    "truncatedArrays": [{"field": "arr", "newSize": 1}, {"field": "nested.list", "newSize": 0}],
}


def test_change_event_update_from_update_description_shallow() -> None:
    pub = single_event(event("update", updateDescription=UPDATE_DESCRIPTION))
    assert pub.message == b'{"e":"u","d":{"_id":"someid"},"f":["one","four","gone","arr","nested"]}'


def test_change_event_update_from_update_description_deep() -> None:
    pub = single_event(event("update", updateDescription=UPDATE_DESCRIPTION), deep_fields=True)
    assert json.loads(pub.message)["f"] == [
        "one.two.three",
        "four",
        "one.x",
        "gone",
        "one.y",
        "arr",
        "nested.list",
    ]


def test_change_event_update_uses_disambiguated_paths_for_top_level_names() -> None:
    desc = {
        "updatedFields": {"a.b": 1, "c.0.d": 2},
        "removedFields": [],
        "truncatedArrays": [],
        "disambiguatedPaths": {"a.b": ["a.b"], "c.0.d": ["c", 0, "d"]},
    }
    pub = single_event(event("update", updateDescription=desc))
    assert json.loads(pub.message)["f"] == ["a.b", "c"]


# flattened_update_fields: deep mode without rawUpdateDescription (MongoDB before 6.0)


def test_flattened_update_fields_walks_nested_documents_to_leaf_paths() -> None:
    desc = {
        "updatedFields": {"n": {"a": {"b": 1}, "c": "two"}, "top": 3, "x.y": {"z": None}},
        "removedFields": ["gone.deep", "r"],
        "truncatedArrays": [{"field": "arr", "newSize": 1}],
    }
    ev = event("update", updateDescription=desc)
    before = json.dumps(ev, default=str)
    flat = flattened_update_fields(ev)
    assert flat["updateDescription"]["updatedFields"] == {"n.a.b": 1, "n.c": "two", "top": 3, "x.y.z": None}
    assert list(flat["updateDescription"]["updatedFields"]) == ["n.a.b", "n.c", "top", "x.y.z"]
    # Only updatedFields changes: removed fields, truncated arrays and the rest stay as they were.
    assert flat["updateDescription"]["removedFields"] == ["gone.deep", "r"]
    assert flat["updateDescription"]["truncatedArrays"] == [{"field": "arr", "newSize": 1}]
    assert {k: v for k, v in flat.items() if k != "updateDescription"} == {
        k: v for k, v in ev.items() if k != "updateDescription"
    }
    assert json.dumps(ev, default=str) == before  # the event itself is not changed


def test_flattened_update_fields_keeps_arrays_empty_documents_and_scalars_whole() -> None:
    updated = {"arr": [{"a": 1}, 2], "empty": {}, "n": {"e": {}, "l": [{"x": 1}], "s": "v"}}
    flat = flattened_update_fields(event("update", updateDescription={"updatedFields": updated}))
    assert flat["updateDescription"]["updatedFields"] == {
        "arr": [{"a": 1}, 2],
        "empty": {},
        "n.e": {},
        "n.l": [{"x": 1}],
        "n.s": "v",
    }


def test_flattened_update_fields_walks_dbrefs_like_documents() -> None:
    only_a_dbref = {"s": 1, "owner": DBRef("users", 5)}  # a DBRef alone is enough to flatten
    flat = flattened_update_fields(event("update", updateDescription={"updatedFields": only_a_dbref}))
    assert list(flat["updateDescription"]["updatedFields"].items()) == [
        ("s", 1),
        ("owner.$ref", "users"),
        ("owner.$id", 5),
    ]
    nested = {"n": {"r": DBRef("c", "i", "db")}}
    flat = flattened_update_fields(event("update", updateDescription={"updatedFields": nested}))
    assert list(flat["updateDescription"]["updatedFields"].items()) == [
        ("n.r.$ref", "c"),
        ("n.r.$id", "i"),
        ("n.r.$db", "db"),
    ]


def test_flattened_update_fields_first_place_of_a_path_wins_the_order_last_value_wins() -> None:
    updated = {"a.b": 1, "k": 0, "a": {"b": 2, "c": 3}}
    flat = flattened_update_fields(event("update", updateDescription={"updatedFields": updated}))
    assert list(flat["updateDescription"]["updatedFields"].items()) == [("a.b", 2), ("k", 0), ("a.c", 3)]


@pytest.mark.parametrize(
    "ev",
    [
        event("update", updateDescription={"updatedFields": {"a": 1, "b.c": [1], "d": {}}, "removedFields": ["x"]}),
        event("update", updateDescription={"updatedFields": {"a": {"b": 1}}}, rawUpdateDescription={"$set": {}}),
        event("update", updateDescription={"updatedFields": {"a": {"b": 1}}}, rawUpdateDescription=None),
        event("replace", updateDescription={"updatedFields": {"a": {"b": 1}}}, fullDocument={"a": {"b": 1}}),
        event("insert", fullDocument={"_id": "someid", "a": {"b": 1}}),
        event("update", updateDescription=DBRef("c", {"updatedFields": {"a": {"b": 1}}})),
        event("update", updateDescription={"updatedFields": [("a", {"b": 1})]}),
        event("update"),
    ],
    ids=["no-documents", "raw", "raw-null", "replace", "insert", "description-not-a-map", "fields-not-a-map",
         "no-description"],
)
def test_flattened_update_fields_returns_other_events_as_they_are(ev: dict[str, Any]) -> None:
    assert flattened_update_fields(ev) is ev


def fields_of(ev: Mapping[str, Any], *, deep: bool) -> list[str]:
    fields: list[str] = json.loads(single_event(ev, deep_fields=deep).message)["f"]
    return fields


def test_flattened_update_fields_deep_vs_not_deep() -> None:
    desc = {
        "updatedFields": {"n": {"a": {"b": 1}, "c": {}}, "arr": [{"x": 1}], "s": 1},
        "removedFields": ["gone.deep", "r"],
        "truncatedArrays": [],
    }
    ev = event("update", updateDescription=desc)
    # Deep mode, as publish-redis runs it: the leaf paths, as OTR's flatKeys lists them.
    assert fields_of(flattened_update_fields(ev), deep=True) == ["n.a.b", "n.c", "arr", "s", "gone.deep", "r"]
    # Without the flattening, deep mode would only see the updated names.
    assert fields_of(ev, deep=True) == ["n", "arr", "s", "gone.deep", "r"]
    # Shallow mode is not flattened (publish-redis only flattens in deep mode): top-level names.
    assert fields_of(ev, deep=False) == ["n", "arr", "s", "gone", "r"]


def test_flattened_update_description_matches_the_raw_description_in_deep_mode() -> None:
    new_value = {"a": {"b": 1, "c": [1, {"d": 2}]}, "e": {}}
    raw = event("update", rawUpdateDescription={"$v": 2, "diff": {"u": {"n": new_value, "t": 5}}})
    desc = event("update", updateDescription={"updatedFields": {"n": new_value, "t": 5}, "removedFields": []})
    assert flattened_update_fields(raw) is raw
    assert fields_of(flattened_update_fields(desc), deep=True) == fields_of(raw, deep=True) == [
        "n.a.b",
        "n.a.c",
        "n.e",
        "t",
    ]


def test_change_event_update_with_raw_v2_description_matches_the_oplog() -> None:
    raw = {"$v": 2, "diff": {"u": {"c": "bar"}, "sb": {"a": True, "u0": 2}}}
    misleading = {"updatedFields": {"zzz": 1}, "removedFields": [], "truncatedArrays": []}
    ev = event("update", rawUpdateDescription=raw, updateDescription=misleading)
    shallow = single_event(ev)
    assert shallow.message == b'{"e":"u","d":{"_id":"someid"},"f":["c","b"]}'
    deep = single_event(ev, deep_fields=True)
    assert sorted(json.loads(deep.message)["f"]) == ["b.0", "c"]
    assert deep.message in (
        b'{"e":"u","d":{"_id":"someid"},"f":["c","b.0"]}',
        b'{"e":"u","d":{"_id":"someid"},"f":["b.0","c"]}',
    )


def test_change_event_update_with_raw_v1_description() -> None:
    raw = {"$set": {"a.b": 1}, "$unset": {"x": True}}
    pub = single_event(event("update", rawUpdateDescription=raw))
    assert pub.message == b'{"e":"u","d":{"_id":"someid"},"f":["a.b","x"]}'


@pytest.mark.parametrize(
    ("op", "o", "o2", "change"),
    [
        ("i", {"_id": "k", "a": 1}, None, {"operationType": "insert", "fullDocument": {"_id": "k", "a": 1}}),
        (
            "u",
            {"_id": "k", "b": 2},
            {"_id": "k"},
            {"operationType": "replace", "fullDocument": {"_id": "k", "b": 2}},
        ),
        ("d", {"_id": "k"}, None, {"operationType": "delete"}),
        (
            "u",
            {"$v": 2, "diff": {"d": {"z": False}, "sq": {"i": {"r": {"s": 1}}}}},
            {"_id": "k"},
            {
                "operationType": "update",
                "rawUpdateDescription": {"$v": 2, "diff": {"d": {"z": False}, "sq": {"i": {"r": {"s": 1}}}}},
            },
        ),
    ],
)
@pytest.mark.parametrize("deep", [False, True])
def test_change_event_and_oplog_entry_give_the_same_publication(
    op: str, o: dict[str, Any], o2: dict[str, Any] | None, change: dict[str, Any], deep: bool
) -> None:
    from_oplog = single(oplog(op, "tests.Foo", o, o2), deep_fields=deep, meteor_ids=True)
    ev = {**event(change["operationType"], "k"), **change}
    from_event = single_event(ev, deep_fields=deep, meteor_ids=True)
    assert from_event == from_oplog


@pytest.mark.parametrize(
    "operation_type",
    ["drop", "rename", "dropDatabase", "invalidate", "create", "createIndexes", "modify", "shardCollection"],
)
def test_change_event_non_crud_publishes_nothing(operation_type: str) -> None:
    assert publications_from_change_event(event(operation_type), tx_index=0) == ([], [])


def test_change_event_filters_system_config_and_denylist() -> None:
    system = event("insert", fullDocument={"_id": "x"}, ns={"db": "foo", "coll": "system.views"})
    config = event("delete", ns={"db": "config", "coll": "transactions"})
    assert publications_from_change_event(system, tx_index=0) == ([], [])
    assert publications_from_change_event(config, tx_index=0) == ([], [])
    assert publications_from_change_event(event("delete"), tx_index=0, denylist=["tests"]) == ([], [])


@pytest.mark.parametrize(
    ("ev", "expected_category"),
    [
        (event("delete", 1234), PROBLEM_UNSUPPORTED_ID),
        ({**event("delete"), "documentKey": {"shard": 1}}, PROBLEM_MISSING_ID),
        ({k: v for k, v in event("delete").items() if k != "documentKey"}, PROBLEM_MISSING_ID),
        (event("insert"), PROBLEM_BAD_UPDATE),  # no fullDocument
        (event("update"), PROBLEM_BAD_UPDATE),  # no description at all
        (event("update", rawUpdateDescription={"$v": 2, "diff": 3}), PROBLEM_BAD_UPDATE),
        (event("delete", clusterTime=None), PROBLEM_MALFORMED),
        (event("delete", ns={"db": "tests"}), PROBLEM_MALFORMED),
    ],
)
def test_change_event_problems(ev: dict[str, Any], expected_category: str) -> None:
    pubs, problems = publications_from_change_event(ev, tx_index=0)
    assert pubs == []
    assert [category(p) for p in problems] == [expected_category]


def test_change_event_meteor_ids() -> None:
    pub = single_event(event("delete", 42), meteor_ids=True)
    assert pub.channels == ("tests.Foo", "tests.Foo::~42")
    assert pub.message == b'{"e":"r","d":{"_id":42},"f":[]}'
    pub = single_event(event("delete", "-x"), meteor_ids=True)
    assert pub.channels == ("tests.Foo", "tests.Foo::--x")


def test_change_event_rejects_negative_tx_index() -> None:
    with pytest.raises(ValueError):
        publications_from_change_event(event("delete"), tx_index=-1)


# --------------------------------------------------------------------------- §3 Lua on a real Redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ensure_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "redis-server"], check=True, capture_output=True, env=env)
        path = shutil.which("redis-server")
    assert path is not None, "redis-server could not be installed"
    return path


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    binary = _ensure_redis_server()
    workdir: Path = tmp_path_factory.mktemp("redis")
    last_error: Exception | None = None
    for _attempt in range(5):
        port = _free_port()
        log = open(workdir / f"redis-{port}.log", "wb")  # noqa: SIM115 - closed in the finaliser
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {port} did not start") from exc
                    time.sleep(0.05)
        except RuntimeError as exc:
            last_error = exc
            client.close()
            proc.kill()
            proc.wait()
            log.close()
            continue
        try:
            yield client
        finally:
            client.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        return
    raise RuntimeError("could not start redis-server") from last_error


@pytest.fixture
def r(redis_server: redis.Redis) -> redis.Redis:
    redis_server.flushall()
    return redis_server


def _drain(pubsub: Any, settle: float = 0.3) -> list[tuple[bytes, bytes]]:
    """Messages received until none arrives for ``settle`` seconds."""
    got: list[tuple[bytes, bytes]] = []
    while True:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=settle)
        if msg is None:
            return got
        got.append((msg["channel"], msg["data"]))


@pytest.fixture
def subscriber(r: redis.Redis) -> Iterator[Any]:
    pubsub = r.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe("*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    try:
        yield pubsub
    finally:
        pubsub.close()


def test_lua_publishes_once_per_dedupe_key(r: redis.Redis, subscriber: Any) -> None:
    pub = single(oplog("i", "tests.Foo", {"_id": "someid", "hello": "wörld<>"}))
    script = r.register_script(DEDUPE_PUBLISH_LUA)
    keys, args = script_keys_and_args([pub], 150)

    assert script(keys=keys, args=args) == [1]
    assert script(keys=keys, args=args) == [0]

    assert _drain(subscriber) == [(b"tests.Foo", pub.message), (b"tests.Foo::someid", pub.message)]
    assert r.get(pub.dedupe_key) == b"1"
    assert 148 <= r.ttl(pub.dedupe_key) <= 150


def test_lua_batch_mixes_duplicates_and_new_publications(r: redis.Redis, subscriber: Any) -> None:
    entry = transaction(
        {"op": "i", "ns": "d.c", "o": {"_id": "a"}},
        {"op": "d", "ns": "d.c", "o": {"_id": OID}},
    )
    first, second = publications_from_oplog_entry(entry)[0]
    script = r.register_script(DEDUPE_PUBLISH_LUA)
    assert script(*script_keys_and_args([first], 60)) == [1]
    assert script(*script_keys_and_args([first, second], 60)) == [0, 1]
    assert _drain(subscriber) == [
        (b"d.c", first.message),
        (b"d.c::a", first.message),
        (b"d.c", second.message),
        (b"d.c::deadbeefdeadbeefdeadbeef", second.message),
    ]


def test_lua_splits_channels_on_dollar_like_otr(r: redis.Redis, subscriber: Any) -> None:
    pub = single(oplog("i", "db.c", {"_id": "a$b"}))
    script = r.register_script(DEDUPE_PUBLISH_LUA)
    assert script(*script_keys_and_args([pub])) == [1]
    assert _drain(subscriber) == [(b"db.c", pub.message), (b"db.c::a", pub.message), (b"b", pub.message)]


def test_the_dashboard_counts_each_raw_change_by_its_kind() -> None:
    from mongoferry.jobs.publish_redis import read_kind

    assert [read_kind(r) for r in ({"operationType": "insert"}, {"operationType": "drop"}, {"op": "u"},
                                   {"op": "c"}, {"op": "n"}, {"op": "?"}, None)] == [
        "insert", "ddl", "update", "ddl", "noop", "skipped", "skipped"]
