"""Change-stream `updateDescription` (updatedFields, removedFields, truncatedArrays,
disambiguatedPaths) applied to the pre-image, refusing what cannot be reproduced exactly."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import bson
from bson.dbref import DBRef

from mongoferry.core.diff_common import (
    _MAX_ARRAY_LENGTH,
    DiffFormatError,
    _canonical_index,
    _clone,
    _is_ascii_digits,
    _is_int,
    _mapping,
)

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
    replaying: bool = False,
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

    ``replaying=True`` is for descriptions written in an *oplog* (a server dialect that logs
    ``$v:2`` entries in this form, see docs/compatibility.md): the target may already hold this
    update's result, or later ones (a dump is not a point-in-time image), and replaying must then
    converge, as ``--oplogReplay`` relies on. Such a server logs no entry for an update that changes
    nothing and logs a reordering as a replacement, so every listed field is written in place
    (an identical value included); a removal of an absent field, a truncation of what is not (or
    no longer) that long an array, and a path blocked by a non-container are no-ops; missing
    intermediate objects are created, as the logged ``$set`` did. It never returns None.
    """
    truncations = _parse_truncations(truncated_arrays)
    if disambiguated_paths is not None:
        _check_disambiguated(disambiguated_paths)
    if _keys_overlap(list(updated_fields), list(removed_fields), truncations) and not replaying:
        return None
    resolve = _resolver(disambiguated_paths)
    result: dict[str, Any] = _clone(doc)
    for key in removed_fields:
        if not _remove_at(resolve(result, key)) and not replaying:
            return None
    for key, size in truncations:
        if not _truncate_at(resolve(result, key), size) and not replaying:
            return None
    parents_with_new_fields: set[int] = set()
    for key, value in updated_fields.items():
        if replaying:
            _set_creating(result, key.split("."), value)
            continue
        location = resolve(result, key)
        if not _update_at(location, value, assume_in_place, parents_with_new_fields):
            return None
    return result


def _set_creating(root: dict[str, Any], parts: list[str], value: Any) -> None:
    """``$set`` of one dotted path: missing objects are created, an array index past the end is
    padded with nulls, an existing field is written in place; a scalar in the way leaves all as is."""
    parent: Any = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(parent, list):
            index = _canonical_index(part)
            if index is None or index >= _MAX_ARRAY_LENGTH:
                return
            if index >= len(parent):
                parent.extend([None] * (index - len(parent)))
                parent.append(_clone(value) if last else {})
            elif last:
                parent[index] = _clone(value)
            key: _Component = index
        elif isinstance(parent, dict):
            if last:
                parent[part] = _clone(value)
            elif part not in parent:
                parent[part] = {}
            elif not isinstance(parent[part], dict | list | DBRef):
                return  # a scalar in the way: a later entry of the oplog changed this path
            key = part
        else:
            return
        if not last:
            parent = _child_container(parent, key)
            if parent is None:
                return


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
