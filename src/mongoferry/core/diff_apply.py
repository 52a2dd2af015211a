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

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

from mongoferry.core.diff_common import (
    DiffFormatError,
    _clone,
    _mapping,
    _version_number,
)
from mongoferry.core.diff_v1 import apply_v1_update
from mongoferry.core.diff_v2 import apply_v2_diff
from mongoferry.core.update_description import apply_update_description

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


# ---------------------------------------------------------------------------------------------
# Oplog dispatch
# ---------------------------------------------------------------------------------------------



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
