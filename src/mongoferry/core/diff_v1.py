"""`$v: 1` (and pre-3.6) modifier-style update oplog entries: `$set` / `$unset` applied in the
server's path order (oplog-formats reference, section 1.3)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from bson.dbref import DBRef

from mongoferry.core.diff_common import (
    _MAX_UNSIGNED_INT,
    _MAX_V1_PADDING,
    DiffFormatError,
    _clone,
    _is_ascii_digits,
    _mapping,
    _version_number,
)

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
