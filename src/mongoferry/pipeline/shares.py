"""How a split divides each namespace: documents per part, and those the rule cannot route.

One read of the source per namespace, projected on the key: the refusal of unroutable documents
before the first write, `split --explain`, the split's status and its commit check all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient

from mongoferry.core.routing import Rule, key_value

Client = MongoClient[dict[str, Any]]
SAMPLE = 5


@dataclass
class Share:
    ns: str
    parts: list[int]
    unroutable: int = 0  # key missing, null or not routable by the rule (before --unrouted)
    sample: list[Any] = field(default_factory=list)  # a few of their _ids
    unroutable_dropped: bool = False  # True when no part takes them (the split refuses)


def share_of(src: Client, ns: str, rule: Rule, query: Mapping[str, Any] | None = None) -> Share:
    """How the rule shares the documents of `ns` (those a --filter `query` matches)."""
    db, _, coll = ns.partition(".")
    handle = src[db][coll]
    query = dict(query or {})
    if rule.is_broadcast(ns):
        n = int(handle.count_documents(query))
        return Share(ns, [n] * rule.parts)
    share = Share(ns, [0] * rule.parts)
    key = rule.key_of(ns)
    for doc in handle.find(query, {key: 1}, batch_size=10_000):
        part = rule.part_of_value(key_value(doc, key))
        if part is None:
            share.unroutable += 1
            if len(share.sample) < SAMPLE:
                share.sample.append(doc["_id"])
            if rule.unrouted is None:
                share.unroutable_dropped = True
                continue
            part = rule.unrouted
        share.parts[part] += 1
    return share


def shares(src: Client, namespaces: list[str], rule: Rule,
           filters: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Share]:
    return {ns: share_of(src, ns, rule, (filters or {}).get(ns)) for ns in sorted(namespaces)}
