"""What the source holds: namespaces, their kind, options, indexes and sizes."""

from __future__ import annotations

from mongoferry.core.model import CollectionSpec
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import Client


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
