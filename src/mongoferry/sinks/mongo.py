"""The MongoDB writer: the only code that writes user data to a destination."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import InsertOne, ReplaceOne
from pymongo.client_session import ClientSession
from pymongo.errors import BulkWriteError, OperationFailure

from mongoferry.core.model import CollectionSpec, clean_index_spec
from mongoferry.core.namespaces import NamespaceMap, split_ns
from mongoferry.infra.clients import RAW, Client

log = logging.getLogger("mongoferry.sink")

NAMESPACE_EXISTS = 48
NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
DUPLICATE_KEY = 11000
INDEX_ALREADY_EXISTS = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict


class MongoWriter:
    def __init__(self, client: Client) -> None:
        self.client = client

    def collection(self, ns: str) -> Any:
        db, coll = split_ns(ns)
        return self.client[db].get_collection(coll, codec_options=RAW)

    # --- catalog ---
    def create(self, dst_ns: str, spec: CollectionSpec, view_on: str | None = None) -> None:
        """Create `dst_ns` with the source's options; an existing collection is kept."""
        db, name = split_ns(dst_ns)
        cmd: dict[str, Any] = {"create": name}
        options = dict(spec.options)
        if view_on is not None:
            options["viewOn"] = view_on
        cmd.update(options)
        try:
            self.client[db].command(cmd)
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS:
                raise

    def drop(self, dst_ns: str) -> None:
        db, name = split_ns(dst_ns)
        self.client[db].drop_collection(name)

    def create_indexes(self, dst_ns: str, specs: Sequence[dict[str, Any]]) -> None:
        """Build these indexes; one that exists already under its name is kept when it has every option
        the spec gives (a replay, or an event that carries fewer options than the index has), and is
        built again with the spec's options when they differ (the source's listIndexes said so)."""
        if not specs:
            return
        db, name = split_ns(dst_ns)
        try:
            self.client[db].command({"createIndexes": name, "indexes": list(specs)})
        except OperationFailure as exc:
            if exc.code not in INDEX_ALREADY_EXISTS:
                raise
            for one in specs:  # some exist already (a resumed build, a replay): the rest one by one
                try:
                    self.client[db].command({"createIndexes": name, "indexes": [one]})
                except OperationFailure as inner:
                    if inner.code not in INDEX_ALREADY_EXISTS:
                        raise
                    self.replace_index(dst_ns, one)

    def index_named(self, dst_ns: str, index: str) -> dict[str, Any] | None:
        db, name = split_ns(dst_ns)
        try:
            listed = list(self.client[db][name].list_indexes())
        except OperationFailure as exc:
            if exc.code != NAMESPACE_NOT_FOUND:
                raise
            return None
        return next((clean_index_spec(dict(ix)) for ix in listed if ix.get("name") == index), None)

    def replace_index(self, dst_ns: str, spec: dict[str, Any]) -> None:
        """Make the destination's index of this name have the spec's options (kept when it has them
        all already; otherwise dropped and built again)."""
        spec = clean_index_spec(spec)
        existing = self.index_named(dst_ns, str(spec.get("name")))
        if existing is not None and has_options(existing, spec):
            return
        db, name = split_ns(dst_ns)
        if existing is not None:
            self._drop_indexes(dst_ns, spec.get("name"))
        self.client[db].command({"createIndexes": name, "indexes": [spec]})
        log.info("index built again with the source's options", extra={"ns": dst_ns, "index": spec.get("name"),
                                                                        "was": str(existing), "now": str(spec)})

    # --- replicated DDL (idempotent: replaying a command that already took effect is a no-op) ---
    def apply_ddl(self, src_ns: str, ddl: dict[str, Any], nsmap: NamespaceMap) -> bool:
        """Apply one DDL command (oplog form) seen on `src_ns`. False: not replicated (caller counts it)."""
        cmd = next(iter(ddl), "")
        db = src_ns.partition(".")[0]
        dst_ns = nsmap.target(src_ns)
        try:
            if cmd == "create":
                options = {k: v for k, v in ddl.items() if k not in ("create", "idIndex")}
                if "viewOn" in options:
                    options["viewOn"] = nsmap.target(f"{db}.{options['viewOn']}").partition(".")[2]
                self.create(dst_ns, CollectionSpec(dst_ns, "view" if "viewOn" in options else "collection", options))
            elif cmd == "drop":
                self.drop(dst_ns)
            elif cmd == "renameCollection":
                return self._rename(str(ddl["renameCollection"]), str(ddl["to"]), bool(ddl.get("dropTarget")), nsmap)
            elif cmd == "dropDatabase":
                self._drop_database(db, nsmap)
            elif cmd == "createIndexes":
                self.create_indexes(dst_ns, [clean_index_spec(ix) for ix in ddl.get("indexes", [])])
            elif cmd == "dropIndexes":
                self._drop_indexes(dst_ns, ddl.get("index"))
            elif cmd == "collMod":
                mod = {k: v for k, v in ddl.items() if k != "collMod"}
                if "viewOn" in mod:
                    mod["viewOn"] = nsmap.target(f"{db}.{mod['viewOn']}").partition(".")[2]
                ddb, dcoll = split_ns(dst_ns)
                self.client[ddb].command({"collMod": dcoll, **mod})
            elif cmd == "emptycapped":
                self.collection(dst_ns).delete_many({})
            elif cmd == "convertToCapped":
                ddb, dcoll = split_ns(dst_ns)
                self.client[ddb].command({"convertToCapped": dcoll, "size": ddl.get("size")})
            else:
                return False
        except OperationFailure as exc:
            if exc.code not in (NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND):
                raise
        return True

    def _rename(self, src: str, to: str, drop_target: bool, nsmap: NamespaceMap) -> bool:
        if nsmap.selected(src) and nsmap.selected(to):
            self.client.admin.command({"renameCollection": nsmap.target(src), "to": nsmap.target(to),
                                       "dropTarget": drop_target})
            return True
        if nsmap.selected(src):  # renamed out of the selection: it no longer belongs on the destination
            log.warning("collection renamed out of the selection; dropped on the destination",
                        extra={"from": src, "to": to})
            self.drop(nsmap.target(src))
            return True
        return False  # renamed into the selection: its documents were never copied (the caller decides)

    def _drop_database(self, db: str, nsmap: NamespaceMap) -> None:
        ddb = nsmap.map_db(db)
        for name in self.client[ddb].list_collection_names():
            if not name.startswith("system."):
                self.client[ddb].drop_collection(name)
        for src, dst in nsmap.coll_renames.items():
            if src.partition(".")[0] == db:
                self.drop(dst)

    def _drop_indexes(self, dst_ns: str, which: Any) -> None:
        ddb, dcoll = split_ns(dst_ns)
        names = which if isinstance(which, list) else [which]
        for name in names:
            try:
                self.client[ddb].command({"dropIndexes": dcoll, "index": name})
            except OperationFailure as exc:
                if exc.code not in (INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND):
                    raise

    # --- documents ---
    def insert_copied(self, dst_ns: str, docs: list[RawBSONDocument]) -> None:
        """Insert a copied batch. A document already there (a resumed range) is replaced,
        so it ends with what the source holds now, never a stale or duplicated copy."""
        coll = self.collection(dst_ns)
        try:
            coll.insert_many(docs, ordered=False, bypass_document_validation=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if others:
                raise
            replaces = [ReplaceOne({"_id": docs[e["index"]]["_id"]}, docs[e["index"]], upsert=True)
                        for e in errors]
            coll.bulk_write(replaces, ordered=True, bypass_document_validation=True)

    def bulk(self, dst_ns: str, ops: list[Any], session: ClientSession | None = None) -> None:
        """Write one namespace's final writes (one per document). They touch distinct documents, so
        they go unordered (one command per operation type); an insert that meets an existing _id (a
        replayed event) becomes a replace. Any other error (a unique secondary index conflict that
        depends on order) retries the whole list in the events' order."""
        coll = self.collection(dst_ns)
        try:
            coll.bulk_write(ops, ordered=False, bypass_document_validation=True, session=session)
            return
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if session is not None or any(e.get("code") != DUPLICATE_KEY or not isinstance(ops[e["index"]], InsertOne)
                                          for e in errors):
                if session is not None:
                    raise
                self._bulk_ordered(coll, ops, session)
                return
            redo = [ops[e["index"]] for e in errors]
        self._bulk_ordered(coll, [ReplaceOne({"_id": op._doc["_id"]}, op._doc, upsert=True) for op in redo], session)

    @staticmethod
    def _bulk_ordered(coll: Any, ops: list[Any], session: ClientSession | None) -> None:
        while ops:
            try:
                coll.bulk_write(ops, ordered=True, bypass_document_validation=True, session=session)
                return
            except BulkWriteError as exc:
                err = exc.details["writeErrors"][0]
                i = err["index"]
                op = ops[i]
                if err.get("code") != DUPLICATE_KEY or not isinstance(op, InsertOne):
                    raise
                doc = op._doc
                ops = [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True), *ops[i + 1:]]

    def count(self, dst_ns: str) -> int:
        db, name = split_ns(dst_ns)
        return int(self.client[db][name].count_documents({}))


def has_options(index: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether an index has every field of a spec with the same value (a key's field order counts)."""
    for field, value in spec.items():
        if field not in index:
            return False
        mine = index[field]
        if field == "key" and isinstance(value, dict) and isinstance(mine, dict):
            if list(value.items()) != list(mine.items()):
                return False
        elif mine != value:
            return False
    return True
