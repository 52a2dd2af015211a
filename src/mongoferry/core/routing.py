"""Which part of a split owns a document (pure; shared by `split`, its commit check and `--explain`).

Rules, for N destinations numbered 0..N-1 in the order of `--dst`:
- `mod`: an integral number key k (int32, int64, or a double with an integral value) goes to
  k mod N, taken non-negative (-3 mod 2 = 1), as an application computing `((k % n) + n) % n` does.
- `hash`: the first 8 bytes (big-endian) of SHA-256 over the key's BSON value, mod N. Integral
  numbers are hashed as int64 whatever their BSON type (5, Int64(5) and 5.0 go to one part); any
  other value (and an integral double beyond int64) by its exact BSON encoding (type byte and
  bytes). The same in every process and version.
- `range`: N-1 bounds in increasing order; part i holds keys in [bound(i-1), bound(i)). Keys and
  bounds compare as MongoDB orders MinKey, numbers (int32, int64, double, decimal128; NaN lowest),
  strings, ObjectIds, booleans, dates and MaxKey (in that order): MinKey is in the first part,
  MaxKey in the last. A key of another type (null, document, array, binary…) is not routable.
A key is a field name or a dotted path into embedded documents. A document whose key is missing,
null, an array, or not routable by the rule belongs to the `unrouted` part when one is given,
otherwise to none. Broadcast namespaces belong to every part.
`prune` deletes a document only when the rule gives it to another part, and each delete carries
`unchanged_filter`: it matches only while the key still has the BSON type and value that was read,
so a document whose key changed in the meantime (perhaps to an owned value) is never deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import bson
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId

from mongoferry.core.errors import UsageError

By = Literal["mod", "hash", "range"]
MISSING: Any = object()

_TYPE_ORDER = {"minkey": 0, "number": 1, "string": 2, "objectid": 3, "bool": 4, "date": 5, "maxkey": 9}


def key_value(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or MISSING (arrays are not traversed: a key is one value)."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def _integral(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # int and Int64
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _ordered(value: Any) -> tuple[int, Any] | None:
    """A sort key in MongoDB's order for the types `range` accepts; None for the others."""
    if isinstance(value, bool):
        return _TYPE_ORDER["bool"], value
    if isinstance(value, int | float):
        return _TYPE_ORDER["number"], -math.inf if value != value else value  # NaN sorts lowest
    if isinstance(value, Decimal128):
        d = value.to_decimal()
        return _TYPE_ORDER["number"], -math.inf if d.is_nan() else d
    if isinstance(value, MinKey):
        return _TYPE_ORDER["minkey"], 0
    if isinstance(value, MaxKey):
        return _TYPE_ORDER["maxkey"], 0
    if isinstance(value, str):
        return _TYPE_ORDER["string"], value.encode()  # MongoDB compares strings by their bytes
    if isinstance(value, ObjectId):
        return _TYPE_ORDER["objectid"], value.binary
    if isinstance(value, dt.datetime):
        return _TYPE_ORDER["date"], value.replace(tzinfo=None) if value.tzinfo else value
    return None


_INT64 = range(-(2**63), 2**63)


def stable_hash(value: Any) -> int:
    n = _integral(value)
    # An integral double outside int64 (1e19) has no int64 form: hashed as the double it is.
    encoded = bson.encode({"": Int64(n)}) if n is not None and n in _INT64 else bson.encode({"": value})
    return int.from_bytes(hashlib.sha256(encoded[4:-1]).digest()[:8], "big")


@dataclass(frozen=True)
class Rule:
    parts: int
    by: By = "mod"
    key: str = ""
    ns_keys: Mapping[str, str] = field(default_factory=dict)  # db.coll → key
    bounds: Sequence[Any] = ()
    broadcast: frozenset[str] = frozenset()
    unrouted: int | None = None

    def key_of(self, ns: str) -> str:
        return self.ns_keys.get(ns, self.key)

    def is_broadcast(self, ns: str) -> bool:
        return ns in self.broadcast or ns.partition(".")[0] in self.broadcast

    def part_of_value(self, value: Any) -> int | None:
        """The part a key value routes to, or None when the rule cannot route it."""
        if value is MISSING or value is None or isinstance(value, list):
            return None
        if self.by == "mod":
            n = _integral(value)
            return None if n is None else n % self.parts
        if self.by == "hash":
            return stable_hash(value) % self.parts
        ordered = _ordered(value)
        if ordered is None:
            return None
        bounds = [_ordered(b) for b in self.bounds]
        return sum(1 for b in bounds if b is not None and ordered >= b)

    def part_of(self, ns: str, doc: Mapping[str, Any]) -> int | None:
        """The part owning a document of a non-broadcast namespace (the unrouted part, or None)."""
        part = self.part_of_value(key_value(doc, self.key_of(ns)))
        return self.unrouted if part is None else part

    def owns(self, part: int, ns: str, doc: Mapping[str, Any]) -> bool:
        return self.is_broadcast(ns) or self.part_of(ns, doc) == part

    def prunable(self, keep: int, ns: str, doc: Mapping[str, Any]) -> bool:
        """Does the rule give this document to a part other than `keep`? (A document no part takes
        is nobody else's: kept.)"""
        if self.is_broadcast(ns):
            return False
        owner = self.part_of(ns, doc)
        return owner is not None and owner != keep

    def unchanged_filter(self, ns: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A query matching this document only while its key is what `doc` shows: same BSON type,
        same value, and no array on the way (arrays are not routable, and `$eq` would look inside)."""
        key = self.key_of(ns)
        value = key_value(doc, key)
        query: dict[str, Any] = {"_id": doc["_id"]}
        parts = key.split(".")
        if value is MISSING and len(parts) == 1:
            query[key] = {"$exists": False}
            return query
        if value is MISSING:
            # Missing as `key_value` reads paths: not (every prefix a single embedded document and the
            # field there). `{"a.b": {$exists: false}}` alone would look inside an array `a`.
            present = {".".join(parts[:i]): {"$type": "object", "$not": {"$type": "array"}}
                       for i in range(1, len(parts))}
            query["$nor"] = [{**present, key: {"$exists": True}}]
            return query
        for i in range(1, len(parts)):
            query[".".join(parts[:i])] = {"$not": {"$type": "array"}}
        if isinstance(value, list):
            query[key] = {"$type": "array"}  # any array is unroutable: the same owner
        elif value is None:
            query[key] = {"$type": "null", "$not": {"$type": "array"}}
        else:
            query[key] = {"$eq": value, "$type": bson_type(value), "$not": {"$type": "array"}}
        return query

    def key_may_change(self, ns: str, update: Mapping[str, Any] | None) -> bool:
        """Could this update (an oplog `o` or a change event's updateDescription) change the key?
        Conservative: True unless every path it names is clear of the key's path."""
        if self.is_broadcast(ns) or not update:
            return False
        key = self.key_of(ns)
        paths = update_paths(update)
        return paths is None or any(_overlaps(p, key) for p in paths)

    def describe(self, no_unrouted: str = "refused") -> str:
        how = {"mod": f"{self.key} mod {self.parts}", "hash": f"sha256({self.key}) mod {self.parts}",
               "range": f"{self.key} in ranges split at {json.dumps(list(map(str, self.bounds)))}"}[self.by]
        extra = [f"{ns} by {k}" for ns, k in sorted(self.ns_keys.items())]
        if self.broadcast:
            extra.append("broadcast to every part: " + ", ".join(sorted(self.broadcast)))
        extra.append("unrouted documents: " + (f"part {self.unrouted}" if self.unrouted is not None else no_unrouted))
        return "; ".join([how, *extra])


_TYPE_ALIASES = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId", 8: "bool",
                 9: "date", 10: "null", 11: "regex", 13: "javascript", 16: "int", 17: "timestamp", 18: "long",
                 19: "decimal", 127: "maxKey", 255: "minKey"}


def bson_type(value: Any) -> str:
    """The `$type` alias of the BSON type pymongo encodes this value as."""
    code = bson.encode({"": value})[4]
    return _TYPE_ALIASES.get(code, str(code))


def _overlaps(path: str, key: str) -> bool:
    a, b = path.split("."), key.split(".")
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def update_paths(u: Mapping[str, Any]) -> list[str] | None:
    """Top-level-or-dotted paths an update names; None when they cannot be listed."""
    if "updatedFields" in u or "removedFields" in u:  # a change event's description
        paths = [*u.get("updatedFields", {}), *u.get("removedFields", [])]
        paths += [t.get("field", "") for t in u.get("truncatedArrays", []) if isinstance(t, Mapping)]
        return [str(p) for p in paths]
    if "diff" in u:  # oplog $v:2
        diff = u["diff"]
        if not isinstance(diff, Mapping):
            return None
        if "updatedFields" in diff:  # a description inside a $v:2 entry (some servers)
            return update_paths(diff)
        paths = []
        for section, value in diff.items():
            if section in ("u", "i", "d") and isinstance(value, Mapping):
                paths += list(value)
            elif section.startswith("s") and len(section) > 1:
                paths.append(section[1:])  # a sub-diff of one top-level field
            else:
                return None
        return paths
    ops = [k for k in u if k.startswith("$")]
    if ops and len(ops) == len(u):  # $v:1 modifiers: {$set: {...}, $unset: {...}}
        return [p for op in ops if isinstance(u[op], Mapping) for p in u[op]]
    return None  # a replacement, or a form we do not know: the key may change


def parse_rule(parts: int, by: str, keys: Sequence[str], bounds: Sequence[str], broadcast: Sequence[str],
               unrouted: int | None, parts_flag: str = "--dst") -> Rule:
    """Build a rule from the command line; one clear problem per mistake."""
    if parts < 2:
        if parts_flag == "--dst":
            raise UsageError(f"split needs at least two --dst, got {parts}", "give one --dst per part, in order")
        raise UsageError(f"{parts_flag} {parts}: a rule needs at least two parts", f"give {parts_flag} 2 or more")
    if by not in ("mod", "hash", "range"):
        raise UsageError(f"--by {by!r} is not a rule", "use --by mod, hash or range")
    default = ""
    ns_keys: dict[str, str] = {}
    for k in keys:
        ns, eq, field_ = k.partition("=")
        if eq:
            if "." not in ns or not field_:
                raise UsageError(f"--key {k!r}: write DB.COLL=FIELD", "for example --key shop.orders=customer.id")
            ns_keys[ns] = field_
        elif default:
            raise UsageError(f"two default keys: --key {default!r} and --key {k!r}",
                             "give one --key FIELD, and --key DB.COLL=FIELD per exception")
        else:
            default = k
    for f in [default, *ns_keys.values()]:
        if f and (f.startswith("$") or "" in f.split(".")):
            raise UsageError(f"--key {f!r} is not a field path", "write a field name or a dotted path: userId, user.id")
    if not default and not ns_keys:
        raise UsageError("split needs --key FIELD", "for example --key userId (and --by mod)")
    parsed_bounds: list[Any] = []
    if by == "range":
        if len(bounds) != parts - 1:
            raise UsageError(f"--by range with {parts} destinations needs {parts - 1} --bound values, "
                             f"got {len(bounds)}", "give the lowest key of each part after the first, in order")
        parsed_bounds = [_parse_bound(b) for b in bounds]
        ordered = [_ordered(b) for b in parsed_bounds]
        if any(o is None for o in ordered) or any(a >= b for a, b in itertools.pairwise(ordered)):  # type: ignore[operator]
            raise UsageError(f"--bound values {list(bounds)} are not increasing values of one kind",
                             "give numbers, strings, ObjectIds or dates in increasing order")
    elif bounds:
        raise UsageError("--bound is for --by range only", "remove --bound, or use --by range")
    if unrouted is not None and not 0 <= unrouted < parts:
        raise UsageError(f"--unrouted {unrouted}: there are destinations 0 to {parts - 1}",
                         "give the index of a --dst, counting from 0")
    return Rule(parts, by, default, ns_keys, tuple(parsed_bounds), frozenset(broadcast), unrouted)  # type: ignore[arg-type]


def rule_spec(rule: Rule) -> dict[str, Any]:
    """The rule as its command-line values, saved by split so that prune can reuse it."""
    from bson import json_util

    keys = ([rule.key] if rule.key else []) + [f"{ns}={k}" for ns, k in sorted(rule.ns_keys.items())]
    return {"parts": rule.parts, "by": rule.by, "key": keys, "bound": [json_util.dumps(b) for b in rule.bounds],
            "broadcast": sorted(rule.broadcast), "unrouted": rule.unrouted}


def rule_from_spec(spec: Mapping[str, Any]) -> Rule:
    return parse_rule(int(spec["parts"]), str(spec["by"]), list(spec["key"]), list(spec["bound"]),
                      list(spec["broadcast"]), spec.get("unrouted"))


def _parse_bound(text: str) -> Any:
    """A bound in extended JSON (`100`, `"m"`, `{"$oid": …}`, `{"$date": …}`), or a bare string."""
    from bson import json_util

    try:
        return json_util.loads(text)
    except ValueError:
        return text
