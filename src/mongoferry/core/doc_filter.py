"""Document filters (pure): `--filter DB.COLL=QUERY`, which documents of a namespace a job moves.

A filter is a MongoDB query in extended JSON. The servers evaluate it, never this code: the copy
reads with it, the verifier reads the source with it, and a changed document is read back from
the source with it. So no second matcher can disagree with the server's.

Following changes to a filtered namespace, per document:
- a delete is applied as it is;
- an insert, a replace, and an update that may touch a field the filter reads are resolved by
  reading the source with `{$and: [{_id: {$in: ids}}, filter]}`: found, it is written as the
  source holds it now; not found, it is deleted here (it stopped matching, or is gone);
- an update clear of every field the filter reads is replayed as usual: it cannot change whether
  the document matches (here, it is updated; not here, it stays away).
A filter whose operators read no named field (`$expr`, `$where`, `$text`, `$jsonSchema`…) makes
every update a read of the source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bson import json_util

from mongoferry.core.errors import UsageError
from mongoferry.core.routing import update_paths

Filters = Mapping[str, Mapping[str, Any]]  # source namespace → query

# Operators that combine queries on named fields; any other top-level operator reads what it likes.
_LOGICAL = ("$and", "$or", "$nor")
_HARMLESS = ("$comment",)


def parse_filters(entries: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`DB.COLL=QUERY` entries as one query per namespace; one clear problem per mistake."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        ns, eq, text = entry.partition("=")
        ns, text = ns.strip(), text.strip()
        if not eq or not text:
            raise UsageError(f"--filter {entry!r}: write DB.COLL=QUERY",
                             "for example --filter 'shop.orders={\"tenant\": \"acme\"}'")
        db, dot, coll = ns.partition(".")
        if not db or not dot or not coll:
            raise UsageError(f"--filter {entry!r}: {ns!r} is not a DB.COLL namespace",
                             "a filter applies to one collection: write DB.COLL=QUERY")
        try:
            query = json_util.loads(text)
        except ValueError as exc:
            raise UsageError(f"--filter for {ns} is not valid extended JSON ({str(exc).splitlines()[0]})",
                             "quote the whole option in the shell; keys and strings need double quotes") from None
        if not isinstance(query, dict):
            raise UsageError(f"--filter for {ns} is {type(query).__name__}, not a query document",
                             "give an object such as {\"tenant\": \"acme\"}")
        if ns in out and out[ns] != query:
            raise UsageError(f"--filter is given twice for {ns}", "combine both in one query with $and")
        out[ns] = query
    return out


def filter_paths(query: Mapping[str, Any]) -> list[str] | None:
    """The field paths a query reads; None when an operator reads fields it does not name."""
    paths: list[str] = []
    for key, value in query.items():
        if key in _LOGICAL:
            if not isinstance(value, list | tuple):
                return None
            for sub in value:
                found = filter_paths(sub) if isinstance(sub, Mapping) else None
                if found is None:
                    return None
                paths += found
        elif key in _HARMLESS:
            continue
        elif key.startswith("$"):
            return None
        else:
            paths.append(key)
    return paths


def may_change_match(query: Mapping[str, Any], update: Mapping[str, Any] | None) -> bool:
    """Could this update (an oplog `o` or a change event's updateDescription) change whether the
    document matches? Conservative: True unless every path it names is clear of the query's paths."""
    if not update:
        return True
    read = filter_paths(query)
    changed = update_paths(update)
    if read is None or changed is None:
        return True
    # By top-level field: a query on `a.b` also reads `a.0.b` (arrays are traversed), and an update
    # of `a.1` may replace a whole element; a finer comparison would have to know the document.
    return bool({c.split(".")[0] for c in changed} & {r.split(".")[0] for r in read})


def and_filter(query: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """`query` restricted to the documents `extra` matches: one document of both when their keys
    differ (a plain `{_id: {$in: …}, …}` is an index lookup on every server; some plan an `$and` as
    a scan), else an `$and`."""
    if not extra:
        return dict(query)
    if set(query).isdisjoint(extra):
        return {**query, **extra}
    return {"$and": [dict(query), dict(extra)]}


def describe(filters: Filters) -> list[str]:
    """Each filter as `DB.COLL=QUERY` in canonical extended JSON (the job's fingerprint, its docs)."""
    return [f"{ns}={json_util.dumps(q, json_options=json_util.CANONICAL_JSON_OPTIONS)}"
            for ns, q in sorted(filters.items())]
