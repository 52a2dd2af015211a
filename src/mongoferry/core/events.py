"""The one internal event type every capture produces and every sink consumes.

A ChangeEvent is one change to one namespace, at one position of the source's
history. Capture code (change streams, oplog tailing, oplog files) is the only
code that builds them; appliers never see a raw change event or oplog entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bson import Timestamp

# "raw": a source document carried as the source wrote it, for a sink that publishes it so (publish-redis).
Op = Literal["insert", "replace", "update", "delete", "ddl", "noop", "raw"]
UpdateKind = Literal["oplog", "description"]


@dataclass(frozen=True, order=True)
class Position:
    """Where in the source's history an event sits. `ts` orders; `token` resumes a change stream.
    `index` orders events sharing one ts (the operations of one transaction or applyOps)."""

    ts: Timestamp
    index: int = 0
    token: dict[str, Any] | None = field(default=None, compare=False)

    def to_doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ts": self.ts, "index": self.index}
        if self.token is not None:
            d["token"] = self.token
        return d

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Position:
        return cls(ts=d["ts"], index=int(d.get("index", 0)), token=d.get("token"))


@dataclass(frozen=True)
class TxnId:
    """Identifies one transaction: its session and transaction number."""

    lsid: bytes  # the raw BSON of the lsid document, so it can be hashed and compared
    txn_number: int


@dataclass
class ChangeEvent:
    op: Op
    ns: str  # "db.coll"; for database-level DDL, "db.$cmd"
    position: Position
    doc_id: Any = None  # the _id; None for DDL and no-ops
    has_id: bool = False
    document: Any = None  # full document for insert/replace (dict or RawBSONDocument)
    update: dict[str, Any] | None = None  # update: oplog `o` or {updatedFields, removedFields, …}
    update_kind: UpdateKind | None = None
    ddl: dict[str, Any] | None = None  # the command, in oplog form: {create: …}, {drop: …}, …
    txn: TxnId | None = None
    wall: Any = None  # datetime the source wrote it, for lag
    from_migrate: bool = False
    raw: Any = None  # op "raw": the change event or oplog entry itself

    @property
    def db(self) -> str:
        return self.ns.partition(".")[0]

    @property
    def coll(self) -> str:
        return self.ns.partition(".")[2]


Unit = list[ChangeEvent]  # applied atomically: one event, or every event of one transaction


@dataclass
class Batch:
    """What a capture hands the pipeline at a time: apply units in source order, and the position
    to save once every unit is applied. Oplog captures also keep the raw entries they read (`entries`,
    in order, transaction and no-op entries included), so an archive can write real oplog entries."""

    units: list[Unit] = field(default_factory=list)
    idle: bool = False  # the source had nothing more when this batch ended
    position: Position | None = None
    entries: list[Any] = field(default_factory=list)
    exhausted: bool = False  # a finite source (oplog files) has nothing more, ever

    @property
    def events(self) -> int:
        return sum(len(u) for u in self.units)

    @property
    def last_event(self) -> ChangeEvent | None:
        return self.units[-1][-1] if self.units and self.units[-1] else None
