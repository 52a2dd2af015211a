"""The MongoDB writer: the only code that writes user data to a destination."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError, OperationFailure

from mongoferry.catalog import CollectionSpec
from mongoferry.clients import RAW, Client

log = logging.getLogger("mongoferry.sink")

NAMESPACE_EXISTS = 48
DUPLICATE_KEY = 11000
INDEX_ALREADY_EXISTS = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict


def split_ns(ns: str) -> tuple[str, str]:
    db, _, coll = ns.partition(".")
    return db, coll


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
        if not specs:
            return
        db, name = split_ns(dst_ns)
        try:
            self.client[db].command({"createIndexes": name, "indexes": list(specs)})
        except OperationFailure as exc:
            if exc.code not in INDEX_ALREADY_EXISTS or len(specs) == 1:
                raise
            for one in specs:  # some exist already (a resumed build): create the rest one by one
                try:
                    self.client[db].command({"createIndexes": name, "indexes": [one]})
                except OperationFailure as inner:
                    if inner.code not in INDEX_ALREADY_EXISTS:
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

    def count(self, dst_ns: str) -> int:
        db, name = split_ns(dst_ns)
        return int(self.client[db][name].count_documents({}))
