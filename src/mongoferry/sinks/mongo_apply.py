"""Applying captured changes to a MongoDB destination: idempotent, at-least-once.

For each run of non-transaction events (and for each transaction on its own):
1. every event's namespace is mapped (include/exclude/rename); the rest are ignored;
2. the documents touched are simulated in memory, in event order: inserts and
   replacements set the document, deletes remove it, updates are applied to the
   destination's current document exactly as the server would (diff_apply);
3. where an update cannot be reproduced exactly (a change event's description
   is ambiguous, or the event falls in the copy window where the destination may
   already be ahead), the source's current document is read instead ("lookup");
   the batch's other events for that document are then not replayed (the read holds them);
4. one final write per document (replace-upsert or delete), in the order of each
   document's last event; a transaction's writes go in one destination transaction.
Replaying any event twice leaves the same result.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import bson
from bson import Timestamp
from pymongo import DeleteOne, InsertOne, ReplaceOne
from pymongo.client_session import ClientSession
from pymongo.errors import PyMongoError

from mongoferry.core import apply_plan as plan
from mongoferry.core.apply_plan import DocState, Key, Ownership
from mongoferry.core.doc_filter import and_filter
from mongoferry.core.errors import InconsistencyError
from mongoferry.core.events import Batch, ChangeEvent, Position
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import DECODED, Client
from mongoferry.sinks.base import SinkStats
from mongoferry.sinks.index_options import IndexOptions
from mongoferry.sinks.mongo import MongoWriter

log = logging.getLogger("mongoferry.apply")

MAX_GROUP_EVENTS = 1000  # bounds one destination transaction


@dataclass
class ApplyStats(SinkStats):
    lookups: int = 0
    missing_for_update: int = 0


class CopyWindowHooks(Protocol):
    """What a sync's replay knows of its copy (pipeline.copy_window): which events may find the
    destination ahead of them, and which DDL needs a namespace copied again."""

    def needs_lookup(self, src_ns: str, ts: Timestamp) -> bool: ...
    def looked_up(self, src_ns: str, read_at: Timestamp | None) -> None: ...
    def plan(self, e: ChangeEvent) -> list[str]: ...
    def recopy(self, src_ns: str, trigger: Timestamp) -> None: ...


class Applier:
    """The MongoDB sink: applies batches of events to one destination, idempotently."""

    def __init__(self, src: Client | None, dst: Client, nsmap: NamespaceMap, *, name: str = "dst",
                 window: CopyWindowHooks | None = None, use_transactions: bool = True,
                 ownership: Ownership | None = None) -> None:
        self.name = name
        self.src = src  # None: no source to read (oplog files); an irreproducible update is an error
        self.dst = dst
        self.nsmap = nsmap
        self.writer = MongoWriter(dst)
        self.index_options = IndexOptions(src, self.writer, nsmap) if src is not None else None
        # A sync's copy window: events that may find the destination ahead of them (the copy read
        # later state) are resolved by reading the source, and DDL may need a namespace copied again.
        self.window = window
        self.use_transactions = use_transactions
        # A split: each document's final state is written where it is owned and deleted elsewhere,
        # so an update that changes the key moves the document (deleted here, upserted there).
        self.ownership = ownership
        self.stats = ApplyStats()
        self._seq = 0

    # ------------------------------------------------------------------ the sink
    def apply(self, batch: Batch) -> None:
        self.apply_units(batch.units)
        if self.index_options is not None and self.index_options.unsure:
            self.index_options.settle()

    def applied(self, handed: Position | None) -> Position | None:
        return handed  # synchronous: everything handed over is written when apply returns

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ entry point
    def apply_units(self, units: list[list[ChangeEvent]]) -> None:
        """Apply units in order. Consecutive units of the same kind form one group, written together:
        consecutive source transactions share one destination transaction (each stays all-or-nothing),
        other writes go outside transactions (capped collections, for one, refuse them)."""
        group: list[ChangeEvent] = []
        has_txn = False
        for unit in units:
            events = [e for e in unit if self._wanted(e)]
            for ddl in [e for e in events if e.op == "ddl"]:
                # DDL is not transactional: write what came before it, then run it.
                self._flush(group, has_txn)
                group, has_txn = [], False
                self._apply_ddl(ddl)
            crud = [e for e in events if e.op != "ddl"]
            if not crud:
                continue
            is_txn = len(unit) > 1 or unit[0].txn is not None
            if group and is_txn != has_txn:
                self._flush(group, has_txn)
                group = []
            has_txn = is_txn
            if is_txn:
                self.stats.events["txn"] += 1
            group.extend(crud)
            if len(group) >= MAX_GROUP_EVENTS:
                self._flush(group, has_txn)
                group, has_txn = [], False
        self._flush(group, has_txn)

    def _wanted(self, e: ChangeEvent) -> bool:
        if e.op == "noop":
            return False
        if e.from_migrate:
            self.stats.events["skipped"] += 1
            return False
        if e.op == "ddl" and e.ns.endswith(".$cmd"):
            return self.nsmap.db_selected(e.db)
        if e.op == "ddl" and e.ddl and "renameCollection" in e.ddl:
            return self.nsmap.selected(e.ns) or self.nsmap.selected(str(e.ddl.get("to", "")))
        return self.nsmap.selected(e.ns)

    def _flush(self, events: list[ChangeEvent], transactional: bool) -> None:
        if not events:
            return
        if transactional and self.use_transactions:
            self._in_transaction(events)
        else:
            self._apply_crud(events, session=None)

    # ------------------------------------------------------------------ documents
    def _apply_crud(self, events: list[ChangeEvent], session: ClientSession | None) -> None:
        """The plan (core/apply_plan), with the reads it needs: the destination's current documents,
        and the source's where an update cannot be replayed exactly."""
        for e in events:
            self.stats.events[e.op] += 1
        states, self._seq = plan.by_document(events, self.nsmap.target, self._seq)
        need_dst = plan.reads_needed(states, self._needs_lookup)
        plan.read_filtered(states.values(), self.nsmap.filters)
        current = self._read_destination(need_dst, session)
        for key, st in states.items():
            if not st.lookup:
                self.stats.missing_for_update += plan.simulate(st, current.get(key), self.ownership)
        self._resolve_lookups(states)
        if self.ownership is not None:
            plan.keep_owned(states.values(), self.ownership)
        self._write(plan.final_writes(states.values(), in_transaction=session is not None), session)

    def _needs_lookup(self, e: ChangeEvent) -> bool:
        if e.update_kind == "oplog":
            return False  # real oplog diffs are idempotent by design (initial sync relies on it)
        return self.window is not None and self.window.needs_lookup(e.ns, e.position.ts)

    def _read_destination(self, need: dict[str, set[bytes]], session: ClientSession | None) -> dict[Key, Any]:
        found: dict[Key, Any] = {}
        for dst_ns, encoded_ids in need.items():
            db, _, coll = dst_ns.partition(".")
            ids = [bson.decode(b)["_id"] for b in encoded_ids]
            for doc in self.dst[db].get_collection(coll, codec_options=DECODED).find(
                    {"_id": {"$in": ids}}, session=session):
                found[plan.doc_key(dst_ns, doc["_id"])] = doc
        return found

    def _resolve_lookups(self, states: dict[Key, DocState]) -> None:
        by_ns: dict[tuple[str, str], list[DocState]] = {}
        for st in states.values():
            if st.lookup:
                by_ns.setdefault((st.src_ns, st.dst_ns), []).append(st)
        if by_ns and self.src is None:
            st = next(iter(by_ns.values()))[0]
            raise InconsistencyError(
                f"cannot reproduce an update of {st.src_ns} _id {st.doc_id!r} exactly, and there is no source "
                "to read the document from", "report the oplog entry; replay it with `mongoferry sync` instead")
        for (src_ns, dst_ns), group in by_ns.items():
            assert self.src is not None
            db, _, coll = src_ns.partition(".")
            with self.src.start_session(causal_consistency=True) as s:
                # With a --filter, a document that no longer matches is not found: deleted here.
                query = and_filter({"_id": {"$in": [g.doc_id for g in group]}}, self.nsmap.filter_of(src_ns))
                docs = {plan.doc_key(dst_ns, d["_id"]): d for d in self.src[db].get_collection(
                    coll, codec_options=DECODED).find(query, session=s)}
                if self.window is not None:  # what it read may be another collection of that name
                    self.window.looked_up(src_ns, s.operation_time)
            self.stats.lookups += len(group)
            for st in group:
                # The source's current document already holds this batch's events for it; later events
                # are replayed onto it, which converges (no "already read" watermark: a read's
                # operationTime can pass a concurrent write it did not see).
                st.doc = docs.get(plan.doc_key(dst_ns, st.doc_id))

    def _write(self, writes: dict[str, list[plan.Write]], session: ClientSession | None) -> None:
        for dst_ns, group in writes.items():
            ops: list[Any] = []
            for kind, doc_id, doc in group:
                if kind == "delete":
                    ops.append(DeleteOne({"_id": doc_id}))
                elif kind == "insert":
                    ops.append(InsertOne(doc))
                else:
                    ops.append(ReplaceOne({"_id": doc_id}, doc, upsert=True))
            self.writer.bulk(dst_ns, ops, session=session)

    # ------------------------------------------------------------------ transactions
    def _in_transaction(self, crud: list[ChangeEvent], attempts: int = 20) -> None:
        """All of one source transaction in one destination transaction, retried on transient errors."""
        for attempt in range(attempts):
            with self.dst.start_session() as session:
                try:
                    session.start_transaction()
                    self._apply_crud(crud, session=session)
                    session.commit_transaction()
                    return
                except PyMongoError as exc:
                    if session.in_transaction:
                        with contextlib.suppress(PyMongoError):
                            session.abort_transaction()
                    if not exc.has_error_label("TransientTransactionError") or attempt == attempts - 1:
                        raise
                    log.warning("destination transaction conflict, retrying",
                                extra={"attempt": attempt + 1, "error": str(exc)[:200]})
                    time.sleep(min(0.05 * 2**attempt, 2.0))

    # ------------------------------------------------------------------ DDL
    def _refuse_filtered_rename(self, old: str, new: str) -> None:
        """A --filter belongs to a source name: the renamed collection would be followed unfiltered
        from a filtered copy, so it would silently miss documents. Stop, nothing written for it."""
        for ns in (old, new):
            if self.nsmap.filter_of(ns) is not None:
                raise InconsistencyError(
                    f"{old} was renamed to {new} on the source, and --filter applies to {ns}: the renamed "
                    "collection cannot be followed with the same filter",
                    "start a new job with --filter for the new name; nothing of the rename was written")
    def _apply_ddl(self, e: ChangeEvent) -> None:
        ddl = e.ddl or {}
        if "renameCollection" in ddl:
            self._refuse_filtered_rename(str(ddl["renameCollection"]), str(ddl.get("to", "")))
        if "createIndexes" in ddl and self.index_options is not None:
            ddl = self.index_options.specs(e.ns, ddl)
        elif self.index_options is not None:
            self.index_options.follow(e.ns, ddl)
        redo = self.window.plan(e) if self.window is not None else []
        handled = self.writer.apply_ddl(e.ns, ddl, self.nsmap)
        for ns in redo:
            assert self.window is not None
            self.window.recopy(ns, e.position.ts)
            handled = True
        self.stats.events["ddl" if handled else "skipped"] += 1
        if not handled and "renameCollection" in ddl:
            log.error("collection renamed into the selection: its documents were never copied; resync it",
                      extra={"from": ddl["renameCollection"], "to": ddl.get("to")})
        elif not handled:
            log.warning("DDL not replicated", extra={"ns": e.ns, "command": next(iter(ddl), "?")})
