"""Which namespaces a job moves, and under which names (pure).

Selection rules, in order:
1. System databases (admin, config, local), the job's own metadata database and
   `system.*` collections are never selected.
2. With no --include, everything else is selected; with includes, a namespace is
   selected when its database or its exact `db.coll` is included.
3. An --exclude of its database or exact namespace removes it.
Renames: `db=newdb` renames a database, `db.a=db2.b` one collection; the
collection rule wins over the database rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mongoferry.core.doc_filter import describe, parse_filters
from mongoferry.core.errors import UsageError

SYSTEM_DATABASES = frozenset({"admin", "config", "local"})
_BAD_DB_CHARS = re.compile(r'[/\\. "$\x00]')


def split_ns(ns: str) -> tuple[str, str]:
    """Split at the first dot: the database never contains one, a collection may."""
    db, _, coll = ns.partition(".")
    return db, coll


def _check_db_name(name: str, flag: str, value: str) -> None:
    if not name or _BAD_DB_CHARS.search(name) or len(name) > 63:
        raise UsageError(
            f"{flag} {value!r}: {name!r} is not a valid database name",
            "database names are non-empty and contain none of / \\ . \" $ or spaces",
        )


def _check_pattern(value: str, flag: str) -> None:
    db, dot, coll = value.partition(".")
    _check_db_name(db, flag, value)
    if dot and not coll:
        raise UsageError(f"{flag} {value!r} has an empty collection name", "write DB or DB.COLLECTION")


@dataclass(frozen=True)
class NamespaceMap:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    db_renames: dict[str, str] = field(default_factory=dict)
    coll_renames: dict[str, str] = field(default_factory=dict)
    meta_db: str = "mongoferry_meta"
    # Time-series buckets are internal: copy and sync move measurements through the collection
    # itself, but an oplog replay must apply raw bucket writes as the dump recorded them.
    buckets: bool = False
    # --filter: per source namespace, the query its documents must match (core/doc_filter).
    filters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        rename: Iterable[str] = (),
        meta_db: str = "mongoferry_meta",
        buckets: bool = False,
        filters: Iterable[str] = (),
    ) -> NamespaceMap:
        inc, exc = tuple(include), tuple(exclude)
        for v in inc:
            _check_pattern(v, "--include")
        for v in exc:
            _check_pattern(v, "--exclude")
        db_renames: dict[str, str] = {}
        coll_renames: dict[str, str] = {}
        for item in rename:
            src, eq, dst = item.partition("=")
            src, dst = src.strip(), dst.strip()
            if not eq or not src or not dst:
                raise UsageError(f"--rename {item!r} is malformed", "write OLD_DB=NEW_DB or DB.COLL=DB2.COLL2")
            if ("." in src) != ("." in dst):
                raise UsageError(
                    f"--rename {item!r} mixes a database and a collection",
                    "rename a database to a database (old=new) or a collection to a collection (db.a=db2.b)",
                )
            _check_pattern(src, "--rename")
            _check_pattern(dst, "--rename")
            target = coll_renames if "." in src else db_renames
            if src in target and target[src] != dst:
                raise UsageError(f"--rename {src!r} is given twice with different targets", "keep one")
            target[src] = dst
        for kind, table in (("database", db_renames), ("collection", coll_renames)):
            seen: dict[str, str] = {}
            for s, d in table.items():
                if d in seen:
                    raise UsageError(
                        f"two sources are renamed onto one {kind}: {seen[d]!r} and {s!r} both become {d!r}",
                        "give each source its own destination",
                    )
                seen[d] = s
        return cls(inc, exc, db_renames, coll_renames, meta_db, buckets, parse_filters(list(filters)))

    def is_system(self, ns: str) -> bool:
        db, coll = split_ns(ns)
        if self.buckets and coll.startswith("system.buckets."):
            return db in SYSTEM_DATABASES or db == self.meta_db
        return db in SYSTEM_DATABASES or db == self.meta_db or coll.startswith("system.")

    def db_selected(self, db: str) -> bool:
        """Could any collection of `db` be selected? (used for database-level events)"""
        if db in SYSTEM_DATABASES or db == self.meta_db or db in self.exclude:
            return False
        return not self.include or any(split_ns(p)[0] == db for p in self.include)

    def selected(self, ns: str) -> bool:
        if self.is_system(ns):
            return False
        db, _ = split_ns(ns)
        if db in self.exclude or ns in self.exclude:
            return False
        return not self.include or db in self.include or ns in self.include

    def target(self, ns: str) -> str:
        """Destination name of `ns` (renames applied), whether or not it is selected."""
        if ns in self.coll_renames:
            return self.coll_renames[ns]
        db, coll = split_ns(ns)
        return f"{self.db_renames.get(db, db)}.{coll}"

    def map(self, ns: str) -> str | None:
        """Destination namespace of a selected `ns`, or None when it is not moved."""
        return self.target(ns) if self.selected(ns) else None

    def filter_of(self, ns: str) -> Mapping[str, Any] | None:
        """The query a source namespace's documents must match, or None: all of them."""
        return self.filters.get(ns)

    def map_db(self, db: str) -> str:
        return self.db_renames.get(db, db)

    def resolve(self, source_namespaces: Sequence[str]) -> dict[str, str]:
        """Map every selected namespace; check includes match and targets are unique."""
        result = {ns: self.target(ns) for ns in source_namespaces if self.selected(ns)}
        for pattern in self.include:
            if not any(ns == pattern or split_ns(ns)[0] == pattern for ns in result):
                raise UsageError(
                    f"--include {pattern!r} matches no namespace on the source",
                    "check the spelling; list what exists with: mongosh --eval 'db.adminCommand({listDatabases:1})'",
                )
        for src in self.coll_renames:
            if src not in result:
                raise UsageError(f"--rename {src!r} names a collection that is not copied", "check the name")
        for src in self.filters:
            if src not in result:
                raise UsageError(f"--filter names {src}, which is not a selected collection on the source",
                                 "check the name (a filter is keyed by the source namespace, before --rename)")
        owners: dict[str, str] = {}
        for src, dst in result.items():
            if dst in owners:
                raise UsageError(
                    f"two sources are renamed onto one destination: {owners[dst]!r} and {src!r} both become {dst!r}",
                    "give each source its own destination with --rename",
                )
            owners[dst] = src
        return result

    def fingerprint(self) -> dict[str, object]:
        """What identifies the selection, stored with a job to refuse a changed rerun."""
        fp: dict[str, object] = {
            "include": sorted(self.include),
            "exclude": sorted(self.exclude),
            "rename": sorted([*(f"{k}={v}" for k, v in self.db_renames.items()),
                              *(f"{k}={v}" for k, v in self.coll_renames.items())]),
        }
        if self.filters:  # absent without filters: a job started before filters existed still matches
            fp["filter"] = describe(self.filters)
        return fp
