"""DDL in the copy window: which namespaces the replay must copy again, and which events it must
resolve by reading the source.

The copy reads each collection at some moment between the capture start and the end of the copy;
the replay of every event from the capture start puts each copied collection right, as long as the
collection stays the same collection. Three things break that, and this module handles them:

* **A rename while (or before) its source was read.** Documents not read yet under the old name are
  never in the stream (they were inserted before the capture start): the destination under the new
  name would miss them. So a rename `A -> B` at time T is replayed as a rename only when A's copy
  finished before T and no lookup for A read the source after T; otherwise B is copied again, whole,
  from the source as it is now (`recopy`).
* **A rename into the selection.** A was never copied: B is copied whole.
* **Lookups after a rename or drop.** A lookup for A may read the collection that now bears the name,
  or none; a later rename of A then copies its target again (the rule above), a later drop makes it moot.

A drop needs nothing: the destination is dropped too, and a collection created again afterwards is
built from its events. Index builds and collMod are replayed onto what the copy built. After a
re-copy, the target's events up to the re-copy's end are resolved by reading the source, as the copy
window's are (`needs_lookup`).

State lives in the job's metadata (`collections.copiedAt`, and a `recopies` document per re-copy
written before it starts), so a restart that replays the rename again copies again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp

from mongoferry.core.events import ChangeEvent
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.state.meta import MetaStore

log = logging.getLogger("mongoferry.sync")

STREAM_COMPLETE = Timestamp(0, 0)  # created after the capture start: built from its events alone


@dataclass
class CopyWindow:
    meta: MetaStore
    nsmap: NamespaceMap
    copy_end: Timestamp | None  # events up to here may find the destination ahead of them
    copy_namespace: Callable[[str, str], Timestamp]  # (source ns, destination ns) -> time the copy ended
    copied_at: dict[str, Timestamp | None] = field(default_factory=dict)
    lookup_until: dict[str, Timestamp] = field(default_factory=dict)
    last_lookup: dict[str, Timestamp] = field(default_factory=dict)
    recopied: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, meta: MetaStore, nsmap: NamespaceMap, copy_end: Timestamp | None,
             copy_namespace: Callable[[str, str], Timestamp]) -> CopyWindow:
        window = cls(meta, nsmap, copy_end, copy_namespace)
        for doc in meta.load_collections():
            window.copied_at[doc["_id"]] = doc.get("copiedAt")  # None: not known to be complete
        for doc in meta.recopies.all():
            if doc.get("done"):
                window.copied_at[doc["_id"]] = doc["copiedAt"]
                window.lookup_until[doc["_id"]] = doc["copiedAt"]
                window.recopied.append(doc["_id"])
        return window

    # ---------------------------------------------------------------- lookups
    def needs_lookup(self, src_ns: str, ts: Timestamp) -> bool:
        until = self.lookup_until.get(src_ns, self.copy_end)
        return until is not None and ts <= until

    def looked_up(self, src_ns: str, read_at: Timestamp | None) -> None:
        """A lookup read `src_ns` on the source at `read_at` (None: unknown, so: now)."""
        at = read_at or Timestamp(2**31 - 1, 0)
        if at > self.last_lookup.get(src_ns, STREAM_COMPLETE):
            self.last_lookup[src_ns] = at

    # ---------------------------------------------------------------- DDL
    def plan(self, e: ChangeEvent) -> list[str]:
        """Called before `e` is applied to the destination: the source namespaces to copy again
        once it is. Drops reset what is known of a namespace."""
        ddl = e.ddl or {}
        if "renameCollection" in ddl:
            src, to = str(ddl["renameCollection"]), str(ddl["to"])
            redo = self.nsmap.selected(to) and self._needs_recopy(src, to, e.position.ts)
            if self.nsmap.selected(to) and not redo:
                self._inherit(src, to)
            self._forget(src)
            return [to] if redo else []
        if "drop" in ddl:
            self._forget(e.ns)
        elif "dropDatabase" in ddl:
            for ns in [n for n in {*self.copied_at, *self.last_lookup} if n.partition(".")[0] == e.db]:
                self._forget(ns)
        return []

    def _needs_recopy(self, src: str, to: str, ts: Timestamp) -> bool:
        decided = self.meta.recopies.get(to)
        if decided is not None and decided.get("trigger") == ts:  # replayed before a restart: finish it
            return not decided.get("done")
        if not self.nsmap.selected(src):
            return True  # renamed into the selection: never copied
        copied = self.copied_at.get(src, STREAM_COMPLETE)
        if copied is None or copied >= ts:
            return True  # the copy of `src` was not over when it was renamed
        return self.last_lookup.get(src, STREAM_COMPLETE) >= ts  # a lookup read it after the rename

    def _inherit(self, src: str, to: str) -> None:
        """A plain rename: the destination's `to` is what its `src` was."""
        self.copied_at[to] = self.copied_at.get(src, STREAM_COMPLETE)
        if src in self.lookup_until:
            self.lookup_until[to] = max(self.lookup_until[src], self.lookup_until.get(to, STREAM_COMPLETE))

    def _forget(self, ns: str) -> None:
        self.copied_at[ns] = STREAM_COMPLETE  # a new collection of this name is built from its events
        self.last_lookup.pop(ns, None)

    def recopy(self, src_ns: str, trigger: Timestamp) -> None:
        """Copy `src_ns` again, whole, from the source as it is now (after its DDL was applied)."""
        dst_ns = self.nsmap.target(src_ns)
        log.warning("namespace changed by DDL while it was copied: copying it again",
                    extra={"ns": src_ns, "dst": dst_ns, "at": f"{trigger.time}:{trigger.inc}"})
        self.meta.recopies.put(src_ns, {"dst": dst_ns, "trigger": trigger, "done": False})
        ended = self.copy_namespace(src_ns, dst_ns)
        self.copied_at[src_ns] = ended
        self.lookup_until[src_ns] = max(ended, self.lookup_until.get(src_ns, ended))
        self.last_lookup.pop(src_ns, None)
        self.meta.recopies.set(src_ns, copiedAt=ended, done=True)
        if src_ns not in self.recopied:
            self.recopied.append(src_ns)
        log.info("namespace copied again", extra={"ns": src_ns, "dst": dst_ns})

    def status(self) -> dict[str, Any]:
        return {"recopied": list(self.recopied)}
