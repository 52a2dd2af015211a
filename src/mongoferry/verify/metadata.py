"""Which namespaces the verifier compares, and their metadata: collection specs, views,
indexes, and the ``_id`` ranges their documents are compared in."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import ExecutionTimeout, PyMongoError

from mongoferry.core.errors import UsageError
from mongoferry.core.model import Partition, clean_index_spec
from mongoferry.core.namespaces import NamespaceMap, split_ns
from mongoferry.infra.clients import DECODED, RAW, Client, driver_errors
from mongoferry.infra.config import VerifySettings
from mongoferry.source import partition
from mongoferry.state.endpoints import Endpoints
from mongoferry.verify.engine import Engine
from mongoferry.verify.findings import FindingType, NsFinding, Pair
from mongoferry.verify.spec_compare import compare_collection_specs, compare_index_specs, compare_shard_keys

log = logging.getLogger("mongoferry.verify")

#: Smallest range a big collection is cut into.
MIN_PARTITION_DOCS: Final = 10_000

def _check_namespace(value: str, flag: str) -> None:
    db, dot, coll = value.partition(".")
    if not db or not dot or not coll or re.search(r'[/\\ "$\x00]', db):
        raise UsageError(f"{flag} {value!r} is not a namespace", "write DATABASE.COLLECTION")


def all_namespaces(client: Client, nsmap: NamespaceMap) -> list[str]:
    """Every non-system namespace on a server (the metadata database excluded), sorted."""
    out: list[str] = []
    for db in sorted(client.list_database_names()):
        if nsmap.is_system(f"{db}.x"):
            continue
        out.extend(f"{db}.{name}" for name in client[db].list_collection_names()
                   if not nsmap.is_system(f"{db}.{name}"))
    return sorted(out)


def source_of(nsmap: NamespaceMap, dst_ns: str) -> str | None:
    """The selected source namespace that ``dst_ns`` is the destination of (renames undone)."""
    inverse_coll = {v: k for k, v in nsmap.coll_renames.items()}
    inverse_db = {v: k for k, v in nsmap.db_renames.items()}
    db, coll = split_ns(dst_ns)
    origin = inverse_coll.get(dst_ns) or f"{inverse_db.get(db, db)}.{coll}"
    if nsmap.selected(origin) and nsmap.target(origin) == dst_ns:
        return origin
    return None


def target_of(ns: str, pairs: Sequence[Pair], s: VerifySettings, nsmap: NamespaceMap) -> str | None:
    """Where a source namespace went (for a view's ``viewOn``): its pair's destination; with
    explicit --src-namespace pairs, only those; otherwise the selection's renames."""
    explicit = {p.src_ns: p.dst_ns for p in pairs}
    if s.src_namespace:
        return explicit.get(ns)
    return explicit.get(ns) or nsmap.target(ns)


def pair_for_new_namespace(nsmap: NamespaceMap, side: str, ns: str) -> Pair | None:
    """The pair a namespace first seen after a check started belongs to (``side`` is where it
    appeared: ``"src"`` or ``"dst"``), or None when the selection leaves it out."""
    if side == "src":
        return Pair(ns, nsmap.target(ns)) if nsmap.selected(ns) else None
    origin = source_of(nsmap, ns)
    return Pair(origin, ns) if origin is not None else None


def explicit_pairs(s: VerifySettings, nsmap: NamespaceMap) -> list[Pair]:
    """The --src-namespace/--dst-namespace pairs, checked without asking a server (empty: the
    selection is --include/--exclude/--rename)."""
    if not (s.src_namespace or s.dst_namespace):
        return []
    if s.include or s.exclude or s.rename:
        raise UsageError("--src-namespace/--dst-namespace cannot be combined with --include, --exclude "
                         "or --rename", "use one way of choosing namespaces")
    if not s.src_namespace:
        raise UsageError("--dst-namespace needs --src-namespace", "give the source namespaces, in the same order")
    dsts = s.dst_namespace or s.src_namespace
    if len(dsts) != len(s.src_namespace):
        raise UsageError(f"{len(s.src_namespace)} --src-namespace but {len(dsts)} --dst-namespace values",
                         "give one destination per source, in the same order (or none: same names)")
    for flag, values in (("--src-namespace", s.src_namespace), ("--dst-namespace", dsts)):
        for value in values:
            _check_namespace(value, flag)
            if nsmap.is_system(value):
                raise UsageError(f"{flag} {value!r} is a system namespace", "verify user collections only")
        if len(set(values)) != len(values):
            raise UsageError(f"{flag} names a namespace twice", "give each namespace once")
    return [Pair(a, b) for a, b in zip(s.src_namespace, dsts, strict=True)]


def resolve_pairs(s: VerifySettings, src: Client, dst: Client, nsmap: NamespaceMap) -> list[Pair]:
    """The namespace pairs to verify: explicit --src-namespace/--dst-namespace pairs (each held by
    at least one side), or every selected source namespace (--include/--exclude/--rename) plus the
    destination namespaces that a selected source namespace would have become but which the
    source does not hold."""
    pairs = explicit_pairs(s, nsmap)
    if pairs:
        with driver_errors("listing namespaces"):
            for pair in pairs:
                if _coll_info(src, pair.src_ns) is None and _coll_info(dst, pair.dst_ns) is None:
                    where = pair.src_ns if pair.src_ns == pair.dst_ns else f"{pair.src_ns} -> {pair.dst_ns}"
                    raise UsageError(f"--src-namespace {where}: neither the source nor the destination holds it",
                                     "check the spelling (DATABASE.COLLECTION)")
        return pairs
    with driver_errors("listing namespaces"):
        src_names = all_namespaces(src, nsmap)
        dst_names = all_namespaces(dst, nsmap)
    mapping = {ns: nsmap.target(ns) for ns in src_names if nsmap.selected(ns)}
    for ns in dst_names:
        origin = source_of(nsmap, ns)
        if origin is not None and origin not in mapping:
            mapping[origin] = ns
    for pattern in nsmap.include:
        if not any(ns == pattern or split_ns(ns)[0] == pattern for ns in mapping):
            raise UsageError(f"--include {pattern!r} matches no namespace on the source or the destination"
                             + (" (after --exclude)" if nsmap.exclude else ""), "check the spelling")
    owners: dict[str, str] = {}
    for a, b in sorted(mapping.items()):
        if b in owners:
            raise UsageError(f"two sources map onto one destination: {owners[b]!r} and {a!r} both become {b!r}",
                             "give each source its own destination with --rename")
        owners[b] = a
    return [Pair(a, b) for a, b in sorted(mapping.items())]


def refuse_self_comparison(s: VerifySettings, ends: Endpoints) -> None:
    """Verifying a deployment against itself proves nothing: refuse it, unless every pair compares
    two different namespaces (a copy made inside one deployment with --rename)."""
    if ends.same_as_source is None:
        return
    pairs = resolve_pairs(s, ends.src, ends.dst, ends.nsmap)
    if not pairs or any(p.src_ns == p.dst_ns for p in pairs):
        raise UsageError(f"--src and --dst are the same deployment ({ends.same_as_source.describe()}): every "
                         "namespace would be compared with itself",
                         "give --dst the deployment to verify (or --rename/--dst-namespace to compare two "
                         "namespaces of one deployment)")


@dataclass
class NamespacePlan:
    """What the metadata comparison of a pair found and whether its data can be compared."""

    findings: list[NsFinding]
    comparable: bool = False
    ranged: bool = False  # both sides have an `_id` index: sort and ranges use it
    collation: bool = False  # a default collation: the `_id` order may not be plain BSON order
    data: Pair | None = None  # where the documents are read (time-series: the bucket collections)
    count: int | None = None  # estimated source documents (counted only when needed)
    size: int | None = None  # the source documents' bytes (measured with the count)
    kind: str = "collection"


def finding_type(kind: str) -> FindingType:
    """compare.py's ``missing_on_dst``/``missing_on_src`` as the reference's finding types."""
    if kind == "missing_on_dst":
        return "missingOnDst"
    if kind == "missing_on_src":
        return "extraOnDst"
    return "content"


def _coll_info(client: Client, ns: str) -> RawBSONDocument | None:
    db, coll = split_ns(ns)
    infos = list(client[db].with_options(codec_options=RAW).list_collections(filter={"name": coll}))
    return cast(RawBSONDocument, infos[0]) if infos else None


def both_exist(engine: Engine, pair: Pair) -> bool:
    return _coll_info(engine.src, pair.src_ns) is not None and _coll_info(engine.dst, pair.dst_ns) is not None


def _with_view_on(info: RawBSONDocument, view_on: str) -> RawBSONDocument:
    decoded = bson.decode(info.raw, codec_options=DECODED)
    decoded.setdefault("options", {})["viewOn"] = view_on
    return RawBSONDocument(bson.encode(decoded), RAW)


def _indexes(client: Client, ns: str) -> list[dict[str, Any]]:
    db, coll = split_ns(ns)
    return [clean_index_spec(dict(ix))
            for ix in client[db].get_collection(coll, codec_options=DECODED).list_indexes()]


def compare_metadata(engine: Engine, pair: Pair, target: Callable[[str], str | None],
                     count: bool = False) -> NamespacePlan:
    """Compare the collection specs and indexes of a pair (``target`` maps a source namespace to
    its destination, for views' ``viewOn``). ``count``: also estimate the source's documents
    (free on MongoDB, a scan on some compatible servers)."""
    src_info = _coll_info(engine.src, pair.src_ns)
    dst_info = _coll_info(engine.dst, pair.dst_ns)
    if src_info is not None and src_info.get("type") == "view":
        view_on = (src_info.get("options") or {}).get("viewOn")
        if isinstance(view_on, str):
            db = split_ns(pair.src_ns)[0]
            mapped = target(f"{db}.{view_on}")
            if mapped is not None and split_ns(mapped)[0] == split_ns(pair.dst_ns)[0] \
                    and split_ns(mapped)[1] != view_on:
                src_info = _with_view_on(src_info, split_ns(mapped)[1])
    findings: list[NsFinding] = []
    for diff in compare_collection_specs(src_info, dst_info):
        findings.append(NsFinding(finding_type(diff.kind), pair.src_ns, pair.dst_ns, diff.aspect, diff.component,
                                  diff.detail))
    if src_info is None or dst_info is None:
        return NamespacePlan(findings)
    if is_sharded(engine, "src") and is_sharded(engine, "dst"):
        key_diff = compare_shard_keys(shard_key(engine.src, pair.src_ns), shard_key(engine.dst, pair.dst_ns))
        if key_diff is not None:
            findings.append(NsFinding(finding_type(key_diff.kind), pair.src_ns, pair.dst_ns, key_diff.aspect,
                                      None, None if key_diff.kind.startswith("missing") else key_diff.detail))
    kind_name = str(src_info.get("type", "collection"))
    src_opts = src_info.get("options") or {}
    dst_opts = dst_info.get("options") or {}
    comparable = (kind_name in ("collection", "timeseries") and dst_info.get("type", "collection") == kind_name
                  and bool(src_opts.get("capped", False)) == bool(dst_opts.get("capped", False)))
    plan = NamespacePlan(findings, comparable, kind=kind_name,
                         collation=bool(src_opts.get("collation")) or bool(dst_opts.get("collation")), data=pair)
    if kind_name == "timeseries":  # MongoDB: measurements are compared as their raw buckets, like the reference
        (sdb, scoll), (ddb, dcoll) = split_ns(pair.src_ns), split_ns(pair.dst_ns)
        plan.data = Pair(f"{sdb}.system.buckets.{scoll}", f"{ddb}.system.buckets.{dcoll}")
    if not comparable:
        return plan
    src_ix = _indexes(engine.src, pair.src_ns)
    dst_ix = _indexes(engine.dst, pair.dst_ns)
    for ix in compare_index_specs(src_ix, dst_ix):
        findings.append(NsFinding(finding_type(ix.kind), pair.src_ns, pair.dst_ns, "index", ix.name,
                                  None if ix.kind.startswith("missing") else ix.detail))
    plan.ranged = (any(ix.get("name") == "_id_" for ix in src_ix) and any(ix.get("name") == "_id_" for ix in dst_ix)
                   and kind_name == "collection")
    if count:
        estimate_count(engine, plan)
        plan.size = data_size(engine.src, plan.data.src_ns) if plan.data else 0
    return plan


def is_sharded(engine: Engine, side: str) -> bool:
    """Is ``side`` a sharded cluster, reached through mongos (``hello`` says ``isdbgrid``)?"""
    if side not in engine.sharded:
        client = engine.src if side == "src" else engine.dst
        engine.sharded[side] = client.admin.command("hello").get("msg") == "isdbgrid"
    return engine.sharded[side]


def shard_key(client: Client, ns: str) -> dict[str, Any] | None:
    """A collection's shard key from ``config.collections`` (None: not sharded)."""
    entry = client["config"].get_collection("collections", codec_options=DECODED).find_one({"_id": ns})
    if entry is None or entry.get("dropped") or not isinstance(entry.get("key"), dict):
        return None
    return dict(entry["key"])


def estimate_count(engine: Engine, plan: NamespacePlan) -> int:
    if plan.count is None:
        plan.count = int(plan.data.src_coll(engine.src).estimated_document_count()) if plan.data else 0
    return plan.count


def data_size(client: Client, ns: str) -> int | None:
    """The uncompressed bytes of a collection's documents, from ``$collStats`` (summed over
    shards; O(1) on MongoDB). None when the server reports no size: the deprecated ``collStats``
    command is not asked, because the servers without ``$collStats`` sizes answer it with a scan."""
    db, coll = split_ns(ns)
    handle = client[db].get_collection(coll, codec_options=DECODED)
    total = 0
    try:
        for shard in handle.aggregate([{"$collStats": {"storageStats": {"scale": 1}}}]):
            total += int((shard.get("storageStats") or {}).get("size") or 0)
    except PyMongoError:
        return None
    return total or None


def plan_ranges(engine: Engine, pair: Pair, plan: NamespacePlan, workers: int, partition_docs: int
                ) -> list[Partition]:
    """``_id`` ranges of the source for parallel comparison (one for small collections)."""
    pair = plan.data or pair
    whole = partition.ranges(pair.src_ns, [])
    if not plan.ranged or workers == 1:
        return whole
    coll = pair.src_coll(engine.src, DECODED)
    if engine.ranges_cheap is None:  # before counting: on such servers a count is a scan as well
        cheap = ranges_are_cheap(coll)
        if cheap is None:
            return whole
        engine.ranges_cheap = cheap
        if not cheap:
            log.info("the source reads _id ranges by scanning the collection; comparing each collection as "
                     "one range", extra={"ns": pair.src_ns})
    if not engine.ranges_cheap:
        return whole
    count = estimate_count(engine, plan)
    if count <= partition_docs * workers * 2:
        target = min(partition_docs, max(MIN_PARTITION_DOCS, -(-count // (workers * 2))))
    else:
        target = partition_docs
    if count <= target:
        return whole
    return partition.plan(coll, pair.src_ns, count, target)


def ranges_are_cheap(coll: Any) -> bool | None:
    """Does the server walk the ``_id`` index for a sorted, bounded read? Some compatible servers
    scan the whole collection for every range (and say IXSCAN in explain), which would make each
    extra range cost a full scan. The probe reads the first ``_id`` in index order (a few
    milliseconds with an index walk) and compares it with an equality lookup of that ``_id``.
    None: the collection is empty, nothing was learnt."""
    started = time.perf_counter()
    try:
        first = list(coll.find({}, {"_id": 1}).sort("_id", 1).hint([("_id", 1)]).limit(1).max_time_ms(250))
    except ExecutionTimeout:
        return False
    ranged = time.perf_counter() - started
    if not first:
        return None
    started = time.perf_counter()
    coll.find_one({"_id": first[0]["_id"]}, {"_id": 1})
    point = time.perf_counter() - started
    return ranged < max(0.02, 20 * point)
