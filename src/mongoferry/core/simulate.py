"""The pure half of applying changes: what one event makes of a document (no server)."""

from __future__ import annotations

from typing import Any

from mongoferry.core import diff_apply
from mongoferry.core.events import ChangeEvent


def updated_document(doc: dict[str, Any], e: ChangeEvent) -> dict[str, Any] | None:
    """``doc`` after the update event ``e``, or None when that cannot be known exactly here
    (the caller then reads the source's current document)."""
    u = e.update or {}
    if e.update_kind == "oplog":
        diff = u.get("diff")
        if isinstance(diff, dict) and "updatedFields" in diff:
            # SecantusDB writes change-event style descriptions of modifier updates inside its
            # $v:2 entries: replayed as an oplog is (idempotent, onto a possibly later image).
            return diff_apply.apply_update_description(doc, diff.get("updatedFields", {}),
                                                       diff.get("removedFields", []),
                                                       diff.get("truncatedArrays", []), None,
                                                       replaying=True)
        return diff_apply.apply_oplog_update(doc, u)
    if _adds_several_fields_to_one_parent(doc, u.get("updatedFields", {})):
        # Where one update creates several fields in one object, their order in the document is the
        # server's to choose (and some servers list them in another order): read the source.
        return None
    # After the copy window the destination holds exactly the event's pre-image, so existing fields
    # are updated in place: exact for every modifier update. (A pipeline update that moves a field is
    # indistinguishable here; see docs/compatibility.md. diff_apply still refuses the cases it can
    # detect, which then read the source.)
    return diff_apply.apply_update_description(doc, u.get("updatedFields", {}), u.get("removedFields", []),
                                               u.get("truncatedArrays", []), u.get("disambiguatedPaths"),
                                               assume_in_place=True)


def _path_exists(doc: Any, path: str) -> bool:
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _adds_several_fields_to_one_parent(doc: dict[str, Any], updated: dict[str, Any]) -> bool:
    parents: set[str] = set()
    for path in updated:
        parent, _, last = path.rpartition(".")
        if last.isdigit() or _path_exists(doc, path):
            continue
        if parent in parents:
            return True
        parents.add(parent)
    return False
