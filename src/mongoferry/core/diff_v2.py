"""`$v: 2` delta oplog diffs, parsed whole (validated before anything is applied), then applied
as the server's applyDiffToObject / applyDiffToArray do (oplog-formats reference, section 1.2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from bson.binary import Binary

from mongoferry.core.diff_common import (
    _INT32_MAX,
    _MAX_ARRAY_LENGTH,
    DiffFormatError,
    _as_object,
    _clone,
    _is_ascii_digits,
    _is_int,
    _mapping,
)

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
