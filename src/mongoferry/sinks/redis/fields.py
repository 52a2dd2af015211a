"""Which fields an update changed, as OTR lists them in a message's ``fields`` (shallow names, or
dotted paths with ``--deep-fields``), from oplog entries ($v:1, $v:2) and change events."""


from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from bson.dbref import DBRef

from mongoferry.sinks.redis.go_json import _type_name

# --------------------------------------------------------------------------- fields


class _FieldError(Exception):
    """The changed fields cannot be computed at all. Nothing is published."""


def _as_document(value: Any) -> Mapping[str, Any] | None:
    """``value`` as a document, or None.

    Go decodes any embedded document into a map. PyMongo turns ``{$ref, $id}``
    subdocuments into DBRef objects, so this unwraps them back into their keys.
    """
    if isinstance(value, Mapping):
        return value
    if isinstance(value, DBRef):
        doc: Mapping[str, Any] = value.as_doc()
        return doc
    return None


def _bson_number_as_int64(value: Any) -> int | None:
    """Go ``RawValue.AsInt64OK``: int32/int64 as is; a double truncated; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    return None


def _is_v2_update(o: Mapping[str, Any]) -> bool:
    return "$v" in o and _bson_number_as_int64(o["$v"]) == 2 and "diff" in o


def _update_is_replace(o: Mapping[str, Any]) -> bool:
    return "$set" not in o and "$unset" not in o and not _is_v2_update(o)


def _v1_fields(o: Mapping[str, Any], problems: list[str]) -> list[str]:
    fields: list[str] = []
    for key, value in o.items():
        if key == "$v":
            continue
        doc = _as_document(value)
        if doc is None:
            problems.append(f"v1 update key {key!r} is not a document")
            continue
        fields.extend(doc.keys())
    return fields


def _v2_shallow_fields(diff: Mapping[str, Any], problems: list[str]) -> list[str]:
    fields: list[str] = []
    for key, value in diff.items():
        if key in ("i", "u", "d"):
            doc = _as_document(value)
            if doc is None:
                problems.append(f"v2 diff key {key!r} is not a document")
                continue
            fields.extend(doc.keys())
        elif key.startswith("s"):
            fields.append(key[1:])
        elif key == "a" or key.startswith("o"):
            continue
        else:
            problems.append(f"unknown v2 diff key {key!r}")
    return fields


# Go RE2 `^u\d+` is not end-anchored and \d is ASCII-only.
_ARRAY_INDEX_KEY: Final = re.compile(r"u[0-9]")


def _is_array_operator(value: Any) -> bool:
    doc = _as_document(value)
    if not doc or "a" not in doc:
        return False
    return all(k == "a" or _ARRAY_INDEX_KEY.match(k) for k in doc)


def _leaf_items(path: str, value: Any) -> Iterator[tuple[str, Any]]:
    """``(path, value)`` of each leaf below ``value``: non-empty documents (DBRefs too) are
    walked, everything else (arrays, empty documents, scalars) is a leaf."""
    doc = _as_document(value)
    if doc:
        for key, inner in doc.items():
            yield from _leaf_items(f"{path}.{key}", inner)
    else:
        yield path, value


def _flat_keys(prefix: str, obj: Mapping[str, Any]) -> Iterator[str]:
    for key, value in obj.items():
        yield from (path for path, _ in _leaf_items(prefix + key, value))


def _v2_deep_fields(diff: Mapping[str, Any], prefix: str, problems: list[str]) -> list[str]:
    """Port of OTR's ``getChangedFieldsFromOplogV2UpdateDeep`` (itself Meteor's converter).

    Go walks a map, so OTR's order is random. Here it is the diff's order.
    """
    fields: list[str] = []
    for key, value in diff.items():
        if key in ("i", "u", "d"):
            doc = _as_document(value)
            if doc is None:
                problems.append(f"v2 diff key {(prefix + key)!r} is not a document")
                continue
            fields.extend(_flat_keys(prefix, doc))
        elif _is_array_operator(value):
            doc = _as_document(value)
            assert doc is not None
            fields.extend(prefix + key[1:] + "." + k[1:] for k in doc if k != "a")
        elif key.startswith("s"):
            doc = _as_document(value)
            if doc is None:
                problems.append(f"v2 sub-diff {(prefix + key)!r} is not a document")
                continue
            fields.extend(_v2_deep_fields(doc, prefix + key[1:] + ".", problems))
        elif key == "a":
            continue
        else:
            # Covers 'l' (array truncation), deep 'o...' keys, and 'uN' next to 'sN'.
            problems.append(f"unknown v2 diff key {(prefix + key)!r}")
    return fields


def _update_fields(o: Mapping[str, Any], deep_fields: bool, problems: list[str]) -> list[str]:
    """Changed fields of an update's ``o`` (oplog) or ``rawUpdateDescription`` (change stream)."""
    if _update_is_replace(o):
        return list(o.keys())
    if _is_v2_update(o):
        diff = _as_document(o["diff"])
        if diff is None:
            raise _FieldError(f"v2 update diff is a {_type_name(o['diff'])}, not a document")
        if deep_fields:
            return _v2_deep_fields(diff, "", problems)
        return _v2_shallow_fields(diff, problems)
    return _v1_fields(o, problems)


def _description_fields(desc: Mapping[str, Any], deep_fields: bool) -> list[str]:
    """Changed fields from a change event ``updateDescription`` (no raw form available).

    Paths are taken from ``updatedFields`` keys, then ``removedFields``, then the
    ``field`` of each ``truncatedArrays`` entry. In shallow mode each path becomes its
    top-level name (using ``disambiguatedPaths`` when the server sent it, so a field
    named ``"a.b"`` stays whole). Deep mode keeps the dotted paths (for the leaf paths of
    document values, as OTR lists them, pass the event through :func:`flattened_update_fields`
    first). Both keep the order of first appearance, without repeats.
    """
    paths: list[str] = []
    updated = desc.get("updatedFields")
    if isinstance(updated, Mapping):
        paths.extend(str(k) for k in updated)
    removed = desc.get("removedFields")
    if isinstance(removed, list):
        paths.extend(p for p in removed if isinstance(p, str))
    truncated = desc.get("truncatedArrays")
    if isinstance(truncated, list):
        for item in truncated:
            if isinstance(item, Mapping) and isinstance(item.get("field"), str):
                paths.append(item["field"])
    if not deep_fields:
        disambiguated = desc.get("disambiguatedPaths")
        parts = disambiguated if isinstance(disambiguated, Mapping) else {}
        tops: list[str] = []
        for path in paths:
            components = parts.get(path)
            if isinstance(components, list) and components and isinstance(components[0], str):
                tops.append(components[0])
            else:
                tops.append(path.split(".", 1)[0])
        paths = tops
    return list(dict.fromkeys(paths))


def flattened_update_fields(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """For deep mode: ``event`` with the document values in ``updatedFields`` flattened to leaf paths.

    OTR's deep converter walks each new value (``flatKeys``): ``$set {n: {a: {b: 1}}}`` gives
    ``n.a.b``, not ``n``. A change event without ``rawUpdateDescription`` (MongoDB before 6.0,
    or servers that do not offer it) only has ``updatedFields``, so its document values are
    flattened the same way before the fields are read from it. Arrays and empty documents stay.
    Anything else (other event types, a ``rawUpdateDescription``, nothing to flatten) is
    returned as it is; ``event`` itself is never changed.
    """
    desc = event.get("updateDescription")
    if event.get("operationType") != "update" or "rawUpdateDescription" in event or not isinstance(desc, Mapping):
        return event
    updated = desc.get("updatedFields")
    if not isinstance(updated, Mapping) or not any(_as_document(v) for v in updated.values()):
        return event
    flat = {path: leaf for key, value in updated.items() for path, leaf in _leaf_items(str(key), value)}
    return {**event, "updateDescription": {**desc, "updatedFields": flat}}
