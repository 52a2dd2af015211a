"""Unit tests for mongoferry.core.diff_apply, one group per rule of the oplog-formats reference (1.2-1.4).

Every result is compared with ``bson.encode`` so field order and numeric types are checked too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId

from mongoferry.core.diff_apply import (
    DiffFormatError,
    apply_oplog_update,
    apply_update_description,
    apply_v1_update,
    apply_v2_diff,
    classify_update,
)

OID = ObjectId("65a1b2c3d4e5f60718293a4b")


def assert_bson(actual: Any, expected: dict[str, Any]) -> None:
    assert actual is not None
    assert bson.encode(actual) == bson.encode(expected), f"\n got:      {actual!r}\n expected: {expected!r}"


def roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    """What the replayer really gets: a document decoded from BSON."""
    decoded: dict[str, Any] = bson.decode(bson.encode(doc), codec_options=CodecOptions(document_class=dict))
    return decoded


# ---------------------------------------------------------------------------------------------
# 1.2 classify_update
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("o", "kind"),
    [
        ({"$v": 2, "diff": {"u": {"a": 1}}}, "v2"),
        ({"$v": Int64(2), "diff": {"u": {"a": 1}}}, "v2"),
        ({"$v": 2.0, "diff": {"u": {"a": 1}}}, "v2"),
        ({"$v": Decimal128("2"), "diff": {"u": {"a": 1}}}, "v2"),
        ({"$v": 1, "$set": {"a": 1}}, "v1"),
        ({"$set": {"a": 1}, "$v": 1}, "v1"),
        ({"$set": {"a": 1}}, "v1"),
        ({"$unset": {"a": True}}, "v1"),
        ({"_id": 1, "a": 1}, "replacement"),
        ({"a": 1, "$set": {"b": 1}}, "replacement"),
        ({"a": {"$set": 1}}, "replacement"),
        ({}, "replacement"),
    ],
)
def test_classify_update(o: dict[str, Any], kind: str) -> None:
    assert classify_update(o) == kind


@pytest.mark.parametrize("version", [0, 3, -1, 1.5, "2", "1", True, False, None, Decimal128("NaN"), [2]])
def test_classify_update_rejects_invalid_version(version: Any) -> None:
    with pytest.raises(DiffFormatError, match=r"\$v"):
        classify_update({"$v": version, "diff": {"u": {"a": 1}}})


# ---------------------------------------------------------------------------------------------
# 1.3 $v:2 document diffs: field order
# ---------------------------------------------------------------------------------------------


def test_u_writes_existing_field_in_place() -> None:
    pre = {"_id": 1, "a": 1, "b": 2, "c": 3}
    assert_bson(apply_v2_diff(pre, {"u": {"b": "two"}}), {"_id": 1, "a": 1, "b": "two", "c": 3})


def test_u_keeps_value_types() -> None:
    pre = {"_id": 1, "i": 1, "l": Int64(1), "d": 1.0, "m": Decimal128("1.0")}
    diff = {"u": {"i": Int64(2), "l": 2, "d": Decimal128("2.50"), "m": 2.0}}
    expected = {"_id": 1, "i": Int64(2), "l": 2, "d": Decimal128("2.50"), "m": 2.0}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_i_of_new_fields_appends_in_i_order_not_lexicographic() -> None:
    pre = {"_id": 1, "m": 0}
    diff = {"i": {"z": 1, "a": 2, "k": 3}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "m": 0, "z": 1, "a": 2, "k": 3})


def test_i_on_existing_field_moves_it_to_the_end_in_i_order() -> None:
    pre = {"_id": 1, "a": 1, "b": 2, "c": 3}
    diff = {"i": {"b": 20, "a": 1}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "c": 3, "b": 20, "a": 1})


def test_u_on_absent_field_appends_after_other_absent_u_and_before_i() -> None:
    pre = {"_id": 1, "x": 0, "y": 0}
    diff = {"u": {"new1": 1, "x": 5, "new2": 2}, "i": {"ins": 3, "y": 4}}
    expected = {"_id": 1, "x": 5, "new1": 1, "new2": 2, "ins": 3, "y": 4}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_d_removes_field_and_ignores_absent_field() -> None:
    pre = {"_id": 1, "a": 1, "b": 2}
    assert_bson(apply_v2_diff(pre, {"d": {"a": False, "zz": False}}), {"_id": 1, "b": 2})


def test_d_u_i_together_keep_server_order() -> None:
    pre = {"_id": 1, "gone": 1, "keep": 2, "moved": 3, "changed": 4, "tail": 5}
    diff = {"d": {"gone": False}, "u": {"changed": 40}, "i": {"added": 6, "moved": 30}}
    expected = {"_id": 1, "keep": 2, "changed": 40, "tail": 5, "added": 6, "moved": 30}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_nested_s_applies_document_diff_to_subobject() -> None:
    pre = {"_id": 1, "a": {"x": 1, "y": 2, "z": 3}, "b": 1}
    diff = {"u": {"b": 2}, "sa": {"d": {"x": False}, "u": {"z": 30}, "i": {"w": 4}}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "a": {"y": 2, "z": 30, "w": 4}, "b": 2})


def test_deeply_nested_s() -> None:
    pre = {"_id": 1, "a": {"b": {"c": {"d": 1, "e": 2}}}}
    diff = {"sa": {"sb": {"sc": {"u": {"d": 10}, "i": {"f": 3}}}}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "a": {"b": {"c": {"d": 10, "e": 2, "f": 3}}}})


def test_sub_diff_of_absent_field_creates_nothing() -> None:
    pre = {"_id": 1, "other": 1}
    diff = {"smissing": {"u": {"x": 1}}, "sarr": {"a": True, "u0": 1}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "other": 1})


def test_sub_diff_of_absent_nested_field_creates_nothing() -> None:
    pre = {"_id": 1, "a": {"x": 1}}
    assert_bson(apply_v2_diff(pre, {"sa": {"sb": {"i": {"c": 1}}}}), {"_id": 1, "a": {"x": 1}})


# ---------------------------------------------------------------------------------------------
# 1.3 field names are everything after the single leading 's'
# ---------------------------------------------------------------------------------------------


def test_dotted_sub_diff_key_is_one_field_name() -> None:
    pre = {"_id": 1, "a": {"b": {"x": 0}}, "a.b": {"x": 0}}
    expected = {"_id": 1, "a": {"b": {"x": 0}}, "a.b": {"x": 1}}
    assert_bson(apply_v2_diff(pre, {"sa.b": {"u": {"x": 1}}}), expected)


def test_dotted_names_in_u_i_d_are_field_names() -> None:
    pre = {"_id": 1, "a": {"b": 1}, "x.y": 1, "p.q": 1}
    diff = {"d": {"p.q": False}, "u": {"x.y": 2}, "i": {"a.b": 3}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "a": {"b": 1}, "x.y": 2, "a.b": 3})


def test_dollar_prefixed_field_names() -> None:
    pre = {"_id": 1, "$meta": {"$n": 1}, "$x": 0}
    diff = {"u": {"$x": 5}, "i": {"$new": True}, "s$meta": {"u": {"$n": 2}}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "$meta": {"$n": 2}, "$x": 5, "$new": True})


def test_key_s_is_the_empty_field_name() -> None:
    pre = {"_id": 1, "": {"k": 1}, "s": {"k": 1}}
    assert_bson(apply_v2_diff(pre, {"s": {"u": {"k": 2}}}), {"_id": 1, "": {"k": 2}, "s": {"k": 1}})


def test_empty_field_name_in_u() -> None:
    assert_bson(apply_v2_diff({"_id": 1, "": 0}, {"u": {"": 1}}), {"_id": 1, "": 1})


def test_numeric_sub_diff_key_in_document_diff_is_a_field_name() -> None:
    pre = {"_id": 1, "cols": {"0": {"v": 1}, "1.2": {"v": 1}, "10": {"v": 1}}}
    diff = {"scols": {"s0": {"u": {"v": 2}}, "s1.2": {"u": {"v": 3}}, "s10": {"u": {"v": 4}}}}
    expected = {"_id": 1, "cols": {"0": {"v": 2}, "1.2": {"v": 3}, "10": {"v": 4}}}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_field_name_starting_with_s() -> None:
    pre = {"_id": 1, "sub": {"k": 1}, "ub": {"k": 1}}
    assert_bson(apply_v2_diff(pre, {"ssub": {"u": {"k": 2}}}), {"_id": 1, "sub": {"k": 2}, "ub": {"k": 1}})


# ---------------------------------------------------------------------------------------------
# 1.3 type mismatch writes null in place
# ---------------------------------------------------------------------------------------------


def test_document_diff_on_array_writes_null_in_place() -> None:
    pre = {"_id": 1, "a": [1, 2], "b": 1}
    assert_bson(apply_v2_diff(pre, {"sa": {"u": {"x": 1}}}), {"_id": 1, "a": None, "b": 1})


def test_array_diff_on_object_writes_null_in_place() -> None:
    pre = {"_id": 1, "a": {"x": 1}, "b": 1}
    assert_bson(apply_v2_diff(pre, {"sa": {"a": True, "u0": 1}}), {"_id": 1, "a": None, "b": 1})


@pytest.mark.parametrize("scalar", ["text", 5, None, Int64(5), OID, b"\x01", True])
def test_sub_diff_on_scalar_writes_null_in_place(scalar: Any) -> None:
    pre = {"_id": 1, "a": scalar, "b": 1}
    assert_bson(apply_v2_diff(pre, {"sa": {"u": {"x": 1}}}), {"_id": 1, "a": None, "b": 1})


def test_mismatch_nested_inside_object() -> None:
    pre = {"dummyA": 1, "subObj": {"subDummyA": 1, "subObj": "scalar!", "subDummyB": 2}, "dummyC": 3}
    diff = {"ssubObj": {"ssubObj": {"u": {"a": 1}}}}
    expected = {"dummyA": 1, "subObj": {"subDummyA": 1, "subObj": None, "subDummyB": 2}, "dummyC": 3}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_document_diff_applies_to_dbref_value_as_an_object() -> None:
    pre = roundtrip({"_id": 1, "ref": {"$ref": "users", "$id": 7, "note": "x"}, "z": 0})
    assert isinstance(pre["ref"], DBRef)
    diff = {"sref": {"u": {"$id": 8}, "i": {"extra": 1}}}
    expected = {"_id": 1, "ref": {"$ref": "users", "$id": 8, "note": "x", "extra": 1}, "z": 0}
    assert_bson(apply_v2_diff(pre, diff), expected)


# ---------------------------------------------------------------------------------------------
# 1.3 array diffs
# ---------------------------------------------------------------------------------------------


def test_array_u_in_place() -> None:
    pre = {"_id": 1, "arr": [0, 1, 2]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "u1": "one"}}), {"_id": 1, "arr": [0, "one", 2]})


def test_array_u_at_length_appends() -> None:
    pre = {"_id": 1, "arr": [0, 1]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "u2": 2}}), {"_id": 1, "arr": [0, 1, 2]})


def test_array_u_past_end_pads_gaps_with_null() -> None:
    pre = {"_id": 1, "arr": [0]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "u3": 3}}), {"_id": 1, "arr": [0, None, None, 3]})


def test_array_updates_noncontiguous_with_padding_before_last() -> None:
    pre: dict[str, Any] = {"arr": [{}, {}, {}, {}]}
    diff = {"sarr": {"a": True, "u1": 997, "u2": {"newVal": 998}, "u5": 999}}
    assert_bson(apply_v2_diff(pre, diff), {"arr": [{}, 997, {"newVal": 998}, {}, None, 999]})


def test_array_s_past_end_appends_null() -> None:
    pre = {"_id": 1, "arr": [{"x": 1}]}
    diff = {"sarr": {"a": True, "s0": {"u": {"x": 2}}, "s2": {"u": {"x": 3}}}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "arr": [{"x": 2}, None, None]})


def test_array_s_on_empty_array_is_all_null_then_u() -> None:
    pre = {"arr": [], "uField": 1}
    diff = {
        "u": {"uField": 999},
        "sarr": {"a": True, "s1": {"u": {"a": 1}}, "s2": {"u": {"b": 2}}, "u4": {"x": 1}},
    }
    assert_bson(apply_v2_diff(pre, diff), {"arr": [None, None, None, None, {"x": 1}], "uField": 999})


def test_array_l_shrinks() -> None:
    pre = {"_id": 1, "arr": [0, 1, 2, 3, 4]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "l": 2}}), {"_id": 1, "arr": [0, 1]})


def test_array_l_shrink_with_update_below_l() -> None:
    pre = {"arr": [999, 999, 999, 999]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "l": 3, "u1": 1}}), {"arr": [999, 1, 999]})


def test_array_l_to_zero() -> None:
    assert_bson(apply_v2_diff({"arr": [1, 2]}, {"sarr": {"a": True, "l": 0}}), {"arr": []})


def test_array_l_growth_pads_with_null() -> None:
    pre = {"_id": 1, "arr": [1]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "l": 3}}), {"_id": 1, "arr": [1, None, None]})


def test_array_l_growth_with_update_inside_new_length() -> None:
    pre = {"arr": [1]}
    assert_bson(apply_v2_diff(pre, {"sarr": {"a": True, "l": 4, "u2": 7}}), {"arr": [1, None, 7, None]})


def test_array_longer_than_diff_keeps_tail_without_l() -> None:
    pre = {"arr": [0, {}, {}, {}, 4, 5, 6], "uField": 1}
    diff = {
        "u": {"uField": 999},
        "sarr": {
            "a": True,
            "s1": {"u": {"a": 1}},
            "s2": {"u": {"b": 2}},
            "s3": {"u": {"c": 3}},
            "u4": {"x": 1},
        },
    }
    expected = {"arr": [0, {"a": 1}, {"b": 2}, {"c": 3}, {"x": 1}, 5, 6], "uField": 999}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_array_element_document_diff_and_nested_array_diff() -> None:
    pre = {"_id": 1, "m": [{"k": 1, "v": [1, 2]}, [10, 20], "s"]}
    diff = {"sm": {"a": True, "s0": {"u": {"k": 2}, "sv": {"a": True, "u2": 3}}, "s1": {"a": True, "l": 1}}}
    assert_bson(apply_v2_diff(pre, diff), {"_id": 1, "m": [{"k": 2, "v": [1, 2, 3]}, [10], "s"]})


def test_array_element_kind_mismatch_writes_null() -> None:
    pre = {"arr": [0, {"x": 1}, [1], "s"]}
    diff = {"sarr": {"a": True, "s0": {"u": {"x": 1}}, "s1": {"a": True, "u0": 1}, "s2": {"u": {"y": 1}}}}
    assert_bson(apply_v2_diff(pre, diff), {"arr": [None, None, None, "s"]})


def test_nested_arrays_of_documents() -> None:
    pre = {
        "_id": 1,
        "orders": [
            {"id": 1, "lines": [{"sku": "A", "qty": 1}]},
            {"id": 2, "lines": [{"sku": "B", "qty": 2}, {"sku": "C", "qty": 5}]},
        ],
    }
    diff = {
        "sorders": {
            "a": True,
            "s0": {"slines": {"a": True, "u1": {"sku": "Z", "qty": 9}}},
            "s1": {
                "u": {"id": 20},
                "slines": {"a": True, "l": 1, "s0": {"u": {"qty": 3}, "i": {"note": "x"}}},
            },
        }
    }
    expected = {
        "_id": 1,
        "orders": [
            {"id": 1, "lines": [{"sku": "A", "qty": 1}, {"sku": "Z", "qty": 9}]},
            {"id": 20, "lines": [{"sku": "B", "qty": 3, "note": "x"}]},
        ],
    }
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_array_index_keys_are_decimal_not_lexicographic() -> None:
    pre = {"arr": list(range(12))}
    diff = {"sarr": {"a": True, "u2": "two", "u10": "ten"}}
    expected = {"arr": [0, 1, "two", 3, 4, 5, 6, 7, 8, 9, "ten", 11]}
    assert_bson(apply_v2_diff(pre, diff), expected)


# ---------------------------------------------------------------------------------------------
# 1.3 binary section
# ---------------------------------------------------------------------------------------------


def test_b_appends_at_offset_and_keeps_subtype() -> None:
    pre = {"_id": 1, "data": {"t": Binary(b"abcdef", 7), "z": 1}}
    diff = {"sdata": {"b": {"t": {"o": 4, "d": Binary(b"XYZ", 7)}}}}
    expected = {"_id": 1, "data": {"t": Binary(b"abcdXYZ", 7), "z": 1}}
    assert_bson(apply_v2_diff(pre, diff), expected)


def test_b_offset_equal_to_length_appends() -> None:
    pre = {"c": Binary(b"ab", 7)}
    assert_bson(apply_v2_diff(pre, {"b": {"c": {"o": 2, "d": Binary(b"cd", 7)}}}), {"c": Binary(b"abcd", 7)})


def test_b_offset_past_length_is_noop() -> None:
    pre = {"c": Binary(b"ab", 7), "n": 1}
    diff = {"b": {"c": {"o": 3, "d": Binary(b"zz", 7)}}}
    assert_bson(apply_v2_diff(pre, diff), {"c": Binary(b"ab", 7), "n": 1})


def test_b_keeps_old_subtype_even_if_data_subtype_differs() -> None:
    pre = {"c": Binary(b"ab", 7)}
    assert_bson(apply_v2_diff(pre, {"b": {"c": {"o": 1, "d": b"Z"}}}), {"c": Binary(b"aZ", 7)})


def test_b_on_subtype_zero_stays_bytes() -> None:
    pre = roundtrip({"c": Binary(b"abc", 0)})
    assert type(pre["c"]) is bytes
    result = apply_v2_diff(pre, {"b": {"c": {"o": 1, "d": Binary(b"Z", 7)}}})
    assert type(result["c"]) is bytes
    assert_bson(result, {"c": b"aZ"})


def test_b_on_absent_field_is_noop_and_on_non_binary_writes_null() -> None:
    pre = {"s": "text", "k": 1}
    diff = {"b": {"missing": {"o": 0, "d": b"x"}, "s": {"o": 0, "d": b"x"}}}
    assert_bson(apply_v2_diff(pre, diff), {"s": None, "k": 1})


def test_b_is_applied_in_place_with_other_sections() -> None:
    pre = {"a": 1, "c": Binary(b"ab", 7), "o": {"x": 1}}
    diff = {"u": {"a": 2}, "i": {"n": 1}, "b": {"c": {"o": 0, "d": Binary(b"Q", 7)}}, "so": {"u": {"x": 2}}}
    assert_bson(apply_v2_diff(pre, diff), {"a": 2, "c": Binary(b"Q", 7), "o": {"x": 2}, "n": 1})


# ---------------------------------------------------------------------------------------------
# 1.3 grammar errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diff", "message"),
    [
        ({}, "empty"),
        ({"sa": {}}, "empty"),
        ({"sa": {"a": True, "s0": {}}}, "empty"),
        ({"u": {"a": 1}, "d": {"b": False}}, "out of order"),
        ({"i": {"a": 1}, "u": {"b": 1}}, "out of order"),
        ({"b": {"c": {"o": 0, "d": b""}}, "i": {"a": 1}}, "out of order"),
        ({"sa": {"u": {"x": 1}}, "u": {"b": 1}}, "follows a sub-diff"),
        ({"sa": {"u": {"x": 1}}, "d": {"b": False}}, "follows a sub-diff"),
        ({"d": {"a": False}, "u": {"a": 1}}, "duplicate field"),
        ({"u": {"a": 1}, "i": {"a": 1}}, "duplicate field"),
        ({"u": {"a": 1}, "sa": {"u": {"x": 1}}}, "duplicate field"),
        ({"i": {"c": 1}, "b": {"c": {"o": 0, "d": b""}}}, "duplicate field"),
        ({"sa": {"d": {"p": False}, "u": {"p": 1}}}, "duplicate field"),
        ({"x": {"a": 1}}, "unexpected key 'x'"),
        ({"delete": {"a": False}}, "unexpected key 'delete'"),
        ({"": {"a": 1}}, "unexpected key ''"),
        ({"u": 5}, "expected an object"),
        ({"u": [1]}, "expected an object"),
        ({"sa": 5}, "expected an object"),
        ({"sa": [{"u": {"x": 1}}]}, "expected an object"),
        ({"a": True, "u0": 1}, "top level"),
        ({"a": True, "l": 5, "d0": False}, "top level"),
    ],
)
def test_document_diff_grammar_errors(diff: dict[str, Any], message: str) -> None:
    with pytest.raises(DiffFormatError, match=message):
        apply_v2_diff({"a": {"p": 1}, "c": Binary(b"", 7)}, diff)


@pytest.mark.parametrize(
    ("array_diff", "message"),
    [
        ({"a": False, "u0": 1}, "boolean true"),
        ({"a": 1, "u0": 1}, "boolean true"),
        ({"a": True, "l": Int64(2)}, "int32"),
        ({"a": True, "l": 2.0}, "int32"),
        ({"a": True, "l": "2"}, "int32"),
        ({"a": True, "l": True}, "int32"),
        ({"a": True, "l": -1}, "int32"),
        ({"a": True, "l": 2**31}, "int32"),
        ({"a": True, "u0": 1, "l": 1}, "directly follow"),
        ({"a": True, "d0": False}, "never deleted"),
        ({"a": True, "x0": 1}, "invalid array diff key"),
        ({"a": True, "u": 1}, "invalid array diff key"),
        ({"a": True, "u-1": 1}, "invalid array diff key"),
        ({"a": True, "ua": 1}, "invalid array diff key"),
        ({"a": True, "l": 1, "a0": True}, "invalid array diff key"),
        ({"a": True, "u2": 1, "u1": 1}, "ascending"),
        ({"a": True, "u1": 1, "s01": {"u": {"x": 1}}}, "ascending"),
        ({"a": True, "l": 1, "u3": 1}, "not below the new length"),
        ({"a": True, "s0": 5}, "expected an object"),
        ({"a": True, "u99999999999": 1}, "cannot exist"),
        ({"a": True, "l": 2**30}, "cannot be the length"),
    ],
)
def test_array_diff_grammar_errors(array_diff: dict[str, Any], message: str) -> None:
    with pytest.raises(DiffFormatError, match=message):
        apply_v2_diff({"arr": [1, 2]}, {"sarr": array_diff})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"d": b"x"}, "exactly the keys"),
        ({"o": 0}, "exactly the keys"),
        ({"o": 0, "d": b"x", "x": 1}, "exactly the keys"),
        ({"o": -1, "d": b"x"}, "non-negative"),
        ({"o": 1.0, "d": b"x"}, "non-negative"),
        ({"o": True, "d": b"x"}, "non-negative"),
        ({"o": 0, "d": "x"}, "BinData"),
        (5, "expected an object"),
    ],
)
def test_binary_section_grammar_errors(entry: Any, message: str) -> None:
    with pytest.raises(DiffFormatError, match=message):
        apply_v2_diff({"c": Binary(b"ab", 7)}, {"b": {"c": entry}})


def test_grammar_is_checked_even_where_the_document_has_no_such_field() -> None:
    with pytest.raises(DiffFormatError, match="never deleted"):
        apply_v2_diff({"_id": 1}, {"smissing": {"a": True, "d0": False}})


def test_diff_format_error_is_a_value_error() -> None:
    assert issubclass(DiffFormatError, ValueError)


# ---------------------------------------------------------------------------------------------
# inputs are never mutated; results share nothing mutable with them
# ---------------------------------------------------------------------------------------------


def test_v2_does_not_mutate_inputs_or_share_containers() -> None:
    pre = {"_id": 1, "keep": {"deep": [1, {"x": 1}]}, "arr": [1, 2, 3], "o": {"p": 1}}
    diff = {"u": {"n": {"v": [1]}}, "sarr": {"a": True, "l": 1}, "so": {"i": {"q": 2}}}
    pre_bytes, diff_bytes = bson.encode(pre), bson.encode(diff)
    result = apply_v2_diff(pre, diff)
    assert bson.encode(pre) == pre_bytes
    assert bson.encode(diff) == diff_bytes
    result["keep"]["deep"][1]["x"] = 99
    result["n"]["v"].append(2)
    assert bson.encode(pre) == pre_bytes
    assert bson.encode(diff) == diff_bytes


def test_v1_does_not_mutate_inputs() -> None:
    pre = {"_id": 1, "a": {"b": [1]}, "arr": [1]}
    o = {"$v": 1, "$set": {"a.b.3": 1, "arr.2": {"x": [1]}, "new.x": {"y": 1}}, "$unset": {"a.c": True}}
    pre_bytes, o_bytes = bson.encode(pre), bson.encode(o)
    result = apply_v1_update(pre, o)
    result["new"]["x"]["y"] = 2
    result["arr"][2]["x"].append(2)
    assert bson.encode(pre) == pre_bytes
    assert bson.encode(o) == o_bytes


def test_update_description_does_not_mutate_inputs() -> None:
    pre = {"_id": 1, "a": {"b": 1}, "arr": [1, 2, 3]}
    updated = {"a.c": {"x": [1]}, "arr.1": 5}
    pre_bytes, updated_bytes = bson.encode(pre), bson.encode(updated)
    result = apply_update_description(pre, updated, [], [{"field": "arr", "newSize": 2}])
    assert result is not None
    result["a"]["c"]["x"].append(2)
    assert bson.encode(pre) == pre_bytes
    assert bson.encode(updated) == updated_bytes


# ---------------------------------------------------------------------------------------------
# idempotence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pre", "diff"),
    [
        ({"_id": 1, "a": 1, "b": {"c": 1}}, {"u": {"a": 5}, "sb": {"u": {"c": 6}}}),
        ({"_id": 1, "a": 1, "b": 2, "c": 3}, {"i": {"b": 20, "a": 1}}),
        ({"_id": 1, "a": 1, "b": 2}, {"d": {"a": False}, "i": {"z": 1}}),
        ({"_id": 1, "arr": [0]}, {"sarr": {"a": True, "u3": 3, "s5": {"u": {"x": 1}}}}),
        ({"_id": 1, "arr": [1, 2, 3, 4]}, {"sarr": {"a": True, "l": 2, "u1": 9}}),
        ({"_id": 1, "a": [1]}, {"sa": {"u": {"x": 1}}}),
        ({"c": Binary(b"abc", 7)}, {"b": {"c": {"o": 2, "d": Binary(b"XY", 7)}}}),
    ],
)
def test_v2_diff_applied_twice_equals_once(pre: dict[str, Any], diff: dict[str, Any]) -> None:
    once = apply_v2_diff(pre, diff)
    assert_bson(apply_v2_diff(once, diff), once)


def test_v2_diff_generated_by_set_is_stable_on_its_own_output_and_matches_v1() -> None:
    pre = {"_id": 1, "a": 1, "b": {"c": 1, "d": 2}, "arr": [1, 2]}
    # What a 5.1+ primary logs for {$set: {a: 5, "b.c": 6, "arr.1": 7}}: u-only, nested.
    diff = {"u": {"a": 5}, "sarr": {"a": True, "u1": 7}, "sb": {"u": {"c": 6}}}
    once = apply_v2_diff(pre, diff)
    assert_bson(once, {"_id": 1, "a": 5, "b": {"c": 6, "d": 2}, "arr": [1, 7]})
    assert_bson(apply_v2_diff(once, diff), once)
    assert_bson(apply_v1_update(pre, {"$v": 1, "$set": {"a": 5, "b.c": 6, "arr.1": 7}}), once)


def test_v1_set_applied_twice_equals_once() -> None:
    pre = {"_id": 1, "a": {"x": 1}, "arr": [1]}
    o = {"$v": 1, "$set": {"a.y.z": 1, "arr.3": "p", "n": Int64(4), "a.x": 2}, "$unset": {"arr.0": True}}
    once = apply_v1_update(pre, o)
    assert_bson(once, {"_id": 1, "a": {"x": 2, "y": {"z": 1}}, "arr": [None, None, None, "p"], "n": Int64(4)})
    assert_bson(apply_v1_update(once, o), once)


# ---------------------------------------------------------------------------------------------
# 1.4 $v:1 modifier updates
# ---------------------------------------------------------------------------------------------


def test_v1_set_existing_in_place_and_new_field_appended() -> None:
    pre = {"_id": 1, "a": 1, "b": 2}
    o = {"$v": 1, "$set": {"new": 3, "a": 10}}
    assert_bson(apply_v1_update(pre, o), {"_id": 1, "a": 10, "b": 2, "new": 3})


def test_v1_set_keeps_value_types() -> None:
    pre = {"_id": 1, "n": 1}
    o = {"$v": 1, "$set": {"n": Int64(2), "d": Decimal128("0.10"), "f": 1.0, "t": dt.datetime(2024, 1, 1)}}
    expected = {"_id": 1, "n": Int64(2), "d": Decimal128("0.10"), "f": 1.0, "t": dt.datetime(2024, 1, 1)}
    assert_bson(apply_v1_update(pre, o), expected)


def test_v1_set_creates_missing_intermediate_objects() -> None:
    assert_bson(apply_v1_update({"_id": 1}, {"$set": {"a.b.c": 1}}), {"_id": 1, "a": {"b": {"c": 1}}})


def test_v1_set_creates_rest_of_path_below_existing_parent() -> None:
    pre = {"_id": 1, "a": {"x": 1}, "z": 0}
    assert_bson(
        apply_v1_update(pre, {"$set": {"a.b.c": 1}}), {"_id": 1, "a": {"x": 1, "b": {"c": 1}}, "z": 0}
    )


def test_v1_numeric_component_under_created_path_is_an_object_field() -> None:
    assert_bson(apply_v1_update({"_id": 1}, {"$set": {"a.0.b": 1}}), {"_id": 1, "a": {"0": {"b": 1}}})


def test_v1_numeric_component_on_object_is_a_field_name() -> None:
    pre = {"a": {"0": 1}}
    assert_bson(apply_v1_update(pre, {"$set": {"a.0": 2, "a.1": 3}}), {"a": {"0": 2, "1": 3}})


def test_v1_set_array_element_in_place() -> None:
    pre = {"arr": [1, {"x": 1}, 3]}
    assert_bson(apply_v1_update(pre, {"$set": {"arr.0": 0, "arr.1.x": 2}}), {"arr": [0, {"x": 2}, 3]})


def test_v1_set_index_with_leading_zero_addresses_the_element() -> None:
    assert_bson(apply_v1_update({"arr": [1, 2]}, {"$set": {"arr.01": 5}}), {"arr": [1, 5]})


def test_v1_set_at_array_length_appends() -> None:
    assert_bson(apply_v1_update({"arr": [1]}, {"$set": {"arr.1": 2}}), {"arr": [1, 2]})


def test_v1_set_past_array_end_pads_with_null() -> None:
    assert_bson(apply_v1_update({"arr": [1]}, {"$set": {"arr.3": 9}}), {"arr": [1, None, None, 9]})


def test_v1_set_past_array_end_creates_object_element() -> None:
    assert_bson(apply_v1_update({"arr": []}, {"$set": {"arr.1.x.y": 1}}), {"arr": [None, {"x": {"y": 1}}]})


def test_v1_padding_limit() -> None:
    with pytest.raises(DiffFormatError, match="pad"):
        apply_v1_update({"arr": []}, {"$set": {"arr.1500001": 1}})


def test_v1_unset_removes_object_field() -> None:
    pre = {"_id": 1, "a": {"b": 1, "c": 2}, "d": 3}
    assert_bson(apply_v1_update(pre, {"$unset": {"a.b": True, "d": True}}), {"_id": 1, "a": {"c": 2}})


@pytest.mark.parametrize("flag", [True, 1, "", Int64(1)])
def test_v1_unset_value_is_ignored(flag: Any) -> None:
    assert_bson(apply_v1_update({"a": 1, "b": 2}, {"$unset": {"a": flag}}), {"b": 2})


def test_v1_unset_array_element_writes_null() -> None:
    pre = {"arr": [1, 2, 3]}
    assert_bson(apply_v1_update(pre, {"$v": 1, "$unset": {"arr.1": True}}), {"arr": [1, None, 3]})


@pytest.mark.parametrize("path", ["missing", "a.missing", "a.b.c.d", "s.x", "arr.5", "arr.x", "arr.0.y"])
def test_v1_unset_of_missing_path_is_noop(path: str) -> None:
    pre = {"a": {"b": 1}, "s": "scalar", "arr": [1]}
    assert_bson(apply_v1_update(pre, {"$unset": {path: True}}), pre)


@pytest.mark.parametrize("path", ["s.x", "s.x.y", "a.b.c", "arr.x", "arr.0.y", "arr.x.0"])
def test_v1_set_on_non_viable_path_is_noop(path: str) -> None:
    pre = {"a": {"b": 1}, "s": "scalar", "arr": [1]}
    assert_bson(apply_v1_update(pre, {"$set": {path: 1}}), pre)


def test_v1_non_viable_path_does_not_stop_other_paths() -> None:
    pre = {"a": 1, "b": {"c": 1}}
    o = {"$set": {"a.x": 1, "b.c": 2, "z": 3}, "$unset": {"a.y": True}}
    assert_bson(apply_v1_update(pre, o), {"a": 1, "b": {"c": 2}, "z": 3})


def test_v1_new_string_fields_created_in_lexicographic_order() -> None:
    pre = {"_id": 1}
    o = {"$v": 1, "$set": {"zeta": 1, "beta": 2, "alpha.y": 3, "alpha.b": 4, "Zed": 5}}
    expected = {"_id": 1, "Zed": 5, "alpha": {"b": 4, "y": 3}, "beta": 2, "zeta": 1}
    assert_bson(apply_v1_update(pre, o), expected)


def test_v1_numeric_components_created_in_numeric_order() -> None:
    pre: dict[str, Any] = {"m": {}}
    o = {"$set": {"m.10": "ten", "m.2": "two", "m.b": "b", "m.9": "nine", "m.B": "B"}}
    assert_bson(apply_v1_update(pre, o), {"m": {"2": "two", "9": "nine", "10": "ten", "B": "B", "b": "b"}})


def test_v1_zero_padded_numbers_compare_as_strings() -> None:
    o = {"$set": {"m.10": 1, "m.09": 2, "m.010": 3, "m.0": 4}}
    # "0" is a number; "09" and "010" are strings, so they compare as strings with everything.
    assert_bson(apply_v1_update({"m": {}}, o), {"m": {"0": 4, "010": 3, "09": 2, "10": 1}})


def test_v1_legacy_order_is_plain_string_order() -> None:
    o = {"$set": {"m.10": "ten", "m.2": "two", "m.b": "b"}}
    result = apply_v1_update({"m": {}}, o, legacy_field_order=True)
    assert_bson(result, {"m": {"10": "ten", "2": "two", "b": "b"}})


def test_v1_order_decides_array_paths_a2_before_a10() -> None:
    o = {"$set": {"a.10.x": 1, "a.2.y": 2}}
    assert_bson(apply_v1_update({"a": []}, o), {"a": [None, None, {"y": 2}] + [None] * 7 + [{"x": 1}]})
    # Up to 4.4 "a.10" went first; "a.2" then met a null element and was not viable.
    legacy = apply_v1_update({"a": []}, o, legacy_field_order=True)
    assert_bson(legacy, {"a": [None] * 10 + [{"x": 1}]})


def test_v1_paths_are_ordered_per_component_not_as_whole_strings() -> None:
    # Whole strings would put "a-c" ('-' < '.') before "a.b"; the tree compares "a" with "a-c".
    o = {"$set": {"a-c": 1, "a.b": 2}}
    assert_bson(apply_v1_update({}, o), {"a": {"b": 2}, "a-c": 1})


def test_v1_set_and_unset_in_one_entry() -> None:
    pre = {"_id": 1, "old": 1, "keep": 2}
    o = {"$v": 1, "$set": {"new": 3, "keep": 20}, "$unset": {"old": True}}
    assert_bson(apply_v1_update(pre, o), {"_id": 1, "keep": 20, "new": 3})


def test_v1_descends_into_dbref_as_object() -> None:
    pre = roundtrip({"_id": 1, "ref": {"$ref": "users", "$id": 7}})
    assert_bson(
        apply_v1_update(pre, {"$set": {"ref.$id": 8, "ref.x": 1}}),
        {"_id": 1, "ref": {"$ref": "users", "$id": 8, "x": 1}},
    )


def test_v1_pre_36_entry_without_version_field() -> None:
    pre = {"_id": 1, "a": 1}
    assert_bson(apply_oplog_update(pre, {"$set": {"a": 2, "b": 3}}), {"_id": 1, "a": 2, "b": 3})


@pytest.mark.parametrize(
    ("o", "message"),
    [
        ({"$v": 1, "$inc": {"a": 1}}, "unsupported key"),
        ({"$v": 1, "a": 1}, "unsupported key"),
        ({"$v": 1, "$set": 5}, "expected an object"),
        ({"$v": 2, "$set": {"a": 1}}, "must be 1"),
        ({"$v": 1, "$set": {"a": 1, "a.b": 2}}, "conflicting"),
        ({"$v": 1, "$set": {"a.b": 1}, "$unset": {"a": True}}, "conflicting"),
        ({"$v": 1, "$set": {"a": 1}, "$unset": {"a": True}}, "conflicting"),
        ({"$v": 1, "$set": {"": 1}}, "empty field name"),
        ({"$v": 1, "$set": {"a..b": 1}}, "empty field name"),
        ({"$v": 1, "$set": {"a.": 1}}, "empty field name"),
        ({"$v": 1, "$set": {"a.$.b": 1}}, "positional"),
        ({"$v": 1, "$set": {"a.$[].b": 1}}, "positional"),
        ({"$v": 1, "$set": {"a.$[x]": 1}}, "positional"),
    ],
)
def test_v1_errors(o: dict[str, Any], message: str) -> None:
    with pytest.raises(DiffFormatError, match=message):
        apply_v1_update({"a": {"b": 1}}, o)


def test_v1_conflicts_are_found_between_non_adjacent_siblings() -> None:
    with pytest.raises(DiffFormatError, match="conflicting"):
        apply_v1_update({}, {"$set": {"a": 1, "a.b": 1, "a.c": 1}})


# ---------------------------------------------------------------------------------------------
# apply_oplog_update dispatch
# ---------------------------------------------------------------------------------------------


def test_oplog_update_dispatches_v2() -> None:
    pre = {"_id": 1, "a": 1}
    assert_bson(apply_oplog_update(pre, {"$v": 2, "diff": {"u": {"a": 2}}}), {"_id": 1, "a": 2})


def test_oplog_update_dispatches_v1() -> None:
    pre = {"_id": 1, "a": 1}
    assert_bson(apply_oplog_update(pre, {"$v": 1, "$set": {"a": 2}}), {"_id": 1, "a": 2})


def test_replacement_keeps_target_id_first() -> None:
    pre = {"_id": OID, "a": 1, "b": 2}
    o = {"x": 1, "_id": OID, "y": Int64(2)}
    assert_bson(apply_oplog_update(pre, o), {"_id": OID, "x": 1, "y": Int64(2)})


def test_replacement_without_id_keeps_target_id() -> None:
    pre = {"_id": 5, "a": 1}
    assert_bson(apply_oplog_update(pre, {"a": 2, "b": {"c": [1]}}), {"_id": 5, "a": 2, "b": {"c": [1]}})


def test_replacement_keeps_target_id_over_replacement_id() -> None:
    pre = {"_id": Int64(5), "a": 1}
    assert_bson(apply_oplog_update(pre, {"_id": 5, "a": 2}), {"_id": Int64(5), "a": 2})


def test_replacement_of_document_without_id_uses_replacement_id() -> None:
    assert_bson(apply_oplog_update({"a": 1}, {"b": 2, "_id": 3}), {"_id": 3, "b": 2})


@pytest.mark.parametrize(
    ("o", "message"),
    [
        ({"$v": 2, "diff": {"u": {"a": 1}}, "extra": 1}, "exactly the fields"),
        ({"$v": 2}, "exactly the fields"),
        ({"$v": 2, "diff": 5}, "expected an object"),
        ({"$v": 2, "diff": {}}, "empty"),
        ({"$v": 7, "$set": {"a": 1}}, r"\$v"),
    ],
)
def test_oplog_update_errors(o: dict[str, Any], message: str) -> None:
    with pytest.raises(DiffFormatError, match=message):
        apply_oplog_update({"_id": 1, "a": 0}, o)


# ---------------------------------------------------------------------------------------------
# change-stream updateDescription
# ---------------------------------------------------------------------------------------------


def test_description_new_fields_append_in_updated_fields_order() -> None:
    pre = {"_id": 1, "a": {"x": 1}, "k": 0}
    result = apply_update_description(pre, {"z": 1, "b": 2, "a.y": 3}, [], [])
    assert_bson(result, {"_id": 1, "a": {"x": 1, "y": 3}, "k": 0, "z": 1, "b": 2})


def test_description_existing_field_is_refused_by_default() -> None:
    # {u: {a: 2}} and {i: {a: 2}} give the same description but different documents.
    pre = {"_id": 1, "a": 1, "b": 2}
    assert apply_update_description(pre, {"a": 2}, [], []) is None
    assert apply_update_description(pre, {"z": 1, "a": 2}, [], []) is None


def test_description_existing_field_in_place_when_assumed() -> None:
    pre = {"_id": 1, "a": 1, "b": {"c": 1}}
    result = apply_update_description(pre, {"a": Int64(2), "b.c": 3, "n": 4}, [], [], assume_in_place=True)
    assert_bson(result, {"_id": 1, "a": Int64(2), "b": {"c": 3}, "n": 4})


def test_description_identical_value_means_a_moved_field() -> None:
    # A pipeline reorder logs {i: {a: 1}} for an unchanged 'a': only a move produces such an entry.
    pre = {"_id": 1, "a": 1, "b": "x"}
    assert apply_update_description(pre, {"a": 1}, [], [], assume_in_place=True) is None
    # Same number, other type: a real change.
    result = apply_update_description(pre, {"a": Int64(1)}, [], [], assume_in_place=True)
    assert_bson(result, {"_id": 1, "a": Int64(1), "b": "x"})


def test_description_existing_field_after_new_field_of_same_parent_is_refused() -> None:
    pre = {"_id": 1, "a": 1, "o": {"p": 1}}
    assert apply_update_description(pre, {"new": 1, "a": 2}, [], [], assume_in_place=True) is None
    result = apply_update_description(pre, {"new": 1, "o.p": 2}, [], [], assume_in_place=True)
    assert_bson(result, {"_id": 1, "a": 1, "o": {"p": 2}, "new": 1})


def test_description_array_elements_in_place_append_and_pad() -> None:
    pre = {"_id": 1, "arr": [0, 1]}
    result = apply_update_description(pre, {"arr.0": "zero", "arr.2": 2, "arr.5": 5}, [], [])
    assert_bson(result, {"_id": 1, "arr": ["zero", 1, 2, None, None, 5]})


def test_description_removed_fields() -> None:
    pre = {"_id": 1, "a": 1, "o": {"p": 1, "q": 2}, "z": 3}
    result = apply_update_description(pre, {}, ["a", "o.p"], [])
    assert_bson(result, {"_id": 1, "o": {"q": 2}, "z": 3})


def test_description_removed_array_element_becomes_null() -> None:
    result = apply_update_description({"arr": [1, 2, 3]}, {}, ["arr.1"], [])
    assert_bson(result, {"arr": [1, None, 3]})


@pytest.mark.parametrize("removed", ["missing", "o.missing", "arr.3", "missing.x"])
def test_description_removal_of_absent_path_is_refused(removed: str) -> None:
    assert apply_update_description({"o": {"p": 1}, "arr": [1]}, {}, [removed], []) is None


def test_description_truncated_arrays_with_update_below_new_size() -> None:
    pre = {"_id": 1, "arr": [0, 1, 2, 3], "m": [[1, 2], [3]]}
    truncated = [{"field": "arr", "newSize": 2}, {"field": "m.0", "newSize": 1}]
    result = apply_update_description(pre, {"arr.1": "one"}, [], truncated)
    assert_bson(result, {"_id": 1, "arr": [0, "one"], "m": [[1], [3]]})


@pytest.mark.parametrize(
    ("truncated", "updated"),
    [
        ([{"field": "arr", "newSize": 5}], {}),
        ([{"field": "o", "newSize": 0}], {}),
        ([{"field": "missing", "newSize": 0}], {}),
        ([{"field": "arr", "newSize": 2}], {"arr.2": 1}),
        ([{"field": "arr", "newSize": 2}], {"arr.x": 1}),
        ([{"field": "arr", "newSize": 2}, {"field": "arr", "newSize": 1}], {}),
    ],
)
def test_description_invalid_truncation_is_refused(
    truncated: list[dict[str, Any]], updated: dict[str, Any]
) -> None:
    assert apply_update_description({"arr": [0, 1, 2], "o": {}}, updated, [], truncated) is None


@pytest.mark.parametrize(
    ("updated", "removed"),
    [
        ({"a": 1, "a.b": 2}, []),
        ({"a.b": 1}, ["a"]),
        ({"a": 1}, ["a"]),
        ({}, ["a", "a"]),
        ({}, ["a", "a.b"]),
    ],
)
def test_description_overlapping_keys_are_refused(updated: dict[str, Any], removed: list[str]) -> None:
    assert apply_update_description({"a": {"b": 1}}, updated, removed, []) is None


@pytest.mark.parametrize("key", ["missing.x", "s.x", "arr.5.x", "arr.x", "arr.01", "o.p.q"])
def test_description_unfollowable_path_is_refused(key: str) -> None:
    pre = {"s": "scalar", "arr": [{"x": 1}], "o": {"p": 3}}
    assert apply_update_description(pre, {key: 1}, [], []) is None


def test_description_without_disambiguation_numeric_component_follows_parent_type() -> None:
    pre = {"_id": 1, "obj": {"0": {"v": 1}}, "arr": [{"v": 1}]}
    result = apply_update_description(pre, {"obj.0.w": 2, "arr.0.w": 3}, [], [])
    assert_bson(result, {"_id": 1, "obj": {"0": {"v": 1, "w": 2}}, "arr": [{"v": 1, "w": 3}]})


def test_description_without_disambiguation_dotted_field_name_is_refused() -> None:
    pre = {"_id": 1, "a.b": {"c": 1}, "a": {"b": {"c": 1}}}
    assert apply_update_description(pre, {"a.b.d": 2}, [], []) is None
    assert apply_update_description({"x": {"a.b": 1}}, {}, ["x.a.b"], []) is None


def test_description_disambiguated_dotted_and_numeric_field_names() -> None:
    pre = {"_id": 1, "a.b": {"c": 1}, "a": {"b": {"c": 1}}, "obj": {"0": {"1": "x"}}, "arr": [[{"0": 5}]]}
    updated = {"a.b.c": 2, "obj.0.1": "y", "arr.0.0.0": 6}
    paths = {"a.b.c": ["a.b", "c"], "obj.0.1": ["obj", "0", "1"], "arr.0.0.0": ["arr", 0, 0, "0"]}
    result = apply_update_description(pre, updated, [], [], paths, assume_in_place=True)
    expected = {
        "_id": 1,
        "a.b": {"c": 2},
        "a": {"b": {"c": 1}},
        "obj": {"0": {"1": "y"}},
        "arr": [[{"0": 6}]],
    }
    assert_bson(result, expected)


def test_description_disambiguated_new_top_level_dotted_field() -> None:
    pre = {"_id": 1, "new": {"Field": 1}}
    result = apply_update_description(pre, {"new.Field.": 1}, [], [], {"new.Field.": ["new.Field."]})
    assert_bson(result, {"_id": 1, "new": {"Field": 1}, "new.Field.": 1})


def test_description_disambiguated_truncation_and_removal() -> None:
    pre = {"_id": 1, "o": {"sub.obj": {"arr..": [[1, 2], 3], "x.y": 1}}}
    paths = {
        "o.sub.obj.arr...0": ["o", "sub.obj", "arr..", 0],
        "o.sub.obj.x.y": ["o", "sub.obj", "x.y"],
    }
    result = apply_update_description(
        pre, {}, ["o.sub.obj.x.y"], [{"field": "o.sub.obj.arr...0", "newSize": 1}], paths
    )
    assert_bson(result, {"_id": 1, "o": {"sub.obj": {"arr..": [[1], 3]}}})


def test_description_disambiguated_component_kind_must_match_parent() -> None:
    pre = {"obj": {"0": 1}, "arr": [1]}
    assert apply_update_description(pre, {"obj.0": 2}, [], [], {"obj.0": ["obj", 0]}) is None
    assert apply_update_description(pre, {"arr.0": 2}, [], [], {"arr.0": ["arr", "0"]}) is None


def test_description_unlisted_key_with_disambiguation_has_array_indexes_only() -> None:
    pre = {"obj": {"0": {"x": 1}}, "arr": [{"x": 1}]}
    assert_bson(apply_update_description(pre, {"arr.0.y": 2}, [], [], {}), {**pre, "arr": [{"x": 1, "y": 2}]})
    # The server would have listed a numeric field name, so "obj.0" must index an array.
    assert apply_update_description(pre, {"obj.0.y": 2}, [], [], {}) is None
    assert apply_update_description(pre, {"arr.00.y": 2}, [], [], {}) is None


def test_description_descends_into_dbref() -> None:
    pre = roundtrip({"_id": 1, "ref": {"$ref": "users", "$id": 7, "meta": {"k": 1}}})
    result = apply_update_description(pre, {"ref.meta.n": 2}, [], [])
    assert_bson(result, {"_id": 1, "ref": {"$ref": "users", "$id": 7, "meta": {"k": 1, "n": 2}}})


def test_description_empty_is_a_copy() -> None:
    pre = {"_id": 1, "a": [1]}
    result = apply_update_description(pre, {}, [], [])
    assert_bson(result, pre)
    assert result is not pre


@pytest.mark.parametrize(
    ("truncated", "paths", "message"),
    [
        ([{"field": "arr"}], None, "truncatedArrays"),
        ([{"field": "arr", "newSize": -1}], None, "truncatedArrays"),
        ([{"field": "arr", "newSize": True}], None, "truncatedArrays"),
        ([{"newSize": 1}], None, "truncatedArrays"),
        ([5], None, "expected an object"),
        ([], {"a.b": ["a", "c"]}, "does not spell"),
        ([], {"a.b": "a.b"}, "non-empty list"),
        ([], {"a.b": []}, "non-empty list"),
        ([], {"a.0": ["a", -1]}, "invalid component"),
        ([], {"a.0": ["a", 0.0]}, "invalid component"),
    ],
)
def test_description_malformed_input_raises(
    truncated: list[Any], paths: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(DiffFormatError, match=message):
        apply_update_description({"arr": [1], "a": {"b": 1}}, {}, [], truncated, paths)
