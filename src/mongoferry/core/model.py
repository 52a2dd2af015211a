"""Model types shared by the layers: a collection's description, a copy partition, timestamps.

Pure data (bson only): the source side fills them, sinks and the metadata store read them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from bson.codec_options import DEFAULT_CODEC_OPTIONS, CodecOptions, DatetimeConversion

# Decoded documents keep field order (dict) and survive dates outside datetime's range.
DECODED: CodecOptions[dict[str, Any]] = DEFAULT_CODEC_OPTIONS.with_options(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO
)


def utc_now() -> dt.datetime:
    """The time stamps of the metadata database (timezone-aware UTC)."""
    return dt.datetime.now(dt.UTC)


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



@dataclass
class Partition:
    id: str
    ns: str
    index: int
    lower: Any = None  # None: from the start (MinKey included)
    upper: Any = None  # None: to the end (MaxKey included)
    has_lower: bool = False
    has_upper: bool = False
    natural: bool = False  # copied in $natural order, restarted whole on resume
    descending: bool = False  # read from the collection's end down, to meet an ascending reader
    last_id: Any = None
    has_last: bool = False
    docs: int = 0
    bytes: int = 0
    done: bool = False

    def to_doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"_id": self.id, "ns": self.ns, "index": self.index, "natural": self.natural,
                             "docs": self.docs, "bytes": self.bytes, "done": self.done}
        if self.has_lower:
            d["lower"] = self.lower
        if self.has_upper:
            d["upper"] = self.upper
        if self.has_last:
            d["last_id"] = self.last_id
        if self.descending:
            d["descending"] = True
        return d

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Partition:
        return cls(id=d["_id"], ns=d["ns"], index=d["index"], lower=d.get("lower"), upper=d.get("upper"),
                   has_lower="lower" in d, has_upper="upper" in d, natural=d.get("natural", False),
                   last_id=d.get("last_id"), has_last="last_id" in d, docs=d.get("docs", 0),
                   bytes=d.get("bytes", 0), done=d.get("done", False), descending=d.get("descending", False))

