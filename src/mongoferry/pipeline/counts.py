"""Source and destination document counts per namespace, and what a difference means.

Counts are informative while a job runs (metadata counts, cheap on MongoDB at any size) and a
gate at the end (exact counts at commit). Where they differ, the report names each namespace and
the cause it can see — a capped collection holding more than its `max` on the source is not the
source changing under the copy."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymongo import MongoClient

Client = MongoClient[dict[str, Any]]
Row = dict[str, Any]


def _count(client: Client, ns: str, exact: bool, query: Mapping[str, Any] | None = None) -> int:
    db, _, coll = ns.partition(".")
    c = client[db][coll]
    if query is not None:  # a --filter's share has no metadata count: always counted
        return int(c.count_documents(dict(query)))
    return int(c.count_documents({}) if exact else c.estimated_document_count())


def count_rows(src: Client, dst: Client, mapping: dict[str, str], exact: bool = False,
               filters: Mapping[str, Mapping[str, Any]] | None = None) -> list[Row]:
    """One row per namespace: source, destination, both counts and their difference, asked in parallel.
    A namespace with a --filter counts the source's matching documents only."""
    pairs = sorted(mapping.items())
    if not pairs:
        return []
    filters = filters or {}
    with ThreadPoolExecutor(max(1, min(8, 2 * len(pairs)))) as pool:
        src_n = [pool.submit(_count, src, s, exact, filters.get(s)) for s, _ in pairs]
        dst_n = [pool.submit(_count, dst, d, exact) for _, d in pairs]
        return [{"source": s, "destination": d, "sourceCount": a.result(), "destinationCount": b.result(),
                 "delta": a.result() - b.result()} for (s, d), a, b in zip(pairs, src_n, dst_n, strict=True)]


def capped_max(client: Client, namespaces: list[str]) -> dict[str, int]:
    """The document limit (`max`) of each capped collection among `namespaces`."""
    out: dict[str, int] = {}
    for db in sorted({ns.partition(".")[0] for ns in namespaces}):
        names = [ns.partition(".")[2] for ns in namespaces if ns.partition(".")[0] == db]
        for spec in client[db].list_collections(filter={"name": {"$in": names}}):
            options = spec.get("options") or {}
            if options.get("capped") and options.get("max"):
                out[f"{db}.{spec['name']}"] = int(options["max"])
    return out


def describe_count_difference(rows: list[Row], capped: dict[str, int], when: str, hint: str) -> str:
    """Why counts differ, in numbers: which namespaces, by how much, and the cause where one shows."""
    parts = []
    for r in rows:
        delta = r["delta"]
        what = f"{delta} missing on the destination" if delta > 0 else f"{-delta} more on the destination"
        limit = capped.get(r["destination"])
        if limit is not None and r["sourceCount"] > limit:
            what += (f"; it is capped at max {limit} documents and the source holds more than its max, "
                     "so the destination trims it differently")
        parts.append(f"{r['source']}: source {r['sourceCount']}, destination {r['destinationCount']} ({what})")
    explained = all(r["destination"] in capped and r["sourceCount"] > capped[r["destination"]] for r in rows)
    return f"counts differ {when}: " + "; ".join(parts) + ("" if explained else hint)
