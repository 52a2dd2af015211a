"""The names and encodings of a backup's objects (docs/backup.md, "Layout").

    manifest.json                         what is complete: snapshots, oplog chunks, coverage
    snapshots/<id>/<db>/<coll>.bson[.gz]   documents as the server stored them (mongodump's layout)
    snapshots/<id>/<db>/<coll>.metadata.json
    snapshots/<id>/oplog.bson[.gz]         the changes made while the snapshot was read
    snapshots/<id>/progress.json           the snapshot's copy progress (for a resume)
    oplog/<first>_<last>.bson[.gz]         oplog entries, by their first and last timestamp

Timestamps in names are `SECONDS.ORDINAL`, zero-padded so names sort in time order.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
from collections.abc import Collection, Iterator
from typing import IO, Any, Literal

import bson
from bson import Timestamp, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS

from mongoferry.core.model import CollectionSpec

Compression = Literal["gzip", "zstd", "none"]
SUFFIX: dict[str, str] = {"gzip": ".gz", "zstd": ".zst", "none": ""}
MANIFEST = "manifest.json"
CLUSTER_FILE = "cluster.json"  # a cluster backup: the names of its members, each a backup of its own


def ts_name(ts: Timestamp) -> str:
    return f"{ts.time:010d}.{ts.inc:010d}"


def ts_text(ts: Timestamp) -> str:
    """A timestamp as people read it: ISO time and the `SECONDS:ORDINAL` form --to-time takes."""
    when = dt.datetime.fromtimestamp(ts.time, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{when} ({ts.time}:{ts.inc})"


def snapshot_id(start: Timestamp, taken: Collection[str] = ()) -> str:
    """A snapshot's name (and folder) from its start; on a source idle since the last snapshot the
    start is the same, so the next one gets `.2`, `.3`…: two snapshots never share a folder."""
    base = dt.datetime.fromtimestamp(start.time, dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{start.inc}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}.{n}", n + 1
    return name


def snapshot_key(snapshot: str, rel: str) -> str:
    return f"snapshots/{snapshot}/{rel}"


def collection_keys(snapshot: str, ns: str, compression: Compression) -> tuple[str, str]:
    """The data and metadata keys of one namespace in a snapshot: as `mongodump --gzip` names them
    for gzip (`.bson.gz`, `.metadata.json.gz`: `mongorestore --gzip` reads only those), plain
    metadata otherwise."""
    db, _, coll = ns.partition(".")
    base = snapshot_key(snapshot, f"{db}/{coll}")
    return base + ".bson" + SUFFIX[compression], base + ".metadata.json" + (".gz" if compression == "gzip" else "")


def metadata_bytes(key: str, text: bytes) -> bytes:
    """A metadata file's bytes for its key (gzip'd under `.metadata.json.gz`)."""
    return compress(text, "gzip") if key.endswith(".gz") else text


def read_metadata(key: str, data: bytes) -> bytes:
    return decompress(data, "gzip") if key.endswith(".gz") else data


def chunk_key(first: Timestamp, last: Timestamp, compression: Compression) -> str:
    return f"oplog/{ts_name(first)}_{ts_name(last)}.bson{SUFFIX[compression]}"


def compression_of(key: str) -> Compression:
    if key.endswith(".gz"):
        return "gzip"
    if key.endswith(".zst"):
        return "zstd"
    return "none"


# ------------------------------------------------------------------ compressed streams
def open_writer(raw: IO[bytes], compression: Compression) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    return raw


def open_reader(raw: IO[bytes], compression: Compression) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=False)
    return raw


def compress(data: bytes, compression: Compression) -> bytes:
    out = io.BytesIO()
    writer = open_writer(out, compression)
    writer.write(data)
    if writer is not out:
        writer.close()
    return out.getvalue()


def decompress(data: bytes, compression: Compression) -> bytes:
    if compression == "none":
        return data
    return open_reader(io.BytesIO(data), compression).read()


class BadArchiveFile(ValueError):
    pass


def iter_bson(stream: IO[bytes]) -> Iterator[bytes]:
    """The BSON documents of a stream, one at a time; a cut-off document raises BadArchiveFile."""
    offset = 0
    while header := stream.read(4):
        if len(header) < 4:
            raise BadArchiveFile(f"it is truncated at byte {offset} (a document header is cut off)")
        length = int.from_bytes(header, "little", signed=True)
        if not 5 <= length <= 64 * 1024 * 1024:
            raise BadArchiveFile(f"it is corrupt at byte {offset} (a document claims {length} bytes)")
        body = stream.read(length - 4)
        if len(body) < length - 4:
            raise BadArchiveFile(f"it is truncated at byte {offset} (a {length}-byte document is cut off)")
        offset += length
        yield header + body


# ------------------------------------------------------------------ JSON documents
def dumps(doc: dict[str, Any], canonical: bool = False) -> bytes:
    if canonical:  # compact, as mongodump writes it
        return json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS, separators=(",", ":")).encode()
    return json_util.dumps(doc, json_options=RELAXED_JSON_OPTIONS, indent=1).encode()


def loads(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json_util.loads(data, json_options=CANONICAL_JSON_OPTIONS)
    return doc


def metadata_json(spec: CollectionSpec, view_on: str | None = None) -> bytes:
    """A namespace's `<coll>.metadata.json` as mongodump writes it (canonical extended JSON)."""
    options = dict(spec.options)
    if view_on is not None:
        options["viewOn"] = view_on
    doc: dict[str, Any] = {"options": options, "indexes": [] if spec.kind == "view" else spec.indexes}
    doc["collectionName"] = spec.name
    doc["type"] = spec.kind
    return dumps(doc, canonical=True)


def spec_from_metadata(ns: str, data: bytes) -> CollectionSpec:
    """The namespace a `<coll>.metadata.json` describes (mongodump's or ours)."""
    doc = loads(data)
    options = dict(doc.get("options") or {})
    kind = str(doc.get("type") or ("view" if "viewOn" in options else "collection"))
    return CollectionSpec(ns=ns, kind=kind, options=options, indexes=[dict(ix) for ix in doc.get("indexes") or []])


def encode_entry(entry: Any) -> bytes:
    return entry.raw if hasattr(entry, "raw") else bson.encode(entry)
