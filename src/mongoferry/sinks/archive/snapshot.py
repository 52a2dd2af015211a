"""The archive as a copy sink: a snapshot in mongodump's directory layout.

Each namespace's documents go, raw, into a spool file as they are read; when the copier finishes
the namespace (`create_indexes`), the file is stored under its name and its metadata.json written
after it, so a listed `.metadata.json` always has its `.bson` beside it. Views get a metadata.json
only, as mongodump writes them.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bson.raw_bson import RawBSONDocument

from mongoferry.core.model import CollectionSpec
from mongoferry.infra.storage import Storage
from mongoferry.sinks.archive.layout import (
    Compression,
    collection_keys,
    metadata_bytes,
    metadata_json,
    open_writer,
)


@dataclass
class _Open:
    spec: CollectionSpec
    path: Path
    raw: IO[bytes]
    out: IO[bytes]
    docs: int = 0
    bytes: int = 0


class ArchiveCopySink:
    def __init__(self, storage: Storage, snapshot: str, compression: Compression) -> None:
        self.storage = storage
        self.snapshot = snapshot
        self.compression = compression
        self.open: dict[str, _Open] = {}
        self.lock = threading.Lock()
        self.stored_docs = 0
        self.stored_bytes = 0

    def create(self, dst_ns: str, spec: CollectionSpec, view_on: str | None = None) -> None:
        _, meta_key = collection_keys(self.snapshot, dst_ns, self.compression)
        if spec.kind == "view":
            self.storage.put(meta_key, metadata_bytes(meta_key, metadata_json(spec, view_on)))
            return
        self.drop(dst_ns)
        digest = hashlib.sha1(dst_ns.encode()).hexdigest()[:12]
        fd, name = tempfile.mkstemp(prefix=f"{digest}-", suffix=".bson", dir=self.storage.spool())
        raw = open(fd, "wb")  # noqa: SIM115 - closed in create_indexes or drop
        with self.lock:
            self.open[dst_ns] = _Open(spec, Path(name), raw, open_writer(raw, self.compression))

    def drop(self, dst_ns: str) -> None:
        with self.lock:
            current = self.open.pop(dst_ns, None)
        if current is not None:
            _close(current)
            current.path.unlink(missing_ok=True)

    def insert_copied(self, dst_ns: str, docs: list[RawBSONDocument]) -> None:
        current = self.open[dst_ns]
        for doc in docs:
            current.out.write(doc.raw)
        current.docs += len(docs)
        current.bytes += sum(len(d.raw) for d in docs)

    def create_indexes(self, dst_ns: str, specs: Sequence[dict[str, Any]]) -> None:
        """The namespace is complete: store its documents, then its metadata (with every index)."""
        with self.lock:
            current = self.open.pop(dst_ns)
        _close(current)
        data_key, meta_key = collection_keys(self.snapshot, dst_ns, self.compression)
        self.storage.put_file(data_key, current.path)
        self.storage.put(meta_key, metadata_bytes(meta_key, metadata_json(current.spec)))
        with self.lock:
            self.stored_docs += current.docs
            self.stored_bytes += current.bytes

    def close(self) -> None:
        for ns in list(self.open):
            self.drop(ns)


def _close(current: _Open) -> None:
    if current.out is not current.raw:
        current.out.close()
    current.raw.close()
