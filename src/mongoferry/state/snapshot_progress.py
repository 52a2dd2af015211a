"""A backup snapshot's copy progress, kept beside its files (`snapshots/<id>/progress.json`).

The copier (pipeline/copier.py) keeps its job, collections and partitions here instead of in a
MongoDB metadata database: a backup writes nothing to the source and needs no other server. Every
change is written at once, atomically (the storage's put), so a restart sees the last one.
"""

from __future__ import annotations

import threading
from typing import Any

from mongoferry.core.model import Partition
from mongoferry.infra.storage import Storage
from mongoferry.sinks.archive.layout import dumps, loads, snapshot_key
from mongoferry.state.meta import Job


class SnapshotProgress:
    def __init__(self, storage: Storage, snapshot: str) -> None:
        self.storage = storage
        self.key = snapshot_key(snapshot, "progress.json")
        self.job: dict[str, Any] | None = None
        self.collections: dict[str, dict[str, Any]] = {}
        self.partitions: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        data = storage.get(self.key)
        if data is not None:
            doc = loads(data)
            self.job = doc.get("job")
            self.collections = {c["_id"]: c for c in doc.get("collections", [])}
            self.partitions = {p["_id"]: p for p in doc.get("partitions", [])}
            self._forget_unstored()

    def _forget_unstored(self) -> None:
        """A collection read to its end whose file was not stored before a restart is read again:
        its documents were in the spool of the process that stopped."""
        for ns, coll in self.collections.items():
            if coll.get("state") == "done":
                continue
            for p in self.partitions.values():
                if p["ns"] == ns and p.get("done"):
                    p.update(docs=0, bytes=0, done=False)

    @property
    def location(self) -> str:
        return f"the snapshot's progress ({self.storage.url}/{self.key})"

    def _save(self) -> None:
        doc = {"job": self.job, "collections": list(self.collections.values()),
               "partitions": list(self.partitions.values())}
        self.storage.put(self.key, dumps(doc, canonical=True))

    def load_job(self) -> Job | None:
        with self.lock:
            d = self.job
            if d is None:
                return None
            return Job(kind=d["kind"], fingerprint=d["fingerprint"], state=d["state"],
                       namespaces=dict(d.get("namespaces", {})), extra=dict(d.get("extra", {})))

    def start_job(self, job: Job) -> None:
        with self.lock:
            self.job = {"kind": job.kind, "fingerprint": job.fingerprint, "state": job.state,
                        "namespaces": dict(job.namespaces), "extra": dict(job.extra)}
            self.collections.clear()
            self.partitions.clear()
            self._save()

    def set_state(self, state: str, **extra: Any) -> None:
        with self.lock:
            assert self.job is not None
            self.job["state"] = state
            self.job.setdefault("extra", {}).update(extra)
            self._save()

    def save_collection(self, ns: str, doc: dict[str, Any]) -> None:
        with self.lock:
            self.collections[ns] = {**doc, "_id": ns}
            self._save()

    def update_collection(self, ns: str, **fields: Any) -> None:
        with self.lock:
            self.collections.setdefault(ns, {"_id": ns}).update(fields)
            self._save()

    def load_collections(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(self.collections[k]) for k in sorted(self.collections)]

    def save_partitions(self, ns: str, parts: list[Partition]) -> None:
        with self.lock:
            for key in [k for k, p in self.partitions.items() if p["ns"] == ns]:
                del self.partitions[key]
            for p in parts:
                self.partitions[p.id] = p.to_doc()
            self._save()

    def add_partition(self, p: Partition) -> None:
        self.checkpoint_partition(p)

    def load_partitions(self) -> list[Partition]:
        with self.lock:
            docs = sorted(self.partitions.values(), key=lambda d: (d["ns"], d["index"]))
            return [Partition.from_doc(dict(d)) for d in docs]

    def checkpoint_partition(self, p: Partition) -> None:
        with self.lock:
            self.partitions[p.id] = p.to_doc()
            self._save()

    def reset_partition(self, p: Partition) -> None:
        with self.lock:
            doc = self.partitions[p.id]
            doc.update(docs=0, bytes=0, done=False)
            doc.pop("last_id", None)
            self._save()
