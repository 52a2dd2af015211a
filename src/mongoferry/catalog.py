"""What the source holds: namespaces, their kind, options, indexes and sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mongoferry.clients import Client
from mongoferry.namespaces import NamespaceMap

# Index spec fields that describe how an index was built, not what it is.
# (`entryFormat` is SecantusDB's internal field in createIndexes oplog entries.)
_BUILD_ONLY_INDEX_FIELDS = ("ns", "background", "entryFormat")


@dataclass
class CollectionSpec:
    ns: str
    kind: str  # "collection" | "view" | "timeseries"
    options: dict[str, Any] = field(default_factory=dict)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    size: int = 0

    @property
    def db(self) -> str:
        return self.ns.partition(".")[0]

    @property
    def name(self) -> str:
        return self.ns.partition(".")[2]

    @property
    def natural_order(self) -> bool:
        """Copied whole in $natural order rather than in `_id` ranges."""
        return (self.kind == "timeseries" or bool(self.options.get("capped"))
                or "clusteredIndex" in self.options
                or not any(ix.get("name") == "_id_" for ix in self.indexes))

    def secondary_indexes(self) -> list[dict[str, Any]]:
        return [clean_index_spec(ix) for ix in self.indexes if ix.get("name") != "_id_"]

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": self.options, "indexes": self.indexes,
                "count": self.count, "size": self.size}

    @classmethod
    def from_doc(cls, ns: str, d: dict[str, Any]) -> CollectionSpec:
        return cls(ns=ns, kind=d["kind"], options=d.get("options", {}), indexes=d.get("indexes", []),
                   count=d.get("count", 0), size=d.get("size", 0))


def clean_index_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _BUILD_ONLY_INDEX_FIELDS}


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
