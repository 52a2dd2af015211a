"""Index options a change event may leave out. MongoDB's createIndexes events carry whole specs;
SecantusDB's leave out `unique`, `expireAfterSeconds` and the like. The source's own listIndexes is
the authority, but a replayed build may find its collection renamed or dropped there since: then
the index is built from the event and remembered. What is remembered follows the renames replayed
after it, and after each batch is compared with the source's listIndexes again, to be built again
on the destination where the options differ."""

from __future__ import annotations

import logging
from typing import Any

from pymongo.errors import PyMongoError

from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import Client
from mongoferry.sinks.mongo import MongoWriter

log = logging.getLogger("mongoferry.sink")


class IndexOptions:
    def __init__(self, src: Client, writer: MongoWriter, nsmap: NamespaceMap) -> None:
        self.src = src
        self.writer = writer
        self.nsmap = nsmap
        self.unsure: dict[str, set[str]] = {}  # source namespace → indexes built from an event alone

    def _listed(self, ns: str) -> dict[str, dict[str, Any]] | None:
        """The source's indexes of `ns` by name; None when it cannot say (no such collection)."""
        db, _, coll = ns.partition(".")
        try:
            listed = {str(ix["name"]): dict(ix) for ix in self.src[db][coll].list_indexes()}
        except PyMongoError:
            return None
        return listed or None  # a collection always has _id_: none listed means none there

    def specs(self, ns: str, ddl: dict[str, Any]) -> dict[str, Any]:
        """A createIndexes with the source's specs where it has them; the others are remembered."""
        listed = self._listed(ns) or {}
        out = []
        for ix in ddl.get("indexes", []):
            spec = listed.get(str(ix.get("name")))
            if spec is None:
                self.unsure.setdefault(ns, set()).add(str(ix.get("name")))
            out.append(spec or ix)
        return {**ddl, "indexes": out}

    def follow(self, ns: str, ddl: dict[str, Any]) -> None:
        """What a replayed DDL command does to the remembered indexes."""
        if not self.unsure:
            return
        if "renameCollection" in ddl:
            old, to = str(ddl["renameCollection"]), str(ddl.get("to", ""))
            names = self.unsure.pop(old, None)
            if ddl.get("dropTarget"):
                self.unsure.pop(to, None)
            if names:
                self.unsure.setdefault(to, set()).update(names)
        elif "drop" in ddl:
            self.unsure.pop(ns, None)
        elif "dropDatabase" in ddl:
            db = ns.partition(".")[0]
            for gone in [n for n in self.unsure if n.partition(".")[0] == db]:
                del self.unsure[gone]
        elif "dropIndexes" in ddl and ns in self.unsure:
            which = ddl.get("index")
            dropped = which if isinstance(which, list) else [which]
            if "*" in dropped:
                dropped = list(self.unsure[ns])
            self.unsure[ns].difference_update(str(n) for n in dropped)

    def settle(self) -> None:
        """After a batch: each remembered index the source lists is given the source's options."""
        for ns, names in list(self.unsure.items()):
            listed = self._listed(ns)
            if listed is None:
                continue  # not there now: a rename or drop to come says where it went
            for name in list(names):
                spec = listed.get(name)
                if spec is not None and self.nsmap.selected(ns):
                    self.writer.replace_index(self.nsmap.target(ns), spec)
                names.discard(name)  # settled, or gone from the source (its drop replays)
            if not names:
                del self.unsure[ns]
