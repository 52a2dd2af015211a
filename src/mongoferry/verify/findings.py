"""What the verifier reports: namespace pairs, findings, their text and JSON forms, and the
sink interface the engine reports to."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bson import json_util
from bson.codec_options import CodecOptions

from mongoferry.core.namespaces import split_ns
from mongoferry.infra.clients import RAW, Client
from mongoferry.verify.compare import BSON_TYPE_NAMES, FieldDiff, mismatch_detail
from mongoferry.verify.keys import id_value, to_json_value
from mongoferry.verify.spec_compare import index_patch_suppressed

FindingType = Literal["missingOnDst", "extraOnDst", "content"]

@dataclass(frozen=True)
class Pair:
    """A source namespace and the destination namespace it must equal."""

    src_ns: str
    dst_ns: str

    def src_coll(self, client: Client, codec: CodecOptions[Any] = RAW) -> Any:
        db, coll = split_ns(self.src_ns)
        return client[db].get_collection(coll, codec_options=codec)

    def dst_coll(self, client: Client, codec: CodecOptions[Any] = RAW) -> Any:
        db, coll = split_ns(self.dst_ns)
        return client[db].get_collection(coll, codec_options=codec)


@dataclass
class DocFinding:
    """A document missing on the destination, extra on it, or with different content."""

    type: FindingType
    ns: str
    dst_ns: str
    key: bytes
    diffs: list[FieldDiff] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": "document", "type": self.type, "namespace": self.ns,
                               "dstNamespace": self.dst_ns, "_id": to_json_value(id_value(self.key)),
                               "idType": id_type(self.key)}
        if self.type == "content":
            out["diffs"] = [diff_to_json(d) for d in self.diffs]
        return out


@dataclass
class NsFinding:
    """A difference of a namespace's existence, type, options or indexes."""

    type: FindingType
    ns: str
    dst_ns: str
    aspect: str  # exist | type | spec | readOnly | index | shard key
    component: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": "namespace", "type": self.type, "namespace": self.ns,
                               "dstNamespace": self.dst_ns, "aspect": self.aspect}
        if self.component is not None:
            out["component"] = self.component
        if self.detail is not None:
            out["detail"] = self.detail
        return out


Finding = DocFinding | NsFinding

_KIND_NAMES: Final = {"missing_on_dst": "missingOnDst", "missing_on_src": "missingOnSrc", "value": "value",
                      "type": "type", "order": "order"}


_NUMBER_TYPES: Final = frozenset({b"\x01", b"\x10", b"\x12", b"\x13"})


def id_type(key: bytes) -> str:
    """The BSON type name of a pairing key's ``_id`` (relaxed JSON shows int32 and int64 alike)."""
    return BSON_TYPE_NAMES.get(key[0], f"type 0x{key[0]:02x}") if key else "missing"


def tolerated(m: Mapping[str, Any], tolerances: frozenset[str]) -> bool:
    """An index difference (a stored finding or :meth:`NsFinding.to_json`) that ``indexSpecIgnore`` /
    ``--index-spec-ignore`` suppress (every patch path is tolerated)."""
    return (bool(tolerances) and m.get("aspect") == "index" and m.get("type") == "content"
            and index_patch_suppressed(str(m.get("detail") or ""), tolerances))


def diff_to_json(d: FieldDiff) -> dict[str, Any]:
    return {"path": d.path, "field": d.top_field, "kind": _KIND_NAMES.get(d.kind, d.kind),
            "srcType": d.src_type, "dstType": d.dst_type,
            "src": to_json_value(d.src_value), "dst": to_json_value(d.dst_value),
            "detail": mismatch_detail(d)}


def _short(value: Any, limit: int = 60) -> str:
    text = json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS) if value is not None else "null"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_diff(d: FieldDiff) -> str:
    where = d.path or "(document)"
    if d.kind == "missing_on_dst":
        return f"{where}: missing on destination (source {_short(d.src_value)}, {d.src_type})"
    if d.kind == "missing_on_src":
        return f"{where}: extra on destination ({_short(d.dst_value)}, {d.dst_type})"
    if d.kind == "order":
        return f"{where}: field order differs: source {d.src_value} vs destination {d.dst_value}"
    return (f"{where}: source {_short(d.src_value)} ({d.src_type}) != destination "
            f"{_short(d.dst_value)} ({d.dst_type})")


def describe_finding(f: Finding) -> list[str]:
    """A finding as report lines (the first line names it, the next ones give details)."""
    if isinstance(f, NsFinding):
        ns = f.ns if f.ns == f.dst_ns else f"{f.ns} -> {f.dst_ns}"
        if f.aspect == "exist":
            where = "missing on destination" if f.type == "missingOnDst" else "only on destination"
            return [f"{ns}: namespace {where}"]
        what = {"type": "collection type", "readOnly": "readOnly", "spec": "collection spec",
                "index": "index"}.get(f.aspect, f.aspect)
        comp = f" {f.component}" if f.component else ""
        if f.type == "missingOnDst":
            return [f"{ns}: {what}{comp} missing on destination"]
        if f.type == "extraOnDst":
            return [f"{ns}: {what}{comp} only on destination"]
        lines = [f"{ns}: {what}{comp} differs"]
        lines += [f"    {line}" for line in (f.detail or "").splitlines()]
        return lines
    ident = _short(id_value(f.key), 80)
    if f.key[:1] in _NUMBER_TYPES:  # 1 and NumberLong(1) are different documents: say which
        ident += f" ({id_type(f.key)})"
    if f.type == "missingOnDst":
        return [f"{f.ns}: document _id {ident} missing on destination"]
    if f.type == "extraOnDst":
        return [f"{f.dst_ns}: document _id {ident} only on destination"]
    return [f"{f.ns}: document _id {ident} differs", *(f"    {describe_diff(d)}" for d in f.diffs)]


class Sink:
    """Where the engine reports findings and progress (thread-safe implementations).

    The base keeps the document and byte totals; :meth:`counted` lets a subclass add its own
    accounting under the same lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.src_docs = self.dst_docs = self.src_bytes = self.dst_bytes = 0

    def doc(self, finding: DocFinding) -> None:
        raise NotImplementedError

    def namespace(self, finding: NsFinding) -> None:
        raise NotImplementedError

    def progress(self, pair: Pair, src_docs: int, dst_docs: int, src_bytes: int, dst_bytes: int) -> None:
        """Called after every merged batch with the increments since the last call."""
        with self.lock:
            self.src_docs += src_docs
            self.dst_docs += dst_docs
            self.src_bytes += src_bytes
            self.dst_bytes += dst_bytes
            self.counted(pair, src_docs, dst_docs, src_bytes, dst_bytes)

    def counted(self, pair: Pair, src_docs: int, dst_docs: int, src_bytes: int, dst_bytes: int) -> None:
        """Hook called by :meth:`progress` with the lock held."""
