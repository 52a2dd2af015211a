"""Apply MongoDB update oplog entries and change-stream update descriptions to a document.

Pure functions: no I/O and no client. Documents are what ``bson.decode`` yields with
``CodecOptions(document_class=dict)``; numeric types are never converted, and results never share
mutable containers with the inputs (inputs are never mutated).

Formats (the oplog-formats reference, sections 1.2-1.4):

* ``$v: 2`` delta entries ``{"$v": 2, "diff": <docDiff>}`` -> :func:`apply_v2_diff`
* ``$v: 1`` (or pre-3.6, no ``$v``) modifier entries ``{"$set": ..., "$unset": ...}`` ->
  :func:`apply_v1_update`
* replacement entries (the whole new document) -> handled by :func:`apply_oplog_update`
* change-stream ``updateDescription`` -> :func:`apply_update_description`
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cmp_to_key
from typing import Any, Literal, TypeAlias

import bson
from bson.binary import Binary
from bson.dbref import DBRef
from bson.decimal128 import Decimal128

__all__ = [
    "DiffFormatError",
    "UpdateKind",
    "apply_oplog_update",
    "apply_update_description",
    "apply_v1_update",
    "apply_v2_diff",
    "classify_update",
]

UpdateKind: TypeAlias = Literal["v2", "v1", "replacement"]


class DiffFormatError(ValueError):
    """An update entry, diff or update description that is malformed (the server would reject it)."""


_INT32_MAX = 2**31 - 1
# No array index at or past this fits in a 16 MiB BSON document; refusing it avoids huge null padding.
_MAX_ARRAY_LENGTH = 16 * 1024 * 1024
# The server's cap on null padding when a $set creates an array element (kMaxPaddingAllowed).
_MAX_V1_PADDING = 1_500_000
_MAX_UNSIGNED_INT = 2**32 - 1


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _clone(value: Any) -> Any:
    """Copy containers so the result shares nothing mutable with the inputs; leaves are immutable."""
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _as_object(value: Any) -> Mapping[str, Any] | None:
    """The value as a BSON object, or None. A DBRef is a plain object on the server."""
    if isinstance(value, DBRef):
        return dict(value.as_doc())
    if isinstance(value, Mapping):
        return value
    return None


def _is_int(value: Any) -> bool:
    """A BSON integer (int32 or Int64), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _canonical_index(text: str) -> int | None:
    """The array index spelled by ``text`` as the server writes it (no sign, no leading zero)."""
    if not _is_ascii_digits(text) or (len(text) > 1 and text[0] == "0"):
        return None
    index = int(text)
    return index if index < _MAX_ARRAY_LENGTH else None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DiffFormatError(f"{where}: expected an object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# $v:2 delta diffs: parsing (the whole diff is validated before anything is applied)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Delete:
    pass


@dataclass(frozen=True, slots=True)
class _Update:
    value: Any


@dataclass(frozen=True, slots=True)
class _Insert:
    value: Any


@dataclass(frozen=True, slots=True)
class _BinaryPatch:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _DocDiff:
    table: Mapping[str, _FieldMod]
    # u entries in u order, then i entries in i order: what may be appended after the walk.
    to_append: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class _ArrayDiff:
    new_size: int | None
    mods: Mapping[int, _ArrayMod]


_FieldMod: TypeAlias = _Delete | _Update | _Insert | _BinaryPatch | _DocDiff | _ArrayDiff
_ArrayMod: TypeAlias = _Update | _DocDiff | _ArrayDiff

_SECTION_RANK = {"d": 1, "u": 2, "i": 3, "b": 4}


def _nonempty_items(diff: Any, where: str) -> list[tuple[str, Any]]:
    items = list(_mapping(diff, where).items())
    if not items:
        raise DiffFormatError(f"{where}: a diff must not be empty")
    return items


def _parse_sub_diff(diff: Any, where: str) -> _DocDiff | _ArrayDiff:
    """A sub-diff is an array diff exactly when its first key is ``a``."""
    items = _nonempty_items(diff, where)
    if items[0][0] == "a":
        return _parse_array_diff(items, where)
    return _parse_doc_items(items, where)


def _parse_doc_diff(diff: Any, where: str) -> _DocDiff:
    items = _nonempty_items(diff, where)
    if items[0][0] == "a":
        raise DiffFormatError(f"{where}: an array diff is not allowed at the top level")
    return _parse_doc_items(items, where)


def _parse_doc_items(items: list[tuple[str, Any]], where: str) -> _DocDiff:
    table: dict[str, _FieldMod] = {}
    updates: list[tuple[str, Any]] = []
    inserts: list[tuple[str, Any]] = []
    last_rank = 0
    for key, value in items:
        if key.startswith("s"):
            # Everything after the single leading 's' is the field name, verbatim (dots included).
            last_rank = len(_SECTION_RANK) + 1
            _add_mod(table, key[1:], _parse_sub_diff(value, f"{where}.{key}"), where)
            continue
        rank = _SECTION_RANK.get(key)
        if rank is None:
            raise DiffFormatError(f"{where}: unexpected key {key!r} in a document diff")
        if last_rank > len(_SECTION_RANK):
            raise DiffFormatError(f"{where}: section {key!r} follows a sub-diff; only s<field> keys may")
        if rank <= last_rank:
            raise DiffFormatError(
                f"{where}: section {key!r} is out of order (sections are d, u, i, b, then s<field>)"
            )
        last_rank = rank
        for field, field_value in _mapping(value, f"{where}.{key}").items():
            mod = _parse_section_entry(key, field, field_value, f"{where}.{key}")
            _add_mod(table, field, mod, where)
            if key == "u":
                updates.append((field, field_value))
            elif key == "i":
                inserts.append((field, field_value))
    return _DocDiff(table=table, to_append=tuple(updates + inserts))


def _parse_section_entry(section: str, field: str, value: Any, where: str) -> _FieldMod:
    if section == "d":
        # The server ignores the value (always false when it writes it).
        return _Delete()
    if section == "u":
        return _Update(value)
    if section == "i":
        return _Insert(value)
    return _parse_binary_patch(value, f"{where}.{field}")


def _parse_binary_patch(value: Any, where: str) -> _BinaryPatch:
    entry = _mapping(value, where)
    if set(entry) != {"o", "d"}:
        raise DiffFormatError(f"{where}: a binary entry must have exactly the keys 'o' and 'd'")
    offset, data = entry["o"], entry["d"]
    if not _is_int(offset) or offset < 0:
        raise DiffFormatError(f"{where}: binary offset 'o' must be a non-negative integer")
    if not isinstance(data, bytes):
        raise DiffFormatError(f"{where}: binary data 'd' must be BinData")
    return _BinaryPatch(offset=int(offset), data=bytes(data))


def _add_mod(table: dict[str, _FieldMod], field: str, mod: _FieldMod, where: str) -> None:
    if field in table:
        raise DiffFormatError(f"{where}: duplicate field name in diff: {field!r}")
    table[field] = mod


def _parse_array_diff(items: list[tuple[str, Any]], where: str) -> _ArrayDiff:
    if items[0][1] is not True:
        raise DiffFormatError(f"{where}: the array header 'a' must be the boolean true")
    rest = items[1:]
    new_size: int | None = None
    if rest and rest[0][0] == "l":
        new_size = _parse_new_size(rest[0][1], where)
        rest = rest[1:]
    mods: dict[int, _ArrayMod] = {}
    previous = -1
    for key, value in rest:
        index = _parse_array_key(key, where)
        if index <= previous:
            raise DiffFormatError(f"{where}: array indexes must be in ascending order, got {key!r}")
        if new_size is not None and index >= new_size:
            raise DiffFormatError(f"{where}: {key!r} is not below the new length l={new_size}")
        previous = index
        where_key = f"{where}.{key}"
        mods[index] = _Update(value) if key[0] == "u" else _parse_sub_diff(value, where_key)
    return _ArrayDiff(new_size=new_size, mods=mods)


def _parse_new_size(value: Any, where: str) -> int:
    # bson decodes int32 as int and int64 as Int64 (an int subclass): only exact int is int32.
    if type(value) is not int or not 0 <= value <= _INT32_MAX:
        raise DiffFormatError(f"{where}: 'l' must be a non-negative int32, got {value!r}")
    if value >= _MAX_ARRAY_LENGTH:
        raise DiffFormatError(f"{where}: 'l'={value} cannot be the length of an array in a document")
    return value


def _parse_array_key(key: str, where: str) -> int:
    if key == "l":
        raise DiffFormatError(f"{where}: 'l' must directly follow 'a' in an array diff")
    digits = key[1:]
    if len(key) < 2 or not _is_ascii_digits(digits):
        raise DiffFormatError(f"{where}: invalid array diff key {key!r} (expected u<N> or s<N>)")
    if key[0] == "d":
        raise DiffFormatError(
            f"{where}: {key!r} is invalid: array elements are never deleted, arrays shrink with 'l'"
        )
    if key[0] not in "us":
        raise DiffFormatError(f"{where}: invalid array diff key {key!r} (expected u<N> or s<N>)")
    index = int(digits)
    if index >= _MAX_ARRAY_LENGTH:
        raise DiffFormatError(f"{where}: index {index} cannot exist in a document")
    return index


# ---------------------------------------------------------------------------------------------
# $v:2 delta diffs: application (mirrors the server's applyDiffToObject / applyDiffToArray)
# ---------------------------------------------------------------------------------------------


def apply_v2_diff(doc: dict[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a ``$v:2`` document diff (the value of ``o.diff``) to ``doc`` as the server does.

    Field order follows the server: ``u`` of an existing field is written in place; a field in ``i``
    is removed from its position and appended, in ``i`` order, after the ``u`` entries for absent
    fields; ``d`` and sub-diffs of absent fields do nothing (no parent is created); a sub-diff whose
    kind does not match the pre-image value writes null in place. Diff keys are never split on '.'.

    The whole diff is validated first; a malformed one raises :class:`DiffFormatError`.
    Returns a new document; ``doc`` and ``diff`` are not modified.
    """
    return _apply_doc(doc, _parse_doc_diff(diff, "diff"))


def _apply_doc(pre: Mapping[str, Any], diff: _DocDiff) -> dict[str, Any]:
    out: dict[str, Any] = {}
    written_in_place: set[str] = set()
    for name, value in pre.items():
        mod = diff.table.get(name)
        if mod is None:
            out[name] = _clone(value)
        elif isinstance(mod, _Update):
            out[name] = _clone(mod.value)
            written_in_place.add(name)
        elif isinstance(mod, _BinaryPatch):
            out[name] = _apply_binary(value, mod)
        elif isinstance(mod, _DocDiff | _ArrayDiff):
            out[name] = _apply_sub_diff(value, mod)
        # _Delete drops the field; _Insert drops it here and re-adds it below.
    for name, value in diff.to_append:
        if name not in written_in_place:
            out[name] = _clone(value)
    return out


def _apply_sub_diff(value: Any, diff: _DocDiff | _ArrayDiff) -> Any:
    """Recurse when the kinds match; otherwise null, which a later entry is expected to overwrite."""
    if isinstance(diff, _DocDiff):
        obj = _as_object(value)
        return None if obj is None else _apply_doc(obj, diff)
    return _apply_array(value, diff) if isinstance(value, list) else None


def _apply_array(pre: list[Any], diff: _ArrayDiff) -> list[Any]:
    size = diff.new_size
    kept = len(pre) if size is None else min(len(pre), size)
    out = [_apply_array_mod(pre[i], diff.mods[i]) if i in diff.mods else _clone(pre[i]) for i in range(kept)]
    # Past the pre-image: u<N> appends, s<N> has nothing to diff (null), gaps are null padding.
    end = max(kept, size or 0, max(diff.mods, default=-1) + 1)
    for index in range(kept, end):
        mod = diff.mods.get(index)
        out.append(_clone(mod.value) if isinstance(mod, _Update) else None)
    return out


def _apply_array_mod(element: Any, mod: _ArrayMod) -> Any:
    if isinstance(mod, _Update):
        return _clone(mod.value)
    return _apply_sub_diff(element, mod)


def _apply_binary(value: Any, patch: _BinaryPatch) -> Any:
    """``old[:o] + d``, keeping the old subtype; an offset past the end is a no-op (idempotency)."""
    if not isinstance(value, bytes):
        return None  # type mismatch, like a sub-diff on the wrong kind of value
    old = bytes(value)
    if patch.offset > len(old):
        return value
    new = old[: patch.offset] + patch.data
    # Subtype 0 decodes as plain bytes; every other subtype as Binary.
    return Binary(new, value.subtype) if isinstance(value, Binary) else new


# ---------------------------------------------------------------------------------------------
# $v:1 modifier updates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _V1Op:
    parts: tuple[str, ...]
    unset: bool
    value: Any


def apply_v1_update(
    doc: dict[str, Any], o: Mapping[str, Any], *, legacy_field_order: bool = False
) -> dict[str, Any]:
    """Apply a modifier-style entry ``{$v: 1?, $set: {...}, $unset: {...}}`` with oplog leniency.

    Paths are applied in the order the server's update system walks them: one tree of path
    components, each level sorted lexicographically except that two numeric components compare
    numerically (5.0+: ``"a.2"`` before ``"a.10"``). ``legacy_field_order=True`` sorts every level
    as plain strings, like servers up to 4.4. That order decides where new fields of one parent land.

    ``$set`` writes existing values in place, creates missing intermediate objects, appends new
    fields to their parent and pads arrays with null up to a numeric component past the end. A path
    that cannot be created (through a scalar, or a field name on an array) is a no-op. ``$unset``
    removes an object field, writes null into an array element, and ignores a missing path.

    Raises :class:`DiffFormatError` for operators other than $set/$unset, invalid or conflicting
    paths (one a prefix of another), or padding beyond the server's limit. ``doc`` is not modified.
    """
    result: dict[str, Any] = _clone(doc)
    for op in _parse_v1(o, legacy_field_order):
        _apply_v1_op(result, op)
    return result


def _parse_v1(o: Mapping[str, Any], legacy_field_order: bool) -> list[_V1Op]:
    ops: list[_V1Op] = []
    for key, value in o.items():
        if key == "$v":
            if _version_number(value) != 1:
                raise DiffFormatError(f"$v must be 1 in a modifier update, got {value!r}")
        elif key in ("$set", "$unset"):
            for path, path_value in _mapping(value, key).items():
                ops.append(_V1Op(_split_v1_path(path), key == "$unset", path_value))
        else:
            raise DiffFormatError(f"unsupported key {key!r} in a $v:1 update (only $set and $unset)")
    compare = _compare_strings if legacy_field_order else _compare_components
    ops.sort(key=cmp_to_key(_path_comparator(compare)))
    _check_v1_conflicts(ops)
    return ops


def _split_v1_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if any(part == "" for part in parts):
        raise DiffFormatError(f"invalid update path {path!r}: empty field name")
    if any(part == "$" or (part.startswith("$[") and part.endswith("]")) for part in parts):
        raise DiffFormatError(f"invalid update path {path!r}: positional operators cannot be replayed")
    return parts


def _check_v1_conflicts(ops: list[_V1Op]) -> None:
    # After sorting, a path that is a prefix of another sorts right before it or its siblings.
    for before, after in itertools.pairwise(ops):
        if after.parts[: len(before.parts)] == before.parts:
            raise DiffFormatError(
                f"conflicting update paths {'.'.join(before.parts)!r} and {'.'.join(after.parts)!r}"
            )


def _compare_strings(a: str, b: str) -> int:
    return (a > b) - (a < b)


def _compare_components(a: str, b: str) -> int:
    """The server's cmpPathsAndArrayIndexes: numbers (no leading zero) by magnitude, else strings."""
    if _numeric_like(a) and _numeric_like(b) and len(a) != len(b):
        return -1 if len(a) < len(b) else 1
    return _compare_strings(a, b)


def _numeric_like(text: str) -> bool:
    return text[:1].isascii() and text[:1].isdigit() and not (text[0] == "0" and len(text) > 1)


def _path_comparator(
    compare: Callable[[str, str], int],
) -> Callable[[_V1Op, _V1Op], int]:
    def compare_ops(x: _V1Op, y: _V1Op) -> int:
        for a, b in zip(x.parts, y.parts, strict=False):
            result = compare(a, b)
            if result:
                return result
        return len(x.parts) - len(y.parts)

    return compare_ops


def _apply_v1_op(root: dict[str, Any], op: _V1Op) -> None:
    parent: Any = root
    for depth, part in enumerate(op.parts):
        found, child = _v1_lookup(parent, part)
        if not found:
            if not op.unset:
                _v1_create(parent, op.parts[depth:], op.value)
            return
        if depth == len(op.parts) - 1:
            _v1_write(parent, part, op)
            return
        parent = _descend(parent, part, child)


def _v1_lookup(parent: Any, part: str) -> tuple[bool, Any]:
    if isinstance(parent, dict):
        return (part in parent), parent.get(part)
    if isinstance(parent, list):
        index = _v1_index(part)
        if index is not None and index < len(parent):
            return True, parent[index]
    return False, None


def _v1_index(part: str) -> int | None:
    """The server's parseUnsignedBase10Integer: decimal digits only (leading zeros allowed)."""
    if not _is_ascii_digits(part):
        return None
    index = int(part)
    return index if index <= _MAX_UNSIGNED_INT else None


def _descend(parent: Any, part: str, child: Any) -> Any:
    """Step into ``child``; a DBRef becomes a plain object so it can be edited like one."""
    if not isinstance(child, DBRef):
        return child
    converted = dict(child.as_doc())
    if isinstance(parent, dict):
        parent[part] = converted
    else:
        parent[int(part)] = converted
    return converted


def _v1_write(parent: Any, part: str, op: _V1Op) -> None:
    if isinstance(parent, dict):
        if op.unset:
            del parent[part]
        else:
            parent[part] = _clone(op.value)
        return
    # An array element: $unset writes null so the array keeps its length.
    parent[int(part)] = None if op.unset else _clone(op.value)


def _v1_create(parent: Any, rest: tuple[str, ...], value: Any) -> None:
    node = _clone(value)
    for part in reversed(rest[1:]):
        node = {part: node}
    head = rest[0]
    if isinstance(parent, dict):
        parent[head] = node
        return
    index = _v1_index(head) if isinstance(parent, list) else None
    if index is None:
        return  # not viable (a scalar, or a field name on an array): a no-op in oplog application
    assert isinstance(parent, list)
    padding = index - len(parent)
    if padding > _MAX_V1_PADDING:
        raise DiffFormatError(f"$set of index {index} would pad an array with {padding} nulls")
    parent.extend([None] * padding)
    parent.append(node)


# ---------------------------------------------------------------------------------------------
# Oplog dispatch
# ---------------------------------------------------------------------------------------------


def _version_number(value: Any) -> int:
    """The integral value of ``$v``; anything else (bool, string, 1.5...) is an error."""
    number: Decimal | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, Decimal128):
        number = value.to_decimal()
    if number is None or not number.is_finite() or number not in (1, 2):
        raise DiffFormatError(f"unsupported update oplog version $v={value!r}")
    return int(number)


def classify_update(o: Mapping[str, Any]) -> UpdateKind:
    """Tell the kinds of ``op:'u'`` entries apart with the server's rule (extractUpdateType).

    ``$v`` present: 2 is a delta, 1 is modifier style, anything else raises
    :class:`DiffFormatError`. ``$v`` absent: modifier style when the first field name starts with
    ``$`` (pre-3.6 entries), otherwise a replacement.
    """
    if "$v" in o:
        return "v2" if _version_number(o["$v"]) == 2 else "v1"
    first = next(iter(o), None)
    if first is not None and first.startswith("$"):
        return "v1"
    return "replacement"


def apply_oplog_update(
    doc: dict[str, Any], o: Mapping[str, Any], *, legacy_field_order: bool = False
) -> dict[str, Any]:
    """Apply the ``o`` of an ``op:'u'`` oplog entry to the target document ``doc``.

    Dispatches on :func:`classify_update`. A replacement keeps the target's ``_id`` as the first
    field followed by the other fields of ``o`` in order. ``legacy_field_order`` is passed to
    :func:`apply_v1_update`. Raises :class:`DiffFormatError` on malformed entries.
    """
    kind = classify_update(o)
    if kind == "v2":
        if set(o) != {"$v", "diff"}:
            raise DiffFormatError("a $v:2 update must have exactly the fields '$v' and 'diff'")
        return apply_v2_diff(doc, _mapping(o["diff"], "diff"))
    if kind == "v1":
        return apply_v1_update(doc, o, legacy_field_order=legacy_field_order)
    return _replace(doc, o)


def _replace(doc: Mapping[str, Any], replacement: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "_id" in doc:
        out["_id"] = _clone(doc["_id"])
    elif "_id" in replacement:
        out["_id"] = _clone(replacement["_id"])
    for name, value in replacement.items():
        if name != "_id":
            out[name] = _clone(value)
    return out


# ---------------------------------------------------------------------------------------------
# Change-stream updateDescription
# ---------------------------------------------------------------------------------------------

_Component: TypeAlias = str | int
_Location: TypeAlias = tuple[dict[str, Any] | list[Any], str | int]


def apply_update_description(
    doc: dict[str, Any],
    updated_fields: Mapping[str, Any],
    removed_fields: Sequence[str],
    truncated_arrays: Sequence[Mapping[str, Any]],
    disambiguated_paths: Mapping[str, Sequence[str | int]] | None = None,
    *,
    assume_in_place: bool = False,
) -> dict[str, Any] | None:
    """Apply a change-stream ``updateDescription`` to ``doc``, or return None if that is unsafe.

    ``doc`` must be the pre-image. Removals are applied first, then truncations, then updates in
    ``updatedFields`` order. A description cannot say whether an existing field was replaced in
    place (diff ``u``) or re-inserted at the end (diff ``i``, written by 5.0+ pipeline updates that
    reorder fields), so by default such an update is refused; ``assume_in_place=True`` writes it in
    place, which is exact for modifier updates ($set, $inc, ...) and for pre-5.0 sources.

    Path resolution: a key listed in ``disambiguated_paths`` uses its components (int = array index,
    str = field name). When ``disambiguated_paths`` is given (6.1+, showExpandedEvents) an unlisted
    key has no dotted or numeric field names, so it is split on '.' and its numeric components are
    array indexes. When it is None, keys are split on '.' and a numeric component indexes a list
    parent or names a field of an object parent. A brand-new field whose own name contains '.'
    cannot be told apart from a nested path then; it is applied as nested.

    Returns None (the caller should re-read the document) when:

    * a path cannot be followed: an intermediate component is missing, an index is past the end of
      an intermediate array, or a value on the way is not the object/array its component needs
      (an int component needs an array, a str component an object, a component on an array must be
      a canonical decimal index);
    * ``disambiguated_paths`` is None and an object on the way has a dotted field name that matches
      the rest of the path (the key is ambiguous);
    * two keys overlap (equal, or one is a prefix of another), except keys inside a truncated
      array, and those must address an index below its ``newSize``;
    * a removed field is absent, or a removed array index is out of range (an array element is
      set to null, as a ``$v:1`` $unset does);
    * a truncated path is not an array, or ``newSize`` is larger than the array;
    * an updated field already exists in its object and ``assume_in_place`` is False; with
      ``assume_in_place`` True, also when its new value is byte-identical to the old one or it
      follows a new field of the same object in ``updatedFields`` (both mean the server re-inserted
      it at the end).

    A new object field is appended after the existing ones, in ``updatedFields`` order; an array
    index is written in place, or appended after null padding when past the end. Raises
    :class:`DiffFormatError` when the description itself is malformed. ``doc`` is not modified.
    """
    truncations = _parse_truncations(truncated_arrays)
    if disambiguated_paths is not None:
        _check_disambiguated(disambiguated_paths)
    if _keys_overlap(list(updated_fields), list(removed_fields), truncations):
        return None
    resolve = _resolver(disambiguated_paths)
    result: dict[str, Any] = _clone(doc)
    for key in removed_fields:
        if not _remove_at(resolve(result, key)):
            return None
    for key, size in truncations:
        if not _truncate_at(resolve(result, key), size):
            return None
    parents_with_new_fields: set[int] = set()
    for key, value in updated_fields.items():
        location = resolve(result, key)
        if not _update_at(location, value, assume_in_place, parents_with_new_fields):
            return None
    return result


def _parse_truncations(truncated_arrays: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    parsed: list[tuple[str, int]] = []
    for entry in truncated_arrays:
        fields = _mapping(entry, "truncatedArrays")
        field, size = fields.get("field"), fields.get("newSize")
        if not isinstance(field, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DiffFormatError(f"truncatedArrays entries need a string field and newSize >= 0: {entry!r}")
        parsed.append((field, int(size)))
    return parsed


def _check_disambiguated(paths: Mapping[str, Sequence[str | int]]) -> None:
    for key, components in paths.items():
        if isinstance(components, str | bytes) or not isinstance(components, Sequence) or not components:
            raise DiffFormatError(f"disambiguatedPaths[{key!r}] must be a non-empty list")
        for component in components:
            if not isinstance(component, str) and not (_is_int(component) and component >= 0):
                raise DiffFormatError(f"disambiguatedPaths[{key!r}] has an invalid component {component!r}")
        if ".".join(str(c) for c in components) != key:
            raise DiffFormatError(f"disambiguatedPaths[{key!r}] does not spell its key: {components!r}")


def _keys_overlap(updated: list[str], removed: list[str], truncations: list[tuple[str, int]]) -> bool:
    sizes = dict(truncations)
    keys = [(k, False) for k in updated + removed] + [(k, True) for k, _ in truncations]
    for i, (first, first_truncated) in enumerate(keys):
        for second, second_truncated in keys[i + 1 :]:
            if first == second:
                return True
            for outer, outer_truncated, inner in (
                (first, first_truncated, second),
                (second, second_truncated, first),
            ):
                if inner.startswith(outer + ".") and not (
                    outer_truncated and _below_size(inner[len(outer) + 1 :], sizes[outer])
                ):
                    return True
    return False


def _below_size(rest: str, size: int) -> bool:
    index = _canonical_index(rest.split(".", 1)[0])
    return index is not None and index < size


_Resolver: TypeAlias = Callable[[dict[str, Any], str], _Location | None]


def _resolver(paths: Mapping[str, Sequence[str | int]] | None) -> _Resolver:
    def resolve(root: dict[str, Any], key: str) -> _Location | None:
        if paths is None:
            return _walk_dotted(root, key.split("."))
        components = list(paths[key]) if key in paths else _unlisted_components(key)
        return None if components is None else _walk_components(root, components)

    return resolve


def _unlisted_components(key: str) -> list[_Component] | None:
    """Split a key the server did not disambiguate: numeric parts are array indexes."""
    components: list[_Component] = []
    for part in key.split("."):
        if _is_ascii_digits(part):
            index = _canonical_index(part)
            if index is None:
                return None
            components.append(index)
        else:
            components.append(part)
    return components


def _walk_components(root: dict[str, Any], components: list[_Component]) -> _Location | None:
    parent: Any = root
    for component in components[:-1]:
        parent = _child_container(parent, component)
        if parent is None:
            return None
    last = components[-1]
    if isinstance(last, int) and isinstance(parent, list) and last < _MAX_ARRAY_LENGTH:
        return parent, last
    if isinstance(last, str) and isinstance(parent, dict):
        return parent, last
    return None


def _walk_dotted(root: dict[str, Any], parts: list[str]) -> _Location | None:
    parent: Any = root
    for depth, part in enumerate(parts):
        component: _Component
        if isinstance(parent, list):
            index = _canonical_index(part)
            if index is None:
                return None
            component = index
        elif isinstance(parent, dict):
            if _has_dotted_match(parent, parts[depth:]):
                return None
            component = part
        else:
            return None
        if depth == len(parts) - 1:
            return parent, component
        parent = _child_container(parent, component)
    return None  # unreachable: str.split never returns an empty list


def _has_dotted_match(obj: Mapping[str, Any], rest: list[str]) -> bool:
    """Whether a dotted field name of ``obj`` could be the next component(s) of the path."""
    for name in obj:
        if "." in name:
            name_parts = name.split(".")
            if rest[: len(name_parts)] == name_parts:
                return True
    return False


def _child_container(parent: Any, component: _Component) -> dict[str, Any] | list[Any] | None:
    """The object or array at ``component`` of ``parent`` (a DBRef is edited as a plain object)."""
    child: Any
    if isinstance(component, int):
        if not isinstance(parent, list) or component >= len(parent):
            return None
        child = parent[component]
    else:
        if not isinstance(parent, dict) or component not in parent:
            return None
        child = parent[component]
    if isinstance(child, DBRef):
        child = dict(child.as_doc())
        parent[component] = child
    return child if isinstance(child, dict | list) else None


def _remove_at(location: _Location | None) -> bool:
    if location is None:
        return False
    parent, last = location
    if isinstance(parent, dict):
        if last not in parent:
            return False
        del parent[str(last)]
        return True
    assert isinstance(last, int)
    if last >= len(parent):
        return False
    parent[last] = None
    return True


def _truncate_at(location: _Location | None, size: int) -> bool:
    if location is None:
        return False
    parent, last = location
    if isinstance(parent, dict):
        target = parent.get(str(last))
    else:
        assert isinstance(last, int)
        target = parent[last] if last < len(parent) else None
    if not isinstance(target, list) or size > len(target):
        return False
    del target[size:]
    return True


def _update_at(
    location: _Location | None, value: Any, assume_in_place: bool, parents_with_new_fields: set[int]
) -> bool:
    if location is None:
        return False
    parent, last = location
    if isinstance(parent, list):
        assert isinstance(last, int)
        if last < len(parent):
            parent[last] = _clone(value)
        else:
            parent.extend([None] * (last - len(parent)))
            parent.append(_clone(value))
        return True
    name = str(last)
    if name not in parent:
        parent[name] = _clone(value)
        parents_with_new_fields.add(id(parent))
        return True
    if not assume_in_place or id(parent) in parents_with_new_fields:
        return False
    if _same_bson(parent[name], value):
        return False
    parent[name] = _clone(value)
    return True


def _same_bson(a: Any, b: Any) -> bool:
    return bson.encode({"v": a}) == bson.encode({"v": b})
