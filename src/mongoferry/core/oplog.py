"""Turn decoded oplog entries into ChangeEvents and group them into atomic apply units.

Pure: no I/O and no client. Entries are what ``bson.decode`` yields (dicts); the formats are those
of the oplog-formats reference (sections 1.1 and 1.5), servers 4.4 to 8.0.

* :func:`entry_to_events` converts one entry on its own: CRUD, no-ops, DDL, view DDL (writes to
  ``<db>.system.views``) and ``applyOps`` expanded in order. It knows nothing about the entries
  around it, so it expands a ``partialTxn`` or ``prepare`` applyOps like any other and ignores
  ``commitTransaction``/``abortTransaction``.
* :class:`TransactionAssembler` reads a stream of entries in ``ts`` order and returns *apply units*:
  lists of events the caller applies atomically. It buffers multi-entry and prepared transactions
  until they commit (or drops them when they abort), and groups the SecantusDB transaction dialect.
* :func:`parse_oplog_limit` and :func:`entry_sort_key` are small helpers for oplog files.

Refused operations raise :class:`UnsupportedOplogEntry`; a transaction whose start was never read
raises :class:`~mongoferry.core.errors.InconsistencyError`, because applying the rest would lose writes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bson
from bson import Timestamp

from mongoferry.core.diff_apply import DiffFormatError, classify_update
from mongoferry.core.errors import InconsistencyError, UsageError
from mongoferry.core.events import ChangeEvent, Op, Position, TxnId, UpdateKind

__all__ = [
    "TransactionAssembler",
    "UnsupportedOplogEntry",
    "entry_sort_key",
    "entry_to_events",
    "parse_oplog_limit",
]


class UnsupportedOplogEntry(InconsistencyError):
    """An oplog entry a replayer must refuse rather than skip: ``xi``/``xd``, an unknown ``op``, an
    unknown command, or an entry too malformed to replay. Skipping it could silently lose data."""


# Commands on <db>.$cmd whose `o` is `{<command>: <collection name>, ...}` and pass through as written.
_COLLECTION_COMMANDS = frozenset(
    {"create", "drop", "createIndexes", "dropIndexes", "collMod", "emptycapped", "convertToCapped"}
)
# Commands that change no data by themselves: an index build is replayed from its commitIndexBuild,
# and transaction control is the assembler's business.
_NO_EVENT_COMMANDS = frozenset({"startIndexBuild", "abortIndexBuild", "commitTransaction", "abortTransaction"})

_TXN_COMMANDS = frozenset({"applyOps", "commitTransaction", "abortTransaction"})

_UINT32_MAX = 2**32 - 1
_NULL_TS = Timestamp(0, 0)
_OPLOG_LIMIT = re.compile(r"([0-9]+)(?::([0-9]+))?")

_REPORT_HINT = "mongoferry cannot replay it; please report it with the oplog entry"


# ---------------------------------------------------------------------------------------------
# One entry -> events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What the ops of one top-level entry share: inner applyOps ops have no ts/wall/session."""

    ts: Timestamp
    wall: Any
    txn: TxnId | None
    from_migrate: bool


class _Builder:
    def __init__(self, base_index: int) -> None:
        self.base_index = base_index
        self.events: list[ChangeEvent] = []

    def add(
        self,
        env: _Envelope,
        op: Op,
        ns: str,
        *,
        from_migrate: bool,
        doc_id: Any = None,
        has_id: bool = False,
        document: Any = None,
        update: dict[str, Any] | None = None,
        update_kind: UpdateKind | None = None,
        ddl: dict[str, Any] | None = None,
    ) -> None:
        self.events.append(
            ChangeEvent(
                op=op,
                ns=ns,
                position=Position(ts=env.ts, index=self.base_index + len(self.events)),
                doc_id=doc_id,
                has_id=has_id,
                document=document,
                update=update,
                update_kind=update_kind,
                ddl=ddl,
                txn=env.txn,
                wall=env.wall,
                from_migrate=from_migrate,
            )
        )


def entry_to_events(entry: Mapping[str, Any], *, base_index: int = 0) -> list[ChangeEvent]:
    """Convert one decoded oplog entry into events, positioned at ``Position(entry["ts"], index)``.

    ``index`` counts from ``base_index`` over the events produced; an ``applyOps`` is expanded in
    order, nested ones depth-first, every inner op inheriting the outer ``ts``, ``wall``, session
    (``txn``) and ``fromMigrate``. Entries that change nothing by themselves (``startIndexBuild``,
    ``abortIndexBuild``, ``commitTransaction``, ``abortTransaction``, the creation of
    ``<db>.system.views``) give ``[]``. Raises :class:`UnsupportedOplogEntry` for ops and commands
    a replayer must refuse.
    """
    ts = entry.get("ts")
    if not isinstance(ts, Timestamp):
        raise _unsupported(entry, None, "the entry has no Timestamp 'ts'", _REPORT_HINT)
    env = _Envelope(
        ts=ts, wall=entry.get("wall"), txn=_txn_id(entry, ts), from_migrate=entry.get("fromMigrate") is True
    )
    builder = _Builder(base_index)
    _convert(entry, env, builder)
    return builder.events


def _txn_id(entry: Mapping[str, Any], ts: Timestamp) -> TxnId | None:
    lsid, txn_number = entry.get("lsid"), entry.get("txnNumber")
    if lsid is None or txn_number is None:
        return None
    if not isinstance(lsid, Mapping) or not isinstance(txn_number, int) or isinstance(txn_number, bool):
        raise _unsupported(entry, ts, "'lsid' must be a document and 'txnNumber' an integer", _REPORT_HINT)
    return TxnId(lsid=bson.encode(lsid), txn_number=int(txn_number))


def _convert(entry: Mapping[str, Any], env: _Envelope, out: _Builder) -> None:
    op = entry.get("op")
    ns = entry.get("ns", "")
    if not isinstance(ns, str):
        raise _unsupported(entry, env.ts, "'ns' is not a string", _REPORT_HINT)
    from_migrate = env.from_migrate or entry.get("fromMigrate") is True
    if op == "n":
        out.add(env, "noop", ns, from_migrate=from_migrate)
    elif op in ("i", "u", "d"):
        if ns.partition(".")[2] == "system.views":
            _convert_view_write(entry, env, out, from_migrate)
        else:
            _convert_crud(entry, env, out, from_migrate)
    elif op == "c":
        _convert_command(entry, env, out, from_migrate)
    elif op in ("xi", "xd"):
        raise _unsupported(
            entry,
            env.ts,
            "global-index key operations are internal to newer server builds",
            "replay from a server without global indexes (4.4 to 8.0), or use a change-stream source",
        )
    else:
        raise _unsupported(entry, env.ts, "unknown oplog operation", _REPORT_HINT)


def _convert_crud(entry: Mapping[str, Any], env: _Envelope, out: _Builder, from_migrate: bool) -> None:
    op, ns = entry["op"], entry["ns"]
    o = _document(entry, "o", env.ts)
    if op == "i":
        out.add(env, "insert", ns, from_migrate=from_migrate, doc_id=o.get("_id"), has_id="_id" in o, document=o)
        return
    if op == "d":
        out.add(env, "delete", ns, from_migrate=from_migrate, doc_id=o.get("_id"), has_id="_id" in o)
        return
    o2 = entry.get("o2")
    if not isinstance(o2, Mapping) or "_id" not in o2:
        raise _unsupported(entry, env.ts, "an update without 'o2._id' names no document", _REPORT_HINT)
    doc_id = o2["_id"]
    if _update_kind(entry, o, env.ts) == "replacement":
        document = {"_id": doc_id, **{k: v for k, v in o.items() if k != "_id"}}
        out.add(env, "replace", ns, from_migrate=from_migrate, doc_id=doc_id, has_id=True, document=document)
    else:
        update = dict(o)
        out.add(
            env, "update", ns, from_migrate=from_migrate, doc_id=doc_id, has_id=True, update=update, update_kind="oplog"
        )


def _update_kind(entry: Mapping[str, Any], o: Mapping[str, Any], ts: Timestamp) -> str:
    try:
        return classify_update(o)
    except DiffFormatError as exc:
        raise _unsupported(entry, ts, f"malformed update: {exc}", _REPORT_HINT) from exc


def _convert_view_write(entry: Mapping[str, Any], env: _Envelope, out: _Builder, from_migrate: bool) -> None:
    """A write to <db>.system.views is view DDL: insert = create, update = collMod, delete = drop."""
    op, ns = entry["op"], entry["ns"]
    o = _document(entry, "o", env.ts)
    key = o if op != "u" else entry.get("o2")
    view_ns = key.get("_id") if isinstance(key, Mapping) else None
    db = ns.partition(".")[0]
    if not isinstance(view_ns, str) or not view_ns.startswith(db + ".") or view_ns == db + ".":
        raise _unsupported(entry, env.ts, f"a view definition needs an _id '{db}.<view>'", _REPORT_HINT)
    view = view_ns[len(db) + 1 :]
    ddl: dict[str, Any]
    if op == "i":
        ddl = {"create": view, **{k: v for k, v in o.items() if k != "_id"}}
        if "viewOn" not in ddl or "pipeline" not in ddl:
            raise _unsupported(entry, env.ts, "a view definition needs 'viewOn' and 'pipeline'", _REPORT_HINT)
    elif op == "d":
        ddl = {"drop": view}
    else:
        fields = _view_update_fields(entry, o, env.ts)
        if "viewOn" not in fields or "pipeline" not in fields:
            raise _unsupported(
                entry,
                env.ts,
                "this update of a view definition does not carry both 'viewOn' and 'pipeline'",
                f"run collMod for view {view_ns!r} on the destination by hand, then resume after this entry",
            )
        ddl = {"collMod": view, "viewOn": fields["viewOn"], "pipeline": fields["pipeline"]}
    out.add(env, "ddl", view_ns, from_migrate=from_migrate, ddl=ddl)


def _view_update_fields(entry: Mapping[str, Any], o: Mapping[str, Any], ts: Timestamp) -> Mapping[str, Any]:
    """The top-level fields an update of a view document writes whole."""
    kind = _update_kind(entry, o, ts)
    if kind == "replacement":
        return o
    if kind == "v1":
        set_fields = o.get("$set")
        return set_fields if isinstance(set_fields, Mapping) else {}
    diff = o.get("diff")
    if not isinstance(diff, Mapping):
        return {}
    fields: dict[str, Any] = {}
    for section in ("u", "i"):
        values = diff.get(section)
        if isinstance(values, Mapping):
            fields.update(values)
    return fields


def _convert_command(entry: Mapping[str, Any], env: _Envelope, out: _Builder, from_migrate: bool) -> None:
    ns: str = entry["ns"]
    o = _document(entry, "o", env.ts)
    if not ns.endswith(".$cmd") or not o:
        raise _unsupported(entry, env.ts, "a command entry needs ns '<db>.$cmd' and a command", _REPORT_HINT)
    db = ns[: -len(".$cmd")]
    command = next(iter(o))
    if command == "applyOps":
        inner_ops = o["applyOps"]
        if not isinstance(inner_ops, list):
            raise _unsupported(entry, env.ts, "'applyOps' is not an array", _REPORT_HINT)
        inner_env = dataclasses.replace(env, from_migrate=from_migrate)
        for inner in inner_ops:
            if not isinstance(inner, Mapping):
                raise _unsupported(entry, env.ts, "an applyOps operation is not a document", _REPORT_HINT)
            _convert(inner, inner_env, out)
        return
    if command in _NO_EVENT_COMMANDS:
        return
    if command == "create" and o["create"] == "system.views":
        return  # the server creates it with the first view; views arrive as writes to it
    if command == "dropDatabase":
        out.add(env, "ddl", ns, from_migrate=from_migrate, ddl=dict(o))
        return
    if command == "renameCollection":
        source = o["renameCollection"]
        if not isinstance(source, str) or "." not in source:
            raise _unsupported(entry, env.ts, "'renameCollection' is not a namespace", _REPORT_HINT)
        out.add(env, "ddl", source, from_migrate=from_migrate, ddl=dict(o))
        return
    if command not in _COLLECTION_COMMANDS and command != "commitIndexBuild":
        raise _unsupported(
            entry,
            env.ts,
            f"unknown command {command!r}",
            "mongoferry cannot replay this command; apply its effect to the destination by hand and resume "
            "after this entry, or report it with the oplog entry",
        )
    coll = o[command]
    if not isinstance(coll, str) or not coll:
        raise _unsupported(entry, env.ts, f"{command!r} does not name a collection", _REPORT_HINT)
    ddl: dict[str, Any]
    if command == "commitIndexBuild":
        indexes = o.get("indexes")
        if not isinstance(indexes, list):
            raise _unsupported(entry, env.ts, "'commitIndexBuild' has no 'indexes' array", _REPORT_HINT)
        ddl = {"createIndexes": coll, "indexes": list(indexes)}
    elif command == "createIndexes" and "indexes" not in o:
        # The oplog writes one index spec inline; give the applier the same shape as commitIndexBuild.
        ddl = {"createIndexes": coll, "indexes": [{k: v for k, v in o.items() if k != "createIndexes"}]}
    elif command == "create":
        ddl = create_command(o)
    else:
        ddl = dict(o)
    out.add(env, "ddl", f"{db}.{coll}", from_migrate=from_migrate, ddl=ddl)


def create_command(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A `create` as a server's create command takes it. SecantusDB names a view's pipeline
    `viewPipeline` in its oplog entries and change events, a name no create command takes (a
    mongodump --oplog of it fails to replay too): `pipeline`, as MongoDB writes it."""
    return {("pipeline" if k == "viewPipeline" else k): v for k, v in fields.items()}


def _document(entry: Mapping[str, Any], name: str, ts: Timestamp) -> Mapping[str, Any]:
    value = entry.get(name)
    if not isinstance(value, Mapping):
        raise _unsupported(entry, ts, f"'{name}' is not a document", _REPORT_HINT)
    return value


def _unsupported(entry: Mapping[str, Any], ts: Timestamp | None, reason: str, hint: str) -> UnsupportedOplogEntry:
    op = entry.get("op")
    o = entry.get("o")
    what = f"op {op!r}"
    if op == "c" and isinstance(o, Mapping) and o:
        what += f" command {next(iter(o))!r}"
    return UnsupportedOplogEntry(
        f"cannot replay oplog entry {what} on ns {entry.get('ns', '')!r} at {ts!r}: {reason}", hint
    )


# ---------------------------------------------------------------------------------------------
# Entries -> apply units
# ---------------------------------------------------------------------------------------------

_TxnKey = tuple[bytes, int]


@dataclass(slots=True)
class _OpenTxn:
    first_ts: Timestamp
    events: list[ChangeEvent]
    op_count: int  # raw applyOps operations read so far, to check the final entry's `count`
    prepared: bool


@dataclass(slots=True)
class _SecantusGroup:
    key: tuple[bytes, int, int, int]
    ts: Timestamp
    events: list[ChangeEvent]


class TransactionAssembler:
    """Group a stream of oplog entries (in ``ts`` order) into apply units.

    :meth:`feed` returns the units an entry completes, in the order they must be applied. A unit is
    a list of events the caller applies atomically; a non-transaction event is a unit of one.

    * A transaction ``applyOps`` (``lsid`` + ``txnNumber``, no ``multiOpType: 1``) without
      ``partialTxn``/``prepare`` completes a unit. ``partialTxn: true`` entries are buffered per
      ``(lsid, txnNumber)`` until the final entry (the one without ``partialTxn``, which carries
      ``count``). ``prepare: true`` buffers until ``{commitTransaction: 1}`` (the unit is emitted
      then) or ``{abortTransaction: 1}`` (it is discarded). One transaction stays one unit across
      collections and databases.
    * The events of a transaction that spans several entries are re-positioned at the entry that
      completes it (the last applyOps, or the commitTransaction entry), index 0..n-1 in transaction
      order, with that entry's ``wall``: the transaction became visible there, so a checkpoint
      taken after the unit moves past every entry the transaction used.
    * Non-transaction ``applyOps`` and ``multiOpType: 1`` (8.0 retryable vectored writes): each
      inner op is its own unit, in order.
    * A final entry whose earlier entries were never read (``prevOpTime`` set but nothing
      buffered, ``count`` not matching, or a commit without its prepare) raises
      :class:`InconsistencyError`: applying the rest would lose writes; start reading earlier.

    SecantusDB dialect: SecantusDB writes no ``applyOps`` for a transaction. Each op is its own
    i/u/d (or c) entry carrying ``lsid`` + ``txnNumber``, all with the commit's ``ts`` and written
    together. Consecutive entries with one ``(lsid, txnNumber, ts)`` form one unit, completed when an
    entry with another key arrives or when :meth:`flush` is called (call it when the cursor is idle:
    SecantusDB makes a transaction's entries visible together). A real server's retryable write
    (lsid + txnNumber + ``stmtId``) is a unit of its own straight away: real servers never share a
    ``ts``, and SecantusDB writes no ``stmtId``.

    Checkpoints: a saved resume position must stay strictly before :attr:`oldest_pending_ts`, the
    oldest entry still buffered, or a restart would never see the start of that transaction.
    An entry that raises leaves the assembler as it was.
    """

    def __init__(self) -> None:
        self._open: dict[_TxnKey, _OpenTxn] = {}
        self._group: _SecantusGroup | None = None

    def feed(self, entry: Mapping[str, Any]) -> list[list[ChangeEvent]]:
        """Read the next entry; return the apply units it completes (possibly none)."""
        key = _secantus_key(entry)
        if key is not None:
            ts: Timestamp = entry["ts"]
            group = self._group
            if group is not None and group.key == key:
                group.events.extend(entry_to_events(entry, base_index=len(group.events)))
                return []
            events = entry_to_events(entry)
            done = self.flush()
            self._group = _SecantusGroup(key=key, ts=ts, events=events)
            return done
        units = self._feed_server_entry(entry)
        return self.flush() + units

    def flush(self) -> list[list[ChangeEvent]]:
        """Complete the pending SecantusDB transaction, if any. Buffered applyOps transactions wait
        for their own final or commit entry and are not affected."""
        group, self._group = self._group, None
        return [group.events] if group is not None and group.events else []

    def pending(self) -> bool:
        """Whether entries are buffered (an unfinished transaction or SecantusDB group)."""
        return bool(self._open) or self._group is not None

    @property
    def oldest_pending_ts(self) -> Timestamp | None:
        """The ts of the oldest buffered entry, or None. Never checkpoint at or past it."""
        candidates = [txn.first_ts for txn in self._open.values()]
        if self._group is not None:
            candidates.append(self._group.ts)
        return min(candidates, key=_ts_key, default=None)

    def _feed_server_entry(self, entry: Mapping[str, Any]) -> list[list[ChangeEvent]]:
        o = entry.get("o")
        command = next(iter(o), None) if entry.get("op") == "c" and isinstance(o, Mapping) else None
        key = _txn_key(entry)
        if key is not None and isinstance(o, Mapping):
            if command == "applyOps" and entry.get("multiOpType") != 1:
                return self._transaction_ops(entry, o, key)
            if command == "commitTransaction":
                return self._commit(entry, key)
            if command == "abortTransaction":
                entry_to_events(entry)  # validates the entry; produces nothing
                self._open.pop(key, None)
                return []
        return [[event] for event in entry_to_events(entry)]

    def _transaction_ops(self, entry: Mapping[str, Any], o: Mapping[str, Any], key: _TxnKey) -> list[list[ChangeEvent]]:
        events = entry_to_events(entry)  # raises before anything is buffered
        ts: Timestamp = entry["ts"]
        partial, prepare = o.get("partialTxn") is True, o.get("prepare") is True
        txn = self._open.get(key)
        if txn is None and not _starts_transaction(entry):
            raise _missing_start(ts, "its earlier applyOps entries were not read")
        if txn is not None and txn.prepared:
            raise _missing_start(ts, "it continues a transaction that was already prepared")
        total = (txn.op_count if txn is not None else 0) + len(o["applyOps"])
        count = o.get("count")
        if not partial and isinstance(count, int) and count != total:
            raise _missing_start(ts, f"'count' is {count} but {total} operations were read")
        if partial or prepare:
            if txn is None:
                self._open[key] = _OpenTxn(first_ts=ts, events=events, op_count=total, prepared=prepare)
            else:
                txn.events.extend(events)
                txn.op_count, txn.prepared = total, prepare
            return []
        self._open.pop(key, None)
        return _completed_unit((txn.events if txn is not None else []) + events, entry)

    def _commit(self, entry: Mapping[str, Any], key: _TxnKey) -> list[list[ChangeEvent]]:
        entry_to_events(entry)  # validates the entry; produces nothing
        txn = self._open.get(key)
        if txn is None or not txn.prepared:
            raise _missing_start(entry["ts"], "its prepare entry was not read")
        del self._open[key]
        return _completed_unit(txn.events, entry)


def _txn_key(entry: Mapping[str, Any]) -> _TxnKey | None:
    lsid, txn_number = entry.get("lsid"), entry.get("txnNumber")
    if not isinstance(lsid, Mapping) or not isinstance(txn_number, int) or isinstance(txn_number, bool):
        return None
    return bson.encode(lsid), int(txn_number)


def _secantus_key(entry: Mapping[str, Any]) -> tuple[bytes, int, int, int] | None:
    """The grouping key of a SecantusDB transaction entry, or None for any other entry."""
    key = _txn_key(entry)
    ts = entry.get("ts")
    if key is None or "stmtId" in entry or not isinstance(ts, Timestamp):
        return None
    o = entry.get("o")
    if entry.get("op") == "c" and isinstance(o, Mapping) and next(iter(o), None) in _TXN_COMMANDS:
        return None
    return key[0], key[1], ts.time, ts.inc


def _starts_transaction(entry: Mapping[str, Any]) -> bool:
    """Whether this is a transaction's first entry: prevOpTime is null (or absent, as in 4.0)."""
    prev = entry.get("prevOpTime")
    return not isinstance(prev, Mapping) or prev.get("ts") == _NULL_TS


def _completed_unit(events: Sequence[ChangeEvent], completing: Mapping[str, Any]) -> list[list[ChangeEvent]]:
    ts: Timestamp = completing["ts"]
    wall = completing.get("wall")
    unit = [
        dataclasses.replace(event, position=Position(ts=ts, index=index), wall=wall)
        for index, event in enumerate(events)
    ]
    return [unit] if unit else []


def _missing_start(ts: Timestamp, reason: str) -> InconsistencyError:
    return InconsistencyError(
        f"incomplete transaction at {ts!r}: {reason}",
        "read the oplog from before the transaction's first entry (an earlier start position); "
        "replaying only part of it would lose writes",
    )


def _ts_key(ts: Timestamp) -> tuple[int, int]:
    return ts.time, ts.inc


# ---------------------------------------------------------------------------------------------
# Helpers for oplog files
# ---------------------------------------------------------------------------------------------


def parse_oplog_limit(text: str) -> Timestamp:
    """Parse ``SECONDS[:ORDINAL]`` like mongorestore's ``--oplogLimit`` (ordinal defaults to 0)."""
    match = _OPLOG_LIMIT.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"invalid oplog limit {text!r}: expected SECONDS[:ORDINAL], for example 1700000000:1",
            "give a Unix time in seconds, optionally followed by ':' and the ordinal within that second",
        )
    seconds, ordinal = int(match[1]), int(match[2] or 0)
    if seconds > _UINT32_MAX or ordinal > _UINT32_MAX:
        raise UsageError(
            f"invalid oplog limit {text!r}: seconds and ordinal must each be at most {_UINT32_MAX}",
            "give a Unix time in seconds, optionally followed by ':' and the ordinal within that second",
        )
    return Timestamp(seconds, ordinal)


def entry_sort_key(entry: Mapping[str, Any]) -> tuple[int, int]:
    """Sort key of an oplog entry: ``(ts.time, ts.inc)``."""
    ts: Timestamp = entry["ts"]
    return ts.time, ts.inc
