"""Unit tests for mongoferry.verify.compare: pure document, index and collection-spec comparison."""

from __future__ import annotations

import datetime
import json
import struct
from typing import Any

import bson
import pytest
from bson.decimal128 import Decimal128
from bson.errors import InvalidBSON
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.son import SON

from mongoferry.verify.compare import (
    BSON_TYPE_NAMES,
    CompareMode,
    FieldDiff,
    compare_raw_documents,
    doc_key,
    doc_key_for_value,
    id_key_from_raw_document,
    mismatch_detail,
    pairing_key,
    top_level_mismatches,
)
from mongoferry.verify.spec_compare import (
    INDEX_SPEC_TOLERANCES,
    IndexDiff,
    SpecDiff,
    compare_collection_specs,
    compare_index_specs,
    index_patch_suppressed,
    normalize_index_spec,
)

MODES: tuple[CompareMode, ...] = ("binary", "ignore-order")


# ---------------------------------------------------------------------------------------
# Hand-built raw BSON
# ---------------------------------------------------------------------------------------


def element(btype: int, name: str, value: bytes) -> bytes:
    return bytes((btype,)) + name.encode() + b"\x00" + value


def document(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def bstring(text: str) -> bytes:
    raw = text.encode() + b"\x00"
    return struct.pack("<i", len(raw)) + raw


def i32(name: str, n: int) -> bytes:
    return element(0x10, name, struct.pack("<i", n))


def dbl_bits(name: str, bits: bytes) -> bytes:
    return element(0x01, name, bits)


def enc(doc: Any) -> bytes:
    return bson.encode(doc)


# ---------------------------------------------------------------------------------------
# Type names
# ---------------------------------------------------------------------------------------


def test_type_names_are_the_go_driver_names() -> None:
    assert dict(BSON_TYPE_NAMES) == {
        0x01: "double", 0x02: "string", 0x03: "embedded document", 0x04: "array",
        0x05: "binary", 0x06: "undefined", 0x07: "objectID", 0x08: "boolean",
        0x09: "UTC datetime", 0x0A: "null", 0x0B: "regex", 0x0C: "dbPointer",
        0x0D: "javascript", 0x0E: "symbol", 0x0F: "code with scope", 0x10: "32-bit integer",
        0x11: "timestamp", 0x12: "64-bit integer", 0x13: "128-bit decimal", 0xFF: "min key",
        0x7F: "max key",
    }


# ---------------------------------------------------------------------------------------
# Pairing keys
# ---------------------------------------------------------------------------------------

NUMERIC_ONES: list[tuple[Any, int]] = [
    (1, 0x10), (Int64(1), 0x12), (1.0, 0x01), (Decimal128("1"), 0x13),
]


def test_numeric_ids_of_different_types_get_different_keys() -> None:
    keys = [id_key_from_raw_document(enc({"_id": value})) for value, _ in NUMERIC_ONES]
    assert len(set(keys)) == 4
    for key, (_, btype) in zip(keys, NUMERIC_ONES, strict=True):
        assert key[0] == btype
    assert keys[0] == b"\x10\x01\x00\x00\x00"


def test_equal_ids_get_equal_keys_wherever_id_sits() -> None:
    oid = ObjectId()
    first = enc(SON([("_id", oid), ("a", 1)]))
    later = document(i32("a", 2), element(0x07, "_id", oid.binary), i32("b", 3))
    assert id_key_from_raw_document(first) == id_key_from_raw_document(later)
    assert id_key_from_raw_document(later) == b"\x07" + oid.binary
    assert doc_key_for_value(oid) == id_key_from_raw_document(first)
    assert id_key_from_raw_document(bytearray(first)) == id_key_from_raw_document(memoryview(first))


def test_embedded_document_ids_key_on_raw_bytes_so_order_matters() -> None:
    a = doc_key_for_value(SON([("x", 1), ("y", 2)]))
    b = doc_key_for_value(SON([("y", 2), ("x", 1)]))
    assert a != b
    assert a[0] == 0x03


def test_symbol_and_string_ids_get_different_keys() -> None:
    sym = document(element(0x0E, "_id", bstring("abc")))
    text = document(element(0x02, "_id", bstring("abc")))
    assert id_key_from_raw_document(sym) != id_key_from_raw_document(text)
    assert id_key_from_raw_document(sym)[1:] == id_key_from_raw_document(text)[1:]
    # Decoding would merge them: the reason the key is built from raw bytes.
    assert bson.decode(sym) == bson.decode(text)


def test_doc_key_from_raw_element() -> None:
    assert doc_key(element(0x12, "_id", struct.pack("<q", 1))) == b"\x12" + struct.pack("<q", 1)
    assert doc_key(element(0x10, "_id", struct.pack("<i", 1))) != doc_key(
        element(0x12, "_id", struct.pack("<q", 1)))
    with pytest.raises(InvalidBSON):
        doc_key(element(0x10, "_id", b"\x01\x00"))  # truncated int32
    with pytest.raises(InvalidBSON):
        doc_key(element(0x10, "_id", b"\x01\x00\x00\x00\x00"))  # trailing byte


def test_document_without_id() -> None:
    with pytest.raises(KeyError):
        id_key_from_raw_document(enc({"a": 1}))


def test_pairing_key_with_shard_key_fields() -> None:
    raw = enc(SON([("_id", 7), ("a", {"b": "x"}), ("c", Int64(3))]))
    id_part = b"\x10" + struct.pack("<i", 7)
    assert pairing_key(raw) == id_part
    assert pairing_key(raw, ["a.b"]) == id_part + b"\x02" + bstring("x")
    # Absent shard-key field counts as null.
    assert pairing_key(raw, ["missing", "a.b.c"]) == id_part + b"\x0a\x0a"
    # Shard key holding _id: only the shard-key fields, in shard-key order.
    assert pairing_key(raw, ["c", "_id"]) == b"\x12" + struct.pack("<q", 3) + id_part
    assert pairing_key(enc({"_id": 7, "a": [5]}), ["a.0"]) == id_part + b"\x10" + struct.pack("<i", 5)


# ---------------------------------------------------------------------------------------
# Document comparison
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_identical_bytes_are_equal(mode: CompareMode) -> None:
    raw = enc(SON([("_id", 1), ("a", [1, {"b": 2.5}]), ("c", "x")]))
    assert compare_raw_documents(raw, bytes(raw), mode) == []
    # Identical bytes are not even parsed.
    assert compare_raw_documents(b"garbage", b"garbage", mode) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("src_value,src_btype", NUMERIC_ONES)
@pytest.mark.parametrize("dst_value,dst_btype", NUMERIC_ONES)
def test_numeric_values_of_different_types_are_type_mismatches(
    mode: CompareMode, src_value: Any, src_btype: int, dst_value: Any, dst_btype: int
) -> None:
    src = enc(SON([("_id", 1), ("n", src_value)]))
    dst = enc(SON([("_id", 1), ("n", dst_value)]))
    diffs = compare_raw_documents(src, dst, mode)
    if src_btype == dst_btype:
        assert diffs == []
        return
    src_name, dst_name = BSON_TYPE_NAMES[src_btype], BSON_TYPE_NAMES[dst_btype]
    assert diffs == [FieldDiff("n", "type", src_name, dst_name, src_value, dst_value, "n")]
    assert mismatch_detail(diffs[0]) == f"Mismatch : type mismatch: src={src_name}, dst={dst_name}"


def test_int32_vs_int64_detail_text() -> None:
    [diff] = compare_raw_documents(enc({"n": 1}), enc({"n": Int64(1)}), "binary")
    assert mismatch_detail(diff) == "Mismatch : type mismatch: src=32-bit integer, dst=64-bit integer"


def test_reordered_top_level_fields() -> None:
    src = enc(SON([("_id", 1), ("a", 1), ("b", 2)]))
    dst = enc(SON([("_id", 1), ("b", 2), ("a", 1)]))
    assert compare_raw_documents(src, dst, "ignore-order") == []
    [diff] = compare_raw_documents(src, dst, "binary")
    assert diff == FieldDiff("", "order", "embedded document", "embedded document",
                             ["_id", "a", "b"], ["_id", "b", "a"], "")
    assert mismatch_detail(diff) == "Mismatch : only field order differs"


def test_reordered_nested_fields() -> None:
    src = enc(SON([("_id", 1), ("a", SON([("x", 1), ("y", SON([("p", 1), ("q", 2)]))]))]))
    dst = enc(SON([("_id", 1), ("a", SON([("x", 1), ("y", SON([("q", 2), ("p", 1)]))]))]))
    assert compare_raw_documents(src, dst, "ignore-order") == []
    [diff] = compare_raw_documents(src, dst, "binary")
    assert (diff.path, diff.kind, diff.top_field) == ("a.y", "order", "a")
    assert (diff.src_value, diff.dst_value) == (["p", "q"], ["q", "p"])
    assert mismatch_detail(diff) == "Mismatch : only field order differs"


def test_order_reported_at_the_outermost_reordered_document() -> None:
    src = enc(SON([("a", SON([("x", 1), ("y", 2)])), ("b", 1)]))
    dst = enc(SON([("b", 1), ("a", SON([("y", 2), ("x", 1)]))]))
    assert [d.path for d in compare_raw_documents(src, dst, "binary")] == [""]
    assert compare_raw_documents(src, dst, "ignore-order") == []


def test_reordered_fields_inside_array_element() -> None:
    src = enc({"arr": [1, SON([("x", 1), ("y", 2)])]})
    dst = enc({"arr": [1, SON([("y", 2), ("x", 1)])]})
    assert compare_raw_documents(src, dst, "ignore-order") == []
    [diff] = compare_raw_documents(src, dst, "binary")
    assert (diff.path, diff.kind, diff.top_field) == ("arr.1", "order", "arr")


@pytest.mark.parametrize("mode", MODES)
def test_order_is_not_reported_when_values_differ(mode: CompareMode) -> None:
    src = enc(SON([("a", 1), ("b", 2)]))
    dst = enc(SON([("b", 3), ("a", 1)]))
    assert compare_raw_documents(src, dst, mode) == [
        FieldDiff("b", "value", "32-bit integer", "32-bit integer", 2, 3, "b")
    ]


@pytest.mark.parametrize("mode", MODES)
def test_reordered_array_elements_are_unequal(mode: CompareMode) -> None:
    diffs = compare_raw_documents(enc({"a": [1, 2, 3]}), enc({"a": [3, 2, 1]}), mode)
    assert [(d.path, d.kind, d.src_value, d.dst_value, d.top_field) for d in diffs] == [
        ("a.0", "value", 1, 3, "a"), ("a.2", "value", 3, 1, "a"),
    ]
    assert {mismatch_detail(d) for d in diffs} == {"Mismatch"}
    assert [mismatch_detail(d) for d in top_level_mismatches(diffs)] == ["Mismatch"]


@pytest.mark.parametrize("mode", MODES)
def test_array_length_difference_reports_extra_positions(mode: CompareMode) -> None:
    diffs = compare_raw_documents(enc({"a": [1, 2, 3]}), enc({"a": [1, 2]}), mode)
    assert diffs == [FieldDiff("a.2", "missing_on_dst", "32-bit integer", None, 3, None, "a")]
    assert mismatch_detail(diffs[0]) == "Mismatch"  # nested: the top-level field is present
    diffs = compare_raw_documents(enc({"a": []}), enc({"a": ["x"]}), mode)
    assert diffs == [FieldDiff("a.0", "missing_on_src", None, "string", None, "x", "a")]


@pytest.mark.parametrize("mode", MODES)
def test_array_never_equals_document_with_index_keys(mode: CompareMode) -> None:
    src = enc({"a": [10, 20]})
    dst = enc({"a": SON([("0", 10), ("1", 20)])})
    # Same bytes apart from the type byte.
    assert src.replace(b"\x04a\x00", b"\x03a\x00") == dst
    [diff] = compare_raw_documents(src, dst, mode)
    assert (diff.path, diff.kind, diff.src_type, diff.dst_type) == (
        "a", "type", "array", "embedded document")
    assert diff.src_value == [10, 20] and diff.dst_value == {"0": 10, "1": 20}
    assert mismatch_detail(diff) == "Mismatch : type mismatch: src=array, dst=embedded document"


@pytest.mark.parametrize("mode", MODES)
def test_missing_fields_each_side(mode: CompareMode) -> None:
    src = enc(SON([("_id", 1), ("a", 1), ("only_src", "s")]))
    dst = enc(SON([("_id", 1), ("only_dst", [1]), ("a", 1)]))
    diffs = compare_raw_documents(src, dst, mode)
    assert diffs == [
        FieldDiff("only_src", "missing_on_dst", "string", None, "s", None, "only_src"),
        FieldDiff("only_dst", "missing_on_src", None, "array", None, [1], "only_dst"),
    ]
    assert [mismatch_detail(d) for d in diffs] == ["Missing", "Missing"]


@pytest.mark.parametrize("mode", MODES)
def test_deep_path_reporting(mode: CompareMode) -> None:
    src = enc({"_id": 1, "a": {"b": [1, {"c": {"d": 1, "e": True}}]}, "z": 0})
    dst = enc({"_id": 1, "a": {"b": [1, {"c": {"d": "1"}}]}, "z": 0})
    diffs = compare_raw_documents(src, dst, mode)
    assert diffs == [
        FieldDiff("a.b.1.c.d", "type", "32-bit integer", "string", 1, "1", "a"),
        FieldDiff("a.b.1.c.e", "missing_on_dst", "boolean", None, True, None, "a"),
    ]
    # Reference granularity: one "Mismatch" for top-level field "a".
    [top] = top_level_mismatches(diffs)
    assert (top.top_field, mismatch_detail(top)) == ("a", "Mismatch")
    assert [mismatch_detail(d) for d in diffs] == ["Mismatch", "Mismatch"]


def test_top_level_mismatches_keeps_one_per_field_in_order() -> None:
    src = enc(SON([("a", {"x": 1, "y": 1}), ("b", 1), ("c", 1)]))
    dst = enc(SON([("a", {"x": 2, "y": 2}), ("b", 2), ("d", 1)]))
    tops = top_level_mismatches(compare_raw_documents(src, dst, "binary"))
    assert [(d.top_field, mismatch_detail(d)) for d in tops] == [
        ("a", "Mismatch"), ("b", "Mismatch"), ("c", "Missing"), ("d", "Missing"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_positive_and_negative_zero_differ(mode: CompareMode) -> None:
    [diff] = compare_raw_documents(enc({"x": 0.0}), enc({"x": -0.0}), mode)
    assert (diff.path, diff.kind, diff.src_type, diff.dst_type) == ("x", "value", "double", "double")
    assert mismatch_detail(diff) == "Mismatch"


@pytest.mark.parametrize("mode", MODES)
def test_nan_equal_only_when_bit_identical(mode: CompareMode) -> None:
    quiet = struct.pack("<d", float("nan"))
    payload = b"\x01\x00\x00\x00\x00\x00\xf8\x7f"
    assert quiet != payload
    a = document(dbl_bits("x", quiet), i32("y", 1))
    b = document(dbl_bits("x", payload), i32("y", 1))
    [diff] = compare_raw_documents(a, b, mode)
    assert (diff.path, diff.kind) == ("x", "value")
    # Same NaN bits in a different field order: equal ignoring order.
    reordered = document(i32("y", 1), dbl_bits("x", quiet))
    assert compare_raw_documents(a, reordered, "ignore-order") == []
    assert [d.kind for d in compare_raw_documents(a, reordered, "binary")] == ["order"]


@pytest.mark.parametrize("mode", MODES)
def test_symbol_vs_string_is_a_type_mismatch(mode: CompareMode) -> None:
    src = document(i32("_id", 1), element(0x0E, "s", bstring("hello")))
    dst = document(i32("_id", 1), element(0x02, "s", bstring("hello")))
    [diff] = compare_raw_documents(src, dst, mode)
    assert diff == FieldDiff("s", "type", "symbol", "string", "hello", "hello", "s")
    assert mismatch_detail(diff) == "Mismatch : type mismatch: src=symbol, dst=string"


@pytest.mark.parametrize("mode", MODES)
def test_other_types_compare_by_raw_bytes(mode: CompareMode) -> None:
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    src = enc({"t": when, "r": bson.Regex("a", "i"), "b": bson.Binary(b"\x00\x01", 4)})
    dst = enc({"t": when, "r": bson.Regex("a", "m"), "b": bson.Binary(b"\x00\x01", 0)})
    diffs = compare_raw_documents(src, dst, mode)
    assert [(d.path, d.kind, d.src_type) for d in diffs] == [
        ("r", "value", "regex"), ("b", "value", "binary"),
    ]


def test_duplicate_field_names_pair_by_occurrence() -> None:
    src = document(i32("a", 1), i32("a", 2), i32("b", 0))
    dst = document(i32("b", 0), i32("a", 1), i32("a", 2))
    assert compare_raw_documents(src, dst, "ignore-order") == []
    dst_changed = document(i32("b", 0), i32("a", 1), i32("a", 3))
    [diff] = compare_raw_documents(src, dst_changed, "ignore-order")
    assert (diff.path, diff.src_value, diff.dst_value) == ("a", 2, 3)


def test_non_canonical_array_keys_count_as_order_only() -> None:
    canonical = document(element(0x04, "a", document(i32("0", 1), i32("1", 2))))
    odd = document(element(0x04, "a", document(i32("1", 1), i32("0", 2))))
    assert compare_raw_documents(canonical, odd, "ignore-order") == []
    [diff] = compare_raw_documents(canonical, odd, "binary")
    assert (diff.path, diff.kind, diff.src_type) == ("a", "order", "array")


def test_max_diffs_bounds_the_findings() -> None:
    src = enc({"a": list(range(1000))})
    dst = enc({"a": list(range(1, 1001))})
    assert len(compare_raw_documents(src, dst, "binary")) == 1000
    assert [d.path for d in compare_raw_documents(src, dst, "binary", max_diffs=3)] == [
        "a.0", "a.1", "a.2"]
    with pytest.raises(ValueError):
        compare_raw_documents(src, dst, "binary", max_diffs=0)


def test_bad_mode_and_malformed_bson() -> None:
    good = enc({"a": 1})
    with pytest.raises(ValueError):
        compare_raw_documents(good, enc({"a": 2}), "ignoreOrder")  # type: ignore[arg-type]
    with pytest.raises(InvalidBSON):
        compare_raw_documents(good, good[:-1], "binary")
    with pytest.raises(InvalidBSON):
        compare_raw_documents(good, document(element(0x42, "a", b"")), "binary")
    with pytest.raises(InvalidBSON):  # string without its NUL terminator
        compare_raw_documents(good, document(element(0x02, "a", b"\x02\x00\x00\x00ab")), "binary")


def test_bytes_like_inputs() -> None:
    src = enc({"a": 1})
    dst = enc({"a": 2})
    assert compare_raw_documents(bytearray(src), memoryview(dst), "binary") == \
        compare_raw_documents(src, dst, "binary")


def test_values_are_decoded_for_display() -> None:
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    [diff] = compare_raw_documents(enc({"w": when}), enc({"w": "2024"}), "binary")
    assert diff.src_value == when and diff.dst_value == "2024"
    assert diff.src_type == "UTC datetime"


# ---------------------------------------------------------------------------------------
# Index specs
# ---------------------------------------------------------------------------------------


def ix(name: str = "a_1", **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"v": 2, "key": {"a": 1}, "name": name}
    spec.update(fields)
    return spec


@pytest.mark.parametrize("one", [1, 1.0, Int64(1)])
@pytest.mark.parametrize("other", [1, 1.0, Int64(1)])
def test_index_key_numeric_types_are_equal(one: Any, other: Any) -> None:
    assert compare_index_specs([ix(key={"a": one, "b": -1})],
                               [ix(key={"a": other, "b": Int64(-1)})]) == []


def test_index_key_non_integral_double_is_kept() -> None:
    assert normalize_index_spec(ix(key={"a": 1.5})) == {"key": {"a": 1.5}, "name": "a_1"}


def test_index_v_ns_background_ignored() -> None:
    src = ix(v=1, ns="db.coll", background=True)
    dst = ix(v=2)
    assert compare_index_specs([src], [dst]) == []
    assert normalize_index_spec(src) == {"key": {"a": 1}, "name": "a_1"}


@pytest.mark.parametrize("ttl", [3600, Int64(3600), 3600.0, 3600.7])
def test_expire_after_seconds_numeric_types_are_equal(ttl: Any) -> None:
    assert compare_index_specs([ix(expireAfterSeconds=ttl)], [ix(expireAfterSeconds=3600)]) == []


def test_expire_after_seconds_above_int32_is_left_alone() -> None:
    spec = normalize_index_spec(ix(expireAfterSeconds=Int64(2**31)))
    assert isinstance(spec["expireAfterSeconds"], Int64)


def test_normalize_sparse_bits_and_legacy_keys() -> None:
    spec = SON([("v", 1), ("key", SON([("a", 0), ("b", ""), ("c", -1), ("d", "2d"),
                                      ("e", None), ("f", True), ("g", Decimal128("0.00"))])),
                ("name", "legacy"), ("sparse", 1), ("bits", 24.0)])
    assert normalize_index_spec(spec) == {
        "key": {"a": 1, "b": 1, "c": -1, "d": "2d", "e": 1, "f": 1, "g": 1},
        "name": "legacy", "sparse": True, "bits": 24,
    }
    assert list(normalize_index_spec(spec)["key"]) == ["a", "b", "c", "d", "e", "f", "g"]
    assert normalize_index_spec({"v": 2, "key": {"a": 0}, "sparse": 0.0}) == {
        "key": {"a": 0}, "sparse": False}


def test_legacy_v1_key_matches_modern_key() -> None:
    assert compare_index_specs([ix(v=1, key={"a": 0})], [ix(v=2, key={"a": 1})]) == []
    # v2 indexes are not modernized: 0 stays 0.
    [diff] = compare_index_specs([ix(v=2, key={"a": 0})], [ix(v=2, key={"a": 1})])
    assert diff.detail == '{"op":"replace","path":"/key/a/$numberInt","value":"1"}'


def test_sparse_number_vs_bool_equal() -> None:
    assert compare_index_specs([ix(sparse=1)], [ix(sparse=True)]) == []


def test_changed_expire_after_seconds_gives_patch() -> None:
    diffs = compare_index_specs([ix(expireAfterSeconds=3600)], [ix(expireAfterSeconds=Int64(7200))])
    assert diffs == [IndexDiff(
        "a_1", "spec", '{"op":"replace","path":"/expireAfterSeconds/$numberInt","value":"7200"}')]
    assert index_patch_suppressed(diffs[0].detail, {"expireAfterSeconds"})
    assert not index_patch_suppressed(diffs[0].detail, {"unique"})


def test_unique_added_gives_patch() -> None:
    [diff] = compare_index_specs([ix()], [ix(unique=True)])
    assert diff == IndexDiff("a_1", "spec", '{"op":"add","path":"/unique","value":true}')
    assert index_patch_suppressed(diff.detail, {"unique"})
    [removed] = compare_index_specs([ix(unique=True)], [ix()])
    assert removed.detail == '{"op":"remove","path":"/unique"}'


def test_key_direction_and_type_changes_give_patches() -> None:
    [flip] = compare_index_specs([ix(key={"foo": 1})], [ix(key={"foo": -1})])
    assert flip.detail == '{"op":"replace","path":"/key/foo/$numberInt","value":"-1"}'
    [retype] = compare_index_specs([ix(key={"foo": 1.1})], [ix(key={"foo": 1})])
    assert retype.detail.split("\n") == [
        '{"op":"remove","path":"/key/foo/$numberDouble"}',
        '{"op":"add","path":"/key/foo/$numberInt","value":"1"}',
    ]


def test_patch_ops_over_nested_values_arrays_and_escaped_names() -> None:
    src = ix(key={"a/b": 1}, weights={"x~y": 1}, extra=[1, 2, 3], collation={"locale": "en"})
    dst = ix(key={"a/b": -1}, weights={"x~y": 1}, extra=[1, 5], collation="<&>")
    [diff] = compare_index_specs([src], [dst])
    assert diff.kind == "spec"
    assert diff.detail.split("\n") == [
        '{"op":"replace","path":"/collation","value":"\\u003c\\u0026\\u003e"}',
        '{"op":"remove","path":"/extra/2"}',
        '{"op":"replace","path":"/extra/1/$numberInt","value":"5"}',
        '{"op":"replace","path":"/key/a~1b/$numberInt","value":"-1"}',
    ]
    for line in diff.detail.split("\n"):
        assert list(json.loads(line)) in (["op", "path"], ["op", "path", "value"])
    [grown] = compare_index_specs([ix(extra=[1])], [ix(extra=[1, {"z": 2, "a": "q"}])])
    assert grown.detail == '{"op":"add","path":"/extra/-","value":{"a":"q","z":{"$numberInt":"2"}}}'


def test_missing_index_each_side() -> None:
    src = [ix("_id_", key={"_id": 1}), ix("a_1")]
    dst = [ix("_id_", key={"_id": 1}), ix("b_1", key={"b": 1})]
    assert compare_index_specs(src, dst) == [
        IndexDiff("a_1", "missing_on_dst", "Missing"),
        IndexDiff("b_1", "missing_on_src", "Missing"),
    ]
    assert not index_patch_suppressed("Missing", INDEX_SPEC_TOLERANCES)


def test_index_key_order_differs() -> None:
    src = ix(key=SON([("a", 1), ("b", 1)]))
    dst = ix(key=SON([("b", 1), ("a", 1)]))
    [diff] = compare_index_specs([src], [dst])
    assert diff == IndexDiff("a_1", "order", "field order differs: [key]")
    assert not index_patch_suppressed(diff.detail, {"unique", "expireAfterSeconds"})


def test_partial_filter_order_differs_but_other_option_order_does_not() -> None:
    src = ix(partialFilterExpression=SON([("x", 1), ("y", 1)]), collation=SON([("locale", "en"),
                                                                             ("strength", 2)]))
    dst = SON([("name", "a_1"), ("v", 2), ("key", {"a": 1}),
               ("collation", SON([("strength", 2), ("locale", "en")])),
               ("partialFilterExpression", SON([("y", 1), ("x", 1)]))])
    assert compare_index_specs([src], [dst]) == [
        IndexDiff("a_1", "order", "field order differs: [partialFilterExpression]")]
    src2 = ix(key=SON([("a", 1), ("b", 1)]), partialFilterExpression=SON([("x", 1), ("y", 1)]))
    dst2 = ix(key=SON([("b", 1), ("a", 1)]), partialFilterExpression=SON([("y", 1), ("x", 1)]))
    [diff] = compare_index_specs([src2], [dst2])
    assert diff.detail == "field order differs: [key partialFilterExpression]"


def test_index_spec_without_name_is_rejected() -> None:
    with pytest.raises(ValueError):
        compare_index_specs([{"key": {"a": 1}}], [])


# ---------------------------------------------------------------------------------------
# Tolerance rule (indexSpecIgnore)
# ---------------------------------------------------------------------------------------


def test_tolerances_are_the_reference_values() -> None:
    assert frozenset({"expireAfterSeconds", "unique"}) == INDEX_SPEC_TOLERANCES


@pytest.mark.parametrize(
    "detail,tolerances,suppressed",
    [
        ('{"op":"add","path":"/unique","value":true}', {"unique"}, True),
        ('{"op":"replace","path":"/expireAfterSeconds/$numberInt","value":"5"}',
         {"expireAfterSeconds"}, True),
        ('{"op":"add","path":"/unique","value":true}\n'
         '{"op":"replace","path":"/expireAfterSeconds/$numberInt","value":"5"}',
         {"unique", "expireAfterSeconds"}, True),
        ('{"op":"add","path":"/unique","value":true}\n'
         '{"op":"replace","path":"/expireAfterSeconds/$numberInt","value":"5"}',
         {"unique"}, False),
        ('{"op":"add","path":"/uniqueness","value":true}', {"unique"}, False),
        ('{"op":"add","path":"/unique","value":true}', set(), False),
        ("field order differs: [key]", {"unique"}, False),
        ("Missing", {"unique"}, False),
        ("", {"unique"}, False),
        ('["op"]', {"unique"}, False),
        ('{"path":"/unique"}', {"unique"}, False),
    ],
)
def test_index_patch_suppressed(detail: str, tolerances: set[str], suppressed: bool) -> None:
    assert index_patch_suppressed(detail, tolerances) is suppressed


# ---------------------------------------------------------------------------------------
# Collection specs
# ---------------------------------------------------------------------------------------


def coll(options: Any = None, type_: str = "collection", read_only: bool = False,
         uuid: bytes = b"\x01" * 16) -> dict[str, Any]:
    return {
        "name": "c", "type": type_, "options": {} if options is None else options,
        "info": {"readOnly": read_only, "uuid": bson.Binary(uuid, 4)},
        "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
    }


def test_identical_specs_and_uuid_ignored() -> None:
    assert compare_collection_specs(coll(), coll()) == []
    assert compare_collection_specs(coll(uuid=b"\x01" * 16), coll(uuid=b"\x02" * 16)) == []
    assert compare_collection_specs(None, None) == []


def test_one_side_missing() -> None:
    assert compare_collection_specs(coll(), None) == [
        SpecDiff("exist", None, "missing_on_dst", None)]
    assert compare_collection_specs(None, coll()) == [
        SpecDiff("exist", None, "missing_on_src", None)]


def test_collection_vs_view_is_a_type_mismatch_only() -> None:
    view = coll({"viewOn": "base", "pipeline": []}, type_="view", read_only=True)
    assert compare_collection_specs(coll(), view) == [
        SpecDiff("type", None, "content", "Mismatch: src: collection, dst: view")]


def test_capped_size_changed() -> None:
    src = coll(SON([("capped", True), ("size", 4096)]))
    dst = coll(SON([("capped", True), ("size", 8192)]))
    assert compare_collection_specs(src, dst) == [
        SpecDiff("spec", "options.size", "content", "Mismatch")]
    dst64 = coll(SON([("capped", True), ("size", Int64(4096))]))
    assert compare_collection_specs(src, dst64) == [SpecDiff(
        "spec", "options.size", "content",
        "Mismatch : type mismatch: src=32-bit integer, dst=64-bit integer")]


def test_validator_changed() -> None:
    src = coll({"validator": {"$jsonSchema": {"required": ["a"]}}, "validationLevel": "strict"})
    dst = coll({"validator": {"$jsonSchema": {"required": ["b"]}}, "validationLevel": "strict"})
    assert compare_collection_specs(src, dst) == [
        SpecDiff("spec", "options.validator", "content", "Mismatch")]


def test_view_pipeline_changed() -> None:
    src = coll({"viewOn": "base", "pipeline": [{"$match": {"a": 1}}]}, type_="view", read_only=True)
    dst = coll({"viewOn": "base", "pipeline": [{"$match": {"a": 2}}]}, type_="view", read_only=True)
    assert compare_collection_specs(src, dst) == [
        SpecDiff("spec", "options.pipeline", "content", "Mismatch")]


def test_options_order_only() -> None:
    src = coll(SON([("capped", True), ("size", 4096), ("max", 10)]))
    dst = coll(SON([("size", 4096), ("max", 10), ("capped", True)]))
    assert compare_collection_specs(src, dst) == [SpecDiff(
        "spec", "options (field order only)", "content", "Mismatch : only field order differs")]
    nested_src = coll({"validator": SON([("a", 1), ("b", 1)])})
    nested_dst = coll({"validator": SON([("b", 1), ("a", 1)])})
    assert [d.component for d in compare_collection_specs(nested_src, nested_dst)] == [
        "options (field order only)"]


def test_option_missing_each_side() -> None:
    assert compare_collection_specs(coll({"capped": True, "size": 1}), coll({"size": 1})) == [
        SpecDiff("spec", "options.capped", "missing_on_dst", "Missing")]
    assert compare_collection_specs(coll(), coll({"collation": {"locale": "fr"}})) == [
        SpecDiff("spec", "options.collation", "missing_on_src", "Missing")]


def test_read_only_differs() -> None:
    src = coll({"viewOn": "base", "pipeline": []}, type_="view", read_only=True)
    dst = coll({"viewOn": "base", "pipeline": []}, type_="view", read_only=False)
    assert compare_collection_specs(src, dst) == [
        SpecDiff("readOnly", None, "content", "Mismatch: src: true, dst: false")]


def test_raw_options_keep_exact_bson_types() -> None:
    sym = RawBSONDocument(document(element(0x0E, "comment", bstring("x"))))
    text = RawBSONDocument(document(element(0x02, "comment", bstring("x"))))
    assert compare_collection_specs(coll(sym), coll(text)) == [SpecDiff(
        "spec", "options.comment", "content", "Mismatch : type mismatch: src=symbol, dst=string")]
