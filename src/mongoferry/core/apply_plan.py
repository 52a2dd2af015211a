"""The plan of one group of changes (pure): per document, the state it must end in, and the writes.

The MongoDB sink (`sinks/mongo_apply.Applier`) calls these in order and does the reads between:
1. `by_document`: the group's events per destination document, in order;
2. `reads_needed`: which documents need the destination's current version (an update whose base
   is unknown), and which must be read from the source instead (`lookup`: an update that cannot
   be replayed exactly, or an insert/replace without its document);
   `read_filtered` (a --filter): documents whose match may have changed are read from the source
   too, with the filter, so the server decides whether they belong;
3. `simulate`: each document's final state from its base and its events (diff_apply, as the
   server would), or a lookup when an update cannot be reproduced;
4. `keep_owned` (a split): another part's document is deleted here, never written;
5. `final_writes`: one write per document, in the order of each document's last event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import bson
from bson.raw_bson import RawBSONDocument

from mongoferry.core.doc_filter import Filters, may_change_match
from mongoferry.core.events import ChangeEvent
from mongoferry.core.model import DECODED
from mongoferry.core.simulate import updated_document

Key = tuple[str, bytes]  # (destination namespace, encoded {_id})


def doc_key(dst_ns: str, doc_id: Any) -> Key:
    return dst_ns, bson.encode({"_id": doc_id})


def as_dict(doc: Any) -> dict[str, Any]:
    if isinstance(doc, RawBSONDocument):
        return bson.decode(doc.raw, DECODED)
    return dict(doc)


@dataclass
class DocState:
    src_ns: str
    dst_ns: str
    doc_id: Any
    doc: dict[str, Any] | None = None  # the document as it must end, None = deleted
    lookup: bool = False  # final state comes from reading the source
    last_seq: int = 0
    touched: bool = True  # False: an update of a document that is not there — nothing to write
    events: list[ChangeEvent] = field(default_factory=list)

    @property
    def is_new(self) -> bool:
        """Only inserted in this group: written as an insert (a duplicate becomes a replace)."""
        return len(self.events) == 1 and self.events[0].op == "insert"


class Ownership(Protocol):
    """A split destination's share (core.routing.Rule for one part): which documents it holds."""

    def owns(self, ns: str, doc: Mapping[str, Any]) -> bool: ...
    def key_may_change(self, ns: str, update: Mapping[str, Any] | None) -> bool: ...


def by_document(events: Iterable[ChangeEvent], target: Callable[[str], str],
                seq: int) -> tuple[dict[Key, DocState], int]:
    """Each destination document's events in order; `seq` numbers events across groups."""
    states: dict[Key, DocState] = {}
    for e in events:
        seq += 1
        dst_ns = target(e.ns)
        st = states.setdefault(doc_key(dst_ns, e.doc_id), DocState(e.ns, dst_ns, e.doc_id))
        st.last_seq = seq
        st.events.append(e)
    return states, seq


def reads_needed(states: Mapping[Key, DocState], needs_lookup: Callable[[ChangeEvent], bool]) -> dict[str, set[bytes]]:
    """Mark the documents to read from the source; return those to read from the destination."""
    need_dst: dict[str, set[bytes]] = {}
    for key, st in states.items():
        definite = False
        for e in st.events:
            if e.op in ("insert", "replace", "delete"):
                definite = True
                st.lookup = st.lookup or (e.op != "delete" and e.document is None)
            elif needs_lookup(e):
                st.lookup = True
            elif not definite:
                need_dst.setdefault(st.dst_ns, set()).add(key[1])
    return need_dst


def read_filtered(states: Iterable[DocState], filters: Filters) -> None:
    """In a filtered namespace, an insert, a replace, or an update that may touch a field the
    filter reads is resolved by the source (read with the filter: not found means not here)."""
    if not filters:
        return
    for st in states:
        query = filters.get(st.src_ns)
        if query is None or st.lookup:
            continue
        st.lookup = any(e.op in ("insert", "replace") or (e.op == "update" and may_change_match(query, e.update))
                        for e in st.events)


def simulate(st: DocState, base: dict[str, Any] | None, ownership: Ownership | None = None) -> int:
    """Set the document's final state from its base and events (or mark a lookup); the number of
    updates that found no document (deleted later on the source, or never copied)."""
    doc, missing = base, 0
    for e in st.events:
        if e.op in ("insert", "replace"):
            doc = as_dict(e.document)
        elif e.op == "delete":
            doc = None
        elif e.op == "update":
            if doc is None and ownership is not None and ownership.key_may_change(e.ns, e.update):
                st.lookup = True  # not here, but the update may make it ours: the source decides
                return missing
            if doc is None:
                missing += 1  # a later event (or the lookup of one) decides; an update never creates
                continue
            new = updated_document(doc, e)
            if new is None:
                st.lookup = True
                return missing
            doc = new
    st.doc = doc
    st.touched = base is not None or doc is not None or any(e.op == "delete" for e in st.events)
    return missing


def keep_owned(states: Iterable[DocState], ownership: Ownership) -> None:
    for st in states:
        if st.doc is None or ownership.owns(st.src_ns, st.doc):
            continue
        st.doc = None  # another part's document: not here (deleted if it was here before)
        # Only inserted in this group, and not ours: it was never here, nothing to delete.
        st.touched = not (st.is_new and not st.lookup)


Write = tuple[Literal["delete", "insert", "replace"], Any, dict[str, Any] | None]  # (kind, _id, document)


def final_writes(states: Iterable[DocState], in_transaction: bool) -> dict[str, list[Write]]:
    """One write per document that changed, per destination namespace, in last-event order. A
    document only inserted here is an insert (a duplicate key is recovered from), except in a
    transaction, where any write error aborts it: there every write is an upsert."""
    out: dict[str, list[Write]] = {}
    for st in sorted(states, key=lambda s: s.last_seq):
        if not (st.events or st.lookup) or (not st.touched and not st.lookup):
            continue
        if st.doc is None:
            w: Write = ("delete", st.doc_id, None)
        elif st.is_new and not st.lookup and not in_transaction:
            w = ("insert", st.doc_id, st.doc)
        else:
            w = ("replace", st.doc_id, st.doc)
        out.setdefault(st.dst_ns, []).append(w)
    return out
