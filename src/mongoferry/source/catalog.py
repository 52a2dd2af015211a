"""What the source holds: namespaces, their kind, options, indexes and sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson import json_util
from pymongo.errors import ExecutionTimeout, OperationFailure

from mongoferry.core.errors import UsageError
from mongoferry.core.model import CollectionSpec
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import Client

FILTER_COUNT_MS = 5000  # a filtered namespace's exact count, for progress; longer and the estimate stays


def list_namespaces(client: Client, nsmap: NamespaceMap) -> list[str]:
    """Every non-system namespace name on the server (selected or not), sorted."""
    out: list[str] = []
    for db in sorted(client.list_database_names()):
        if not nsmap.db_selected(db) and not nsmap.include:
            continue
        for name in client[db].list_collection_names():
            ns = f"{db}.{name}"
            if not nsmap.is_system(ns):
                out.append(ns)
    return sorted(out)


def describe(client: Client, ns: str) -> CollectionSpec | None:
    """Kind, options, indexes and size of one namespace, or None if it does not exist."""
    db, _, name = ns.partition(".")
    infos = list(client[db].list_collections(filter={"name": name}))
    if not infos:
        return None
    info = infos[0]
    spec = CollectionSpec(ns=ns, kind=info.get("type", "collection"), options=dict(info.get("options", {})))
    if spec.kind == "view":
        return spec
    coll = client[db][name]
    spec.indexes = [dict(ix) for ix in coll.list_indexes()]
    # Metadata count only: an exact count or collStats is a full scan on some servers.
    # Byte totals are estimated from the documents as they are copied.
    spec.count = coll.estimated_document_count()
    return spec


def holds_data(client: Client, ns: str) -> str | None:
    """Why `ns` on this server must not be overwritten, or None when it is absent or empty."""
    db, _, name = ns.partition(".")
    infos = list(client[db].list_collections(filter={"name": name}))
    if not infos:
        return None
    if infos[0].get("type") == "view":
        return "is an existing view"
    n = client[db][name].estimated_document_count() or client[db][name].count_documents({}, limit=1)
    return f"already holds {n} document(s)" if n else None


def filtered_count(client: Client, ns: str, query: Mapping[str, Any]) -> int | None:
    """How many documents of `ns` match a --filter (None when counting takes too long). The server
    parses the query first: one it refuses is a UsageError, before anything is written."""
    db, _, name = ns.partition(".")
    try:
        return int(client[db][name].count_documents(dict(query), maxTimeMS=FILTER_COUNT_MS))
    except OperationFailure as exc:
        if isinstance(exc, ExecutionTimeout) or exc.code == 50:  # MaxTimeMSExpired: parsed, merely slow
            return None
        raise _refused(ns, query, exc) from None


UNRECOGNIZED_STAGE = 40324


def check_filter(client: Client, ns: str, query: Mapping[str, Any]) -> None:
    """Have the server parse a --filter, in the `$nor` form a filtered restore sends, without reading
    a collection (a server parses no query against a collection it does not have): a `$match` on
    one `$documents` document (MongoDB 5.1+, mongos too), else a query on its oplog, cut short."""
    negated = {"$nor": [dict(query)]}
    try:
        list(client["admin"].aggregate([{"$documents": [{}]}, {"$match": negated}]))
        return
    except OperationFailure as exc:
        if exc.code != UNRECOGNIZED_STAGE:
            raise _refused(ns, query, exc) from None
    try:
        list(client["local"]["oplog.rs"].find(negated).limit(1).max_time_ms(200))
    except OperationFailure as exc:
        if not (isinstance(exc, ExecutionTimeout) or exc.code in (50, 13)):  # slow, or not allowed to read it
            raise _refused(ns, query, exc) from None


def _refused(ns: str, query: Mapping[str, Any], exc: OperationFailure) -> UsageError:
    why = (exc.details or {}).get("errmsg") or str(exc)
    return UsageError(f"--filter for {ns} is refused by the server: {why} (query {json_util.dumps(query)[:200]})",
                      "fix the query; nothing was written")
