"""Split a collection into `_id` ranges that can be copied in parallel.

Ranges are half-open `[lower, upper)` in `_id` index order and are read with
`hint({_id: 1})` plus cursor `min`/`max`, which walk index bounds directly: no
query type bracketing, so every BSON type of `_id` (MinKey … MaxKey, mixed
types in one collection) lands in exactly one range. The first range has no
lower bound and the last no upper bound, so MinKey and MaxKey ids are included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pymongo.collection import Collection

from mongoferry.core.model import Partition

log = logging.getLogger("mongoferry.partition")


def every_nth(sorted_ids: Iterable[Any], n: int) -> Iterator[Any]:
    """Yield ids n, 2n, 3n, … of a sorted stream: the boundaries of ranges of n ids."""
    for i, value in enumerate(sorted_ids):
        if i and i % n == 0:
            yield value


def ranges(ns: str, boundaries: list[Any]) -> list[Partition]:
    """Partitions covering the whole key space, cut at `boundaries` (sorted, distinct)."""
    parts: list[Partition] = []
    edges: list[tuple[bool, Any]] = [(False, None), *((True, b) for b in boundaries), (False, None)]
    for i in range(len(edges) - 1):
        has_lower, lower = edges[i]
        has_upper, upper = edges[i + 1]
        parts.append(Partition(id=f"{ns}#{i:06d}", ns=ns, index=i, lower=lower, upper=upper,
                               has_lower=has_lower, has_upper=has_upper))
    return parts


def natural(ns: str) -> list[Partition]:
    """One partition read in $natural order (capped, time-series, no `_id` index)."""
    return [Partition(id=f"{ns}#000000", ns=ns, index=0, natural=True)]


def plan(coll: Collection[Any], ns: str, estimated_count: int, target_docs: int) -> list[Partition]:
    """Plan `_id` ranges of about `target_docs` documents each (one range for small collections)."""
    if estimated_count <= target_docs:
        return ranges(ns, [])
    cursor = coll.find({}, {"_id": 1}, batch_size=10_000).hint([("_id", 1)]).sort("_id", 1)
    bounds = list(every_nth((d["_id"] for d in cursor), target_docs))
    return ranges(ns, bounds)
