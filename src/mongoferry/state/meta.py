"""The metadata store: jobs, their copy progress and one position per sink, in a MongoDB database.

Collections of the metadata database (`mongoferry_meta` on the destination unless --meta is
given); several jobs (`--job NAME`, by default the command's name) share it, each seeing only its
own documents (their `_id` starts with `<job>:`, and they carry `job`):
- `jobs`:        one per job, `_id` its name: kind, fingerprint, state, namespaces, extra.
- `collections`: one per source namespace: destination, kind, options, indexes, state, copiedAt.
- `partitions`:  one per `_id` range: bounds, `last_id` copied, docs, bytes, done.
- `checkpoints`: one per sink: the position up to which that sink has applied every change, and
                 the last change applied (to tell, on a restart, whether the source still has it).
- `recopies`:    namespaces the replay copied again (DDL during the copy).
A partition's `last_id` is written only after the batch ending at it has been acknowledged by the
destination, and a sink's position only after the sink applied everything before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pymongo import ASCENDING, ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database

from mongoferry.core.events import Position
from mongoferry.core.model import Partition, utc_now
from mongoferry.infra.clients import DECODED, Client

FINISHED_STATES = ("done", "committed")  # a new job of the same name starts over


@dataclass
class Job:
    kind: str
    fingerprint: dict[str, Any]
    state: str = "initializing"
    namespaces: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass
class SavedPosition:
    position: Position
    last_event: dict[str, Any] | None = None  # {ts, ns, id}: the last change the sink applied


class CopyState(Protocol):
    """What a copy (pipeline/copier.py) keeps of its progress: a MetaStore in a MongoDB database,
    or, for a backup, the snapshot's own progress object beside its files (state/snapshot_progress)."""

    @property
    def location(self) -> str: ...
    def load_job(self) -> Job | None: ...
    def start_job(self, job: Job) -> None: ...
    def set_state(self, state: str, **extra: Any) -> None: ...
    def save_collection(self, ns: str, doc: dict[str, Any]) -> None: ...
    def update_collection(self, ns: str, **fields: Any) -> None: ...
    def load_collections(self) -> list[dict[str, Any]]: ...
    def save_partitions(self, ns: str, parts: list[Partition]) -> None: ...
    def add_partition(self, p: Partition) -> None: ...
    def load_partitions(self) -> list[Partition]: ...
    def checkpoint_partition(self, p: Partition) -> None: ...
    def reset_partition(self, p: Partition) -> None: ...


class Scoped:
    """One job's view of a collection: `_id`s are prefixed with the job's name, hidden from callers."""

    def __init__(self, coll: Collection[dict[str, Any]], job: str) -> None:
        self.coll = coll
        self.job = job

    def key(self, name: str) -> str:
        return f"{self.job}:{name}"

    def _out(self, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is not None:
            doc["_id"] = str(doc["_id"]).partition(":")[2]
        return doc

    def get(self, name: str) -> dict[str, Any] | None:
        return self._out(self.coll.find_one({"_id": self.key(name)}))

    def all(self) -> list[dict[str, Any]]:
        return [d for d in (self._out(x) for x in self.coll.find({"job": self.job}).sort("_id", ASCENDING))
                if d is not None]

    def put(self, name: str, doc: dict[str, Any]) -> None:
        body = {k: v for k, v in doc.items() if k != "_id"}
        self.coll.replace_one({"_id": self.key(name)}, {"_id": self.key(name), "job": self.job, **body}, upsert=True)

    def set(self, name: str, **fields: Any) -> None:
        self.coll.update_one({"_id": self.key(name)}, {"$set": {"job": self.job, **fields}}, upsert=True)

    def clear(self) -> None:
        self.coll.delete_many({"job": self.job})


class MetaStore:
    def __init__(self, client: Client, db_name: str, job: str = "job") -> None:
        self.db: Database[dict[str, Any]] = client.get_database(db_name, codec_options=DECODED)
        self.job_name = job
        self.jobs = self.db["jobs"]
        self.collections = Scoped(self.db["collections"], job)
        self.partitions = Scoped(self.db["partitions"], job)
        self.checkpoints = Scoped(self.db["checkpoints"], job)
        self.recopies = Scoped(self.db["recopies"], job)

    @property
    def location(self) -> str:
        return f"the metadata database '{self.db.name}'"

    def job_names(self) -> list[str]:
        return sorted(str(d["_id"]) for d in self.jobs.find({}, {"_id": 1}))

    # --- job ---
    def load_job(self) -> Job | None:
        d = self.jobs.find_one({"_id": self.job_name})
        if d is None:
            return None
        return Job(kind=d["kind"], fingerprint=d["fingerprint"], state=d["state"],
                   namespaces={n["src"]: n["dst"] for n in d.get("namespaces", [])}, extra=d.get("extra", {}))

    def job_doc(self) -> dict[str, Any] | None:
        return self.jobs.find_one({"_id": self.job_name})

    def start_job(self, job: Job) -> None:
        """Begin this job anew: forget its earlier progress (other jobs' stays)."""
        self.jobs.replace_one({"_id": self.job_name}, self._job_doc(job), upsert=True)
        for scoped in (self.partitions, self.collections, self.checkpoints, self.recopies):
            scoped.clear()
        self.db["partitions"].create_index([("job", ASCENDING), ("ns", ASCENDING), ("index", ASCENDING)])
        for name in ("collections", "checkpoints", "recopies"):
            self.db[name].create_index("job")

    def _job_doc(self, job: Job) -> dict[str, Any]:
        return {"_id": self.job_name, "kind": job.kind, "fingerprint": job.fingerprint, "state": job.state,
                "namespaces": [{"src": s, "dst": d} for s, d in job.namespaces.items()],
                "extra": job.extra, "updated": utc_now()}

    def set_state(self, state: str, **extra: Any) -> None:
        upd: dict[str, Any] = {"state": state, "updated": utc_now()}
        upd.update({f"extra.{k}": v for k, v in extra.items()})
        self.jobs.update_one({"_id": self.job_name}, {"$set": upd})

    def set_extra(self, **extra: Any) -> None:
        self.jobs.update_one({"_id": self.job_name}, {"$set": {f"extra.{k}": v for k, v in extra.items()}})

    # --- positions, one per sink ---
    def save_position(self, sink: str, position: Position, last_event: dict[str, Any] | None = None) -> None:
        doc: dict[str, Any] = {"position": position.to_doc(), "saved": utc_now()}
        if last_event is not None:
            doc["lastEvent"] = last_event
        self.checkpoints.put(sink, doc)

    def load_position(self, sink: str) -> SavedPosition | None:
        d = self.checkpoints.get(sink)
        return SavedPosition(Position.from_doc(d["position"]), d.get("lastEvent")) if d else None

    # --- collections ---
    def save_collection(self, ns: str, doc: dict[str, Any]) -> None:
        self.collections.put(ns, doc)

    def update_collection(self, ns: str, **fields: Any) -> None:
        self.collections.set(ns, **fields)

    def load_collections(self) -> list[dict[str, Any]]:
        return self.collections.all()

    # --- partitions ---
    def save_partitions(self, ns: str, parts: list[Partition]) -> None:
        self.partitions.coll.delete_many({"job": self.job_name, "ns": ns})
        if parts:
            self.partitions.coll.bulk_write([self._saved(p) for p in parts])

    def add_partition(self, p: Partition) -> None:
        """One more partition of a namespace being copied (a second reader started while it runs)."""
        self.partitions.coll.bulk_write([self._saved(p)])

    def _saved(self, p: Partition) -> ReplaceOne[dict[str, Any]]:
        key = self.partitions.key(p.id)
        return ReplaceOne({"_id": key}, {**p.to_doc(), "_id": key, "job": self.job_name}, upsert=True)

    def load_partitions(self) -> list[Partition]:
        docs = self.partitions.coll.find({"job": self.job_name}).sort([("ns", 1), ("index", 1)])
        return [Partition.from_doc({**d, "_id": str(d["_id"]).partition(":")[2]}) for d in docs]

    def checkpoint_partition(self, p: Partition) -> None:
        upd: dict[str, Any] = {"docs": p.docs, "bytes": p.bytes, "done": p.done}
        if p.has_last:
            upd["last_id"] = p.last_id
        self.partitions.coll.update_one({"_id": self.partitions.key(p.id)}, {"$set": upd})

    def reset_partition(self, p: Partition) -> None:
        self.partitions.coll.update_one({"_id": self.partitions.key(p.id)},
                                        {"$set": {"docs": 0, "bytes": 0, "done": False}, "$unset": {"last_id": ""}})
