"""Pure comparison of collection metadata for ``mongoferry verify``: index specs, collection
options and shard keys, with migration-verifier's rules (reference sections 6.7 and 6.8)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import bson
from bson import json_util
from bson.decimal128 import Decimal128
from bson.int64 import Int64

from mongoferry.verify.compare import compare_raw_documents, mismatch_detail, top_level_mismatches

__all__ = [
    "INDEX_SPEC_TOLERANCES",
    "IndexDiff",
    "SpecDiff",
    "compare_collection_specs",
    "compare_index_specs",
    "compare_shard_keys",
    "index_patch_suppressed",
    "normalize_index_spec",
    "shard_keys_equal",
]

IndexDiffKind = Literal["missing_on_dst", "missing_on_src", "spec", "order"]
SpecAspect = Literal["exist", "type", "spec", "readOnly", "shard key"]
SpecDiffKind = Literal["missing_on_dst", "missing_on_src", "content"]


# --------------------------------------------------------------------------------------
# Index comparison (reference 6.7)
# --------------------------------------------------------------------------------------

#: Values accepted by ``indexSpecIgnore``.
INDEX_SPEC_TOLERANCES: Final = frozenset({"expireAfterSeconds", "unique"})

_INDEX_FIELDS_TO_IGNORE: Final = ("v", "ns", "background")
_ORDER_SENSITIVE_INDEX_FIELDS: Final = ("key", "partialFilterExpression")
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1


@dataclass(frozen=True)
class IndexDiff:
    """An index difference. ``detail`` is ``"Missing"`` for ``missing_on_*``, a JSON patch
    (one op per line) for ``spec`` and ``field order differs: [...]`` for ``order``."""

    name: str
    kind: IndexDiffKind
    detail: str


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _modernize_key_value(value: Any) -> Any:
    """v1 index key values: 0, "" and anything neither numeric nor string mean 1."""
    if isinstance(value, bool):
        return 1
    if _is_number(value):
        return 1 if value == 0 else value
    if isinstance(value, Decimal128):
        dec = value.to_decimal()
        return 1 if dec.is_finite() and dec == 0 else value
    if isinstance(value, str):
        return 1 if value == "" else value
    return 1


def _to_int32(value: Any, upper: int) -> Any:
    """int64/double -> int32 (truncating) when within [int32 min, upper]; else unchanged."""
    if not _is_number(value):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if _INT32_MIN <= value <= upper:
        return int(value)
    return value


def _key_value_to_int32(value: Any) -> Any:
    integral = isinstance(value, Int64) or (isinstance(value, float) and value.is_integer())
    if integral and _INT32_MIN <= value <= _INT32_MAX:
        return int(value)
    return value


def normalize_index_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Normalize a ``listIndexes`` entry for comparison (reference 6.7 a-d).

    * v1 indexes: key values 0, ``""`` or neither numeric nor string become 1;
    * ``expireAfterSeconds`` (<= 2**31-1) and ``bits`` (<= 32) int64/double -> int32;
    * numeric ``sparse`` -> bool;
    * ``v``, ``ns`` and ``background`` removed;
    * ``key`` values stored as int64 or integral double -> int32.

    Field order is kept. Unlike the reference, out-of-range or non-numeric values are left
    unchanged (and then show up as a difference) instead of failing the whole check.
    """
    version = spec.get("v")
    out: dict[str, Any] = dict(spec.items())
    key = out.get("key")
    if isinstance(key, Mapping):
        legacy = _is_number(version) and version == 1
        new_key: dict[str, Any] = {}
        for name, value in key.items():
            if legacy:
                value = _modernize_key_value(value)
            new_key[name] = _key_value_to_int32(value)
        out["key"] = new_key
    if "expireAfterSeconds" in out:
        out["expireAfterSeconds"] = _to_int32(out["expireAfterSeconds"], _INT32_MAX)
    if "bits" in out:
        out["bits"] = _to_int32(out["bits"], 32)
    if "sparse" in out and _is_number(out["sparse"]):
        out["sparse"] = out["sparse"] != 0
    for name in _INDEX_FIELDS_TO_IGNORE:
        out.pop(name, None)
    return out


def _json_pointer_token(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _go_json(value: Any) -> str:
    """JSON text as Go's encoding/json writes it: compact, sorted keys, HTML-safe."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "string"


def _json_patch(pointer: str, src: Any, dst: Any, ops: list[tuple[str, str, Any]]) -> None:
    """Append RFC 6902 ops turning src into dst (jsondiff's non-LCS algorithm)."""
    kind = _json_kind(src)
    if kind != _json_kind(dst):
        ops.append(("replace", pointer, dst))
    elif kind == "object":
        for name in sorted(set(src) | set(dst)):
            child = f"{pointer}/{_json_pointer_token(name)}"
            if name in src and name in dst:
                _json_patch(child, src[name], dst[name], ops)
            elif name in src:
                ops.append(("remove", child, None))
            else:
                ops.append(("add", child, dst[name]))
    elif kind == "array":
        common = min(len(src), len(dst))
        ops.extend(("remove", f"{pointer}/{common}", None) for _ in range(common, len(src)))
        for i in range(common):
            _json_patch(f"{pointer}/{i}", src[i], dst[i], ops)
        ops.extend(("add", f"{pointer}/-", item) for item in dst[common:])
    elif src != dst:
        ops.append(("replace", pointer, dst))


def _format_ops(ops: Sequence[tuple[str, str, Any]]) -> str:
    lines = []
    for op, path, value in ops:
        line = f'{{"op":{_go_json(op)},"path":{_go_json(path)}'
        if value is not None:
            line += f',"value":{_go_json(value)}'
        lines.append(line + "}")
    return "\n".join(lines)


def _canonical_ext_json(doc: Mapping[str, Any]) -> Any:
    return json.loads(json_util.dumps(doc, json_options=json_util.CANONICAL_JSON_OPTIONS))


def _describe_index_difference(
    src: Mapping[str, Any], dst: Mapping[str, Any]
) -> tuple[IndexDiffKind, str] | None:
    a = normalize_index_spec(src)
    b = normalize_index_spec(dst)
    raw_a = bson.encode(a)
    raw_b = bson.encode(b)
    if compare_raw_documents(raw_a, raw_b, "ignore-order", max_diffs=1):
        ops: list[tuple[str, str, Any]] = []
        _json_patch("", _canonical_ext_json(a), _canonical_ext_json(b), ops)
        return "spec", _format_ops(ops)
    order_differs = [
        name for name in _ORDER_SENSITIVE_INDEX_FIELDS
        if name in a and bson.encode({"v": a[name]}) != bson.encode({"v": b[name]})
    ]
    if order_differs:
        return "order", f"field order differs: [{' '.join(order_differs)}]"
    return None


def _index_by_name(specs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for spec in specs:
        name = spec.get("name")
        if not isinstance(name, str):
            raise ValueError(f"index spec without a name: {dict(spec)!r}")
        out.setdefault(name, spec)
    return out


def compare_index_specs(
    src_specs: Sequence[Mapping[str, Any]], dst_specs: Sequence[Mapping[str, Any]]
) -> list[IndexDiff]:
    """Compare two ``listIndexes`` results, matching indexes by name.

    Results come in source order, then destination-only indexes. Specs that are equal
    after :func:`normalize_index_spec`, ignoring field order, match unless ``key`` or
    ``partialFilterExpression`` differ in order (kind ``"order"``); otherwise the detail
    is a JSON patch from src to dst over canonical extended JSON.
    """
    src_by_name = _index_by_name(src_specs)
    dst_by_name = _index_by_name(dst_specs)
    out: list[IndexDiff] = []
    for name, src_spec in src_by_name.items():
        dst_spec = dst_by_name.get(name)
        if dst_spec is None:
            out.append(IndexDiff(name, "missing_on_dst", "Missing"))
            continue
        found = _describe_index_difference(src_spec, dst_spec)
        if found is not None:
            out.append(IndexDiff(name, found[0], found[1]))
    out.extend(IndexDiff(name, "missing_on_src", "Missing")
               for name in dst_by_name if name not in src_by_name)
    return out


def index_patch_suppressed(detail: str, tolerances: set[str] | frozenset[str]) -> bool:
    """``indexSpecIgnore``: True only if every JSON-patch op path is ``/<t>`` or under it.

    A detail that is not a JSON patch (e.g. ``field order differs: [key]`` or
    ``Missing``) is never suppressed.
    """
    if not tolerances or not detail:
        return False
    prefixes = ["/" + _json_pointer_token(t) for t in tolerances]
    for line in detail.split("\n"):
        try:
            op = json.loads(line)
        except ValueError:
            return False
        if not isinstance(op, dict):
            return False
        path = op.get("path")
        if not isinstance(op.get("op"), str) or not isinstance(path, str):
            return False
        if not any(path == p or path.startswith(p + "/") for p in prefixes):
            return False
    return True


# --------------------------------------------------------------------------------------
# Collection specs (reference 6.1-6.6)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecDiff:
    """A collection-level difference.

    ``aspect="exist"``: the namespace is on one side only (detail ``None``).
    ``aspect="type"``/``"readOnly"``: detail ``Mismatch: src: <x>, dst: <y>``.
    ``aspect="spec"``: ``component`` is ``options.<field>`` (or ``options (field order
    only)``), detail from :func:`mismatch_detail` (``"Missing"`` for missing options).
    """

    aspect: SpecAspect
    component: str | None
    kind: SpecDiffKind
    detail: str | None


def _read_only(spec: Mapping[str, Any]) -> bool:
    info = spec.get("info")
    return bool(info.get("readOnly", False)) if isinstance(info, Mapping) else False


def compare_collection_specs(
    src: Mapping[str, Any] | None, dst: Mapping[str, Any] | None
) -> list[SpecDiff]:
    """Compare two ``listCollections`` entries (``None`` = the namespace is absent).

    A type difference is the only finding reported (nothing else is comparable).
    ``info.uuid``, ``name`` and ``idIndex`` are not compared (indexes are compared by
    :func:`compare_index_specs`). Pass options as ``RawBSONDocument`` to keep BSON types
    that Python decoding merges (e.g. symbol vs string).
    """
    if src is None and dst is None:
        return []
    if dst is None:
        return [SpecDiff("exist", None, "missing_on_dst", None)]
    if src is None:
        return [SpecDiff("exist", None, "missing_on_src", None)]
    src_type = src.get("type", "collection")
    dst_type = dst.get("type", "collection")
    if src_type != dst_type:
        return [SpecDiff("type", None, "content", f"Mismatch: src: {src_type}, dst: {dst_type}")]
    out: list[SpecDiff] = []
    src_ro, dst_ro = _read_only(src), _read_only(dst)
    if src_ro != dst_ro:
        out.append(SpecDiff("readOnly", None, "content",
                            f"Mismatch: src: {str(src_ro).lower()}, dst: {str(dst_ro).lower()}"))
    src_options = bson.encode(src.get("options") or {})
    dst_options = bson.encode(dst.get("options") or {})
    for diff in top_level_mismatches(compare_raw_documents(src_options, dst_options, "binary")):
        if diff.kind == "order":
            out.append(SpecDiff("spec", "options (field order only)", "content",
                                mismatch_detail(diff)))
        elif diff.kind in ("missing_on_dst", "missing_on_src") and diff.path == diff.top_field:
            kind: SpecDiffKind = "missing_on_dst" if diff.kind == "missing_on_dst" else "missing_on_src"
            out.append(SpecDiff("spec", f"options.{diff.top_field}", kind, "Missing"))
        else:
            out.append(SpecDiff("spec", f"options.{diff.top_field}", "content",
                                mismatch_detail(diff)))
    return out


# --------------------------------------------------------------------------------------
# Shard keys (reference 6.8; only when both clusters are sharded)
# --------------------------------------------------------------------------------------


def _key_number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(value) if not (isinstance(value, float) and not math.isfinite(value)) else None
    if isinstance(value, Decimal128):
        dec = value.to_decimal()
        return dec if dec.is_finite() else None
    return None


def shard_keys_equal(src: Mapping[str, Any], dst: Mapping[str, Any]) -> bool:
    """The server's ``$eq`` on two key patterns: the same fields in the same order, numbers equal
    by value whatever their type (``{a: 1}`` equals ``{a: 1.0}``), anything else exactly."""
    if list(src.keys()) != list(dst.keys()):
        return False
    for name, a in src.items():
        b = dst[name]
        na, nb = _key_number(a), _key_number(b)
        if na is not None or nb is not None:
            if na != nb:
                return False
        elif a != b or type(a) is not type(b):
            return False
    return True


def compare_shard_keys(src: Mapping[str, Any] | None, dst: Mapping[str, Any] | None) -> SpecDiff | None:
    """Compare a collection's shard key on two sharded clusters (``None``: not sharded there)."""
    if src is None and dst is None:
        return None
    if dst is None:
        return SpecDiff("shard key", None, "missing_on_dst", "Missing")
    if src is None:
        return SpecDiff("shard key", None, "missing_on_src", "Missing")
    if shard_keys_equal(src, dst):
        return None
    return SpecDiff("shard key", None, "content",
                    f"Mismatch: src: {_canonical_key_text(src)}, dst: {_canonical_key_text(dst)}")


def _canonical_key_text(key: Mapping[str, Any]) -> str:
    return json_util.dumps(key, json_options=json_util.CANONICAL_JSON_OPTIONS)
