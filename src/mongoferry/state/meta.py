"""The metadata store: job identity and progress, in a MongoDB database.

Collections of the metadata database (`mongoferry_meta` on the destination
unless --meta is given):
- `jobs`:        one document `{_id: "job"}`: kind, fingerprint, state, namespaces.
- `collections`: one per source namespace: destination, kind, options, indexes, state.
- `partitions`:  one per `_id` range: bounds, `last_id` copied, docs, bytes, done.
- `checkpoints`: change-capture positions (sync).
A partition's `last_id` is written only after the batch ending at it has been
acknowledged by the destination, so everything up to it is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, ReplaceOne
from pymongo.database import Database

from mongoferry.core.events import Position
from mongoferry.core.model import Partition, utc_now
from mongoferry.infra.clients import DECODED, Client

JOB_ID = "job"


@dataclass
class Job:
    kind: str
    fingerprint: dict[str, Any]
    state: str = "initializing"
    namespaces: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class MetaStore:
    def __init__(self, client: Client, db_name: str) -> None:
        self.db: Database[dict[str, Any]] = client.get_database(db_name, codec_options=DECODED)
        self.jobs = self.db["jobs"]
        self.collections = self.db["collections"]
        self.partitions = self.db["partitions"]
        self.checkpoints = self.db["checkpoints"]
        self.recopies = self.db["recopies"]  # namespaces the replay copied again (DDL in the copy window)

    # --- job ---
    def load_job(self) -> Job | None:
        d = self.jobs.find_one({"_id": JOB_ID})
        if d is None:
            return None
        return Job(kind=d["kind"], fingerprint=d["fingerprint"], state=d["state"],
                   namespaces={n["src"]: n["dst"] for n in d.get("namespaces", [])}, extra=d.get("extra", {}))

    def start_job(self, job: Job) -> None:
        """Begin a new job: forget every earlier job's progress."""
        self.jobs.replace_one({"_id": JOB_ID}, self._job_doc(job), upsert=True)
        self.partitions.delete_many({})
        self.collections.delete_many({})
        self.checkpoints.delete_many({})
        self.recopies.delete_many({})
        self.partitions.create_index([("ns", ASCENDING), ("index", ASCENDING)])

    def _job_doc(self, job: Job) -> dict[str, Any]:
        return {"_id": JOB_ID, "kind": job.kind, "fingerprint": job.fingerprint, "state": job.state,
                "namespaces": [{"src": s, "dst": d} for s, d in job.namespaces.items()],
                "extra": job.extra, "updated": utc_now()}

    def set_state(self, state: str, **extra: Any) -> None:
        upd: dict[str, Any] = {"state": state, "updated": utc_now()}
        upd.update({f"extra.{k}": v for k, v in extra.items()})
        self.jobs.update_one({"_id": JOB_ID}, {"$set": upd})

    def set_extra(self, **extra: Any) -> None:
        self.jobs.update_one({"_id": JOB_ID}, {"$set": {f"extra.{k}": v for k, v in extra.items()}})

    # --- capture positions ---
    def save_checkpoint(self, name: str, position: Position, **extra: Any) -> None:
        self.checkpoints.replace_one({"_id": name}, {"_id": name, "position": position.to_doc(), **extra,
                                                     "saved": utc_now()}, upsert=True)

    def load_checkpoint(self, name: str) -> Position | None:
        d = self.checkpoints.find_one({"_id": name})
        return Position.from_doc(d["position"]) if d else None

    # --- collections ---
    def save_collection(self, ns: str, doc: dict[str, Any]) -> None:
        self.collections.replace_one({"_id": ns}, {"_id": ns, **doc}, upsert=True)

    def update_collection(self, ns: str, **fields: Any) -> None:
        self.collections.update_one({"_id": ns}, {"$set": fields})

    def load_collections(self) -> list[dict[str, Any]]:
        return list(self.collections.find().sort("_id", ASCENDING))

    # --- partitions ---
    def save_partitions(self, ns: str, parts: list[Partition]) -> None:
        self.partitions.delete_many({"ns": ns})
        if parts:
            self.partitions.bulk_write([ReplaceOne({"_id": p.id}, p.to_doc(), upsert=True) for p in parts])

    def load_partitions(self) -> list[Partition]:
        return [Partition.from_doc(d) for d in self.partitions.find().sort([("ns", 1), ("index", 1)])]

    def checkpoint_partition(self, p: Partition) -> None:
        upd: dict[str, Any] = {"docs": p.docs, "bytes": p.bytes, "done": p.done}
        if p.has_last:
            upd["last_id"] = p.last_id
        self.partitions.update_one({"_id": p.id}, {"$set": upd})

    def reset_partition(self, p: Partition) -> None:
        self.partitions.update_one({"_id": p.id}, {"$set": {"docs": 0, "bytes": 0, "done": False},
                                                    "$unset": {"last_id": ""}})
