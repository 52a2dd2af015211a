"""Pure core of ``publish-redis``: what tulip/oplogtoredis (OTR) would publish.

Everything here is server-free. Given one raw oplog entry (decoded with a ``dict``
document class) or one change-stream event, it computes the publications redis-oplog
Meteor apps expect, byte for byte, plus the dedupe keys, the resume value and the Lua
script that publishes them (see /work/shared/reference/oplogtoredis-protocol.md).

Problems
--------
The two ``publications_from_*`` functions never raise on odd input. They return
``(publications, problems)``. Each problem is one human-readable line that starts with
a stable category and a colon, so a caller can log it and count it by category:

* ``malformed-entry`` - wrong field types, a missing ``ts``/``clusterTime``, a
  non-document ``applyOps`` element. That entry or element is dropped.
* ``missing-id`` - no ``_id`` (``o._id`` for i/d, ``o2._id`` for u). Dropped.
* ``unsupported-id`` - an ``_id`` that OTR cannot name a channel after. Dropped.
  OTR logs this one and counts it with status ``error``.
* ``bad-update`` - an update whose changed fields cannot be computed at all (for
  example a v2 ``diff`` that is not a document). Dropped.
* ``unprocessable-field`` - one part of an update could not be read. The publication
  is still made, without that part. OTR counts this in
  ``otr_oplog_unprocessable_changed_fields``.

Choices where the reference leaves room (each one also noted where it is made):

* JSON string escaping follows the Go that current OTR images are built with (the
  Dockerfile uses ``golang:1.24``). Since Go 1.22, ``encoding/json`` writes ``\\b`` and
  ``\\f`` as short escapes. Other C0 controls except ``\\n``, ``\\r`` and ``\\t`` become
  ``\\u00xx``. Pass ``pre_go122=True`` to :func:`go_json_string` for the older
  ``\\u0008``/``\\u000c`` bytes.
* Invalid UTF-8 is written as the six ASCII bytes ``\\ufffd``, as Go does; Go does not
  write a raw U+FFFD. In a Python ``str``, invalid UTF-8 can only appear as lone
  surrogates, and ``surrogateescape`` decoding gives one surrogate per invalid byte.
  Go writes one ``\\ufffd`` per invalid byte, so each surrogate code point becomes one
  ``\\ufffd``.
* ``meteor_ids=True`` changes only the per-document channel suffix, which then follows
  Meteor ``MongoID.idStringify``. With it, ids that Meteor can name are also
  published: numbers, booleans and null (see :func:`_render_id`).
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoferry.core.namespaces import split_ns
from mongoferry.sinks.redis.fields import (
    _as_document,
    _description_fields,
    _FieldError,
    _update_fields,
    flattened_update_fields,
)
from mongoferry.sinks.redis.go_json import (
    _HEX,
    PROBLEM_UNPROCESSABLE_FIELD,
    _es_number,
    _short_repr,
    _type_name,
    go_json_string,
)

__all__ = [
    "DEDUPE_PUBLISH_LUA",
    "DEFAULT_DEDUPE_TTL_SECONDS",
    "DEFAULT_METADATA_PREFIX",
    "PROBLEM_BAD_UPDATE",
    "PROBLEM_MALFORMED",
    "PROBLEM_MISSING_ID",
    "PROBLEM_UNPROCESSABLE_FIELD",
    "PROBLEM_UNSUPPORTED_ID",
    "Publication",
    "dedupe_key",
    "encode_channel",
    "flattened_update_fields",
    "go_json_string",
    "last_processed_key",
    "meteor_id_stringify",
    "parse_resume_value",
    "publications_from_change_event",
    "publications_from_oplog_entry",
    "resume_value",
    "script_keys_and_args",
    "write_shard",
]

DEFAULT_METADATA_PREFIX: Final = "oplogtoredis::"
DEFAULT_DEDUPE_TTL_SECONDS: Final = 150

PROBLEM_MALFORMED: Final = "malformed-entry"
PROBLEM_MISSING_ID: Final = "missing-id"
PROBLEM_UNSUPPORTED_ID: Final = "unsupported-id"
PROBLEM_BAD_UPDATE: Final = "bad-update"

_U64_MAX: Final = (1 << 64) - 1
# js-bson promotes an int64 to a JS Number only within +-2**53 (promoteLongs). Beyond
# that, Meteor gets a Long object, and idStringify throws on objects.
_JS_SAFE_INT: Final = 1 << 53


@dataclass(frozen=True)
class Publication:
    """One message for redis-oplog, as OTR would hand it to the dedupe script.

    ``channels`` holds the collection channel (``<ns>``) and then the document channel
    (``<ns>::<id>``). The script receives them joined with ``$`` (see
    :func:`script_keys_and_args`).
    """

    channels: tuple[str, ...]
    message: bytes
    dedupe_key: str
    ts: Timestamp
    tx_index: int


# --------------------------------------------------------------------------- ids


def _looks_like_object_id(s: str) -> bool:
    return len(s) == 24 and all(c in _HEX for c in s)


def meteor_id_stringify(id_value: Any) -> str:
    """Meteor ``MongoID.idStringify`` for the id types a BSON ``_id`` can have here.

    ObjectId gives its hex. A string stays as it is, unless it starts with ``-``,
    ``~`` or ``{`` or looks like an ObjectId hex (24 lowercase hex characters); then it
    gets a ``-`` prefix. ``''`` stays ``''``. Numbers, booleans and ``None`` become ``~``
    plus ``JSON.stringify``. Anything else raises ``TypeError``, as Meteor throws on
    objects. An int beyond +-2**53 raises too, because Meteor sees it as a Long object.
    A NaN or infinite float also raises: JavaScript would write ``~null``.
    """
    if isinstance(id_value, ObjectId):
        return str(id_value)
    if isinstance(id_value, str):
        if id_value and (id_value[0] in "-~{" or _looks_like_object_id(id_value)):
            return "-" + id_value
        return id_value
    if id_value is None:
        return "~null"
    if isinstance(id_value, bool):
        return "~true" if id_value else "~false"
    if isinstance(id_value, int):
        if -_JS_SAFE_INT <= id_value <= _JS_SAFE_INT:
            return "~" + str(int(id_value))
        raise TypeError(f"integer _id {id_value} is outside +-2**53, which Meteor cannot hold as a Number")
    if isinstance(id_value, float):
        if math.isfinite(id_value):
            return "~" + _es_number(id_value, go_negative_zero=False)
        raise TypeError(f"float _id {id_value!r} has no JSON form")
    raise TypeError(f"Meteor does not support {type(id_value).__name__} ids")


def _render_id(id_value: Any, meteor_ids: bool) -> tuple[str, str]:
    """Return ``(channel suffix, JSON of d._id)`` or raise ``TypeError``.

    OTR itself handles only strings (raw suffix, JSON string) and ObjectIds (hex
    suffix, ``{"$type":"oid","$value":hex}``). Any other type raises here.

    With ``meteor_ids`` the suffix is :func:`meteor_id_stringify`, and these are
    accepted too:

    * ints within +-2**53 (int32, or int64 that js-bson turns into a Number): body
      is the decimal;
    * finite doubles: body as Go would marshal a float64 (ES6 format), suffix
      ``~`` + ``JSON.stringify``, so ``5.0`` gives ``~5``, like the int ``5``, just
      as Meteor's JavaScript numbers would;
    * booleans and null: ``true``/``false``/``null``.

    That is the JSON that EJSON.parse on the Meteor side turns back into the same
    JavaScript value, so removals that use ``d._id`` directly still match.
    """
    if isinstance(id_value, str):
        suffix = meteor_id_stringify(id_value) if meteor_ids else id_value
        return suffix, go_json_string(id_value)
    if isinstance(id_value, ObjectId):
        hex_id = str(id_value)
        return hex_id, '{"$type":"oid","$value":"' + hex_id + '"}'
    if not meteor_ids:
        raise TypeError(f"expected string or ObjectID, got {_type_name(id_value)} instead")
    suffix = meteor_id_stringify(id_value)  # raises TypeError for what Meteor rejects
    if id_value is None:
        return suffix, "null"
    if isinstance(id_value, bool):
        return suffix, "true" if id_value else "false"
    if isinstance(id_value, int):
        return suffix, str(int(id_value))
    if isinstance(id_value, float):
        return suffix, _es_number(id_value, go_negative_zero=True)
    raise TypeError(f"Meteor does not support {_type_name(id_value)} ids")  # pragma: no cover


# --------------------------------------------------------------------------- keys


def _ts_u64(ts: Timestamp) -> int:
    return (ts.time << 32) | ts.inc


def resume_value(ts: Timestamp) -> str:
    """The ``lastProcessedEntry`` value: ``(T << 32) | I`` as a decimal string."""
    return str(_ts_u64(ts))


def parse_resume_value(s: str | bytes) -> Timestamp:
    """Inverse of :func:`resume_value`, as strict as Go's ``strconv.ParseUint(s, 10, 64)``.

    Accepts ASCII digits only: no sign, no spaces, no underscores. Raises ``ValueError``
    on anything else, or on a value above 2**64-1.
    """
    text = s.decode("ascii", "replace") if isinstance(s, bytes) else s
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid resume value {text!r}: expected a decimal unsigned 64-bit integer")
    value = int(text)
    if value > _U64_MAX:
        raise ValueError(f"invalid resume value {text!r}: out of the unsigned 64-bit range")
    return Timestamp(value >> 32, value & 0xFFFFFFFF)


def dedupe_key(ts: Timestamp, tx_index: int, metadata_prefix: str = DEFAULT_METADATA_PREFIX) -> str:
    """``<prefix>processed::<(T<<32)|I>::<txIdx>``."""
    return f"{metadata_prefix}processed::{_ts_u64(ts)}::{tx_index}"


def last_processed_key(shard: int = 0, metadata_prefix: str = DEFAULT_METADATA_PREFIX) -> str:
    """``<prefix>lastProcessedEntry.<shard>``."""
    return f"{metadata_prefix}lastProcessedEntry.{shard}"


def write_shard(db_name: str, parallelism: int) -> int:
    """OTR's write shard for a database (``OTR_WRITE_PARALLELISM``).

    ``k`` is the last 8 bytes of SHA-256(db name) read as a little-endian signed int64.
    The shard is ``((k % W) + W) % W`` in Go, which is plain ``k % W`` in Python.
    """
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1, got {parallelism}")
    digest = hashlib.sha256(db_name.encode("utf-8", "surrogateescape")).digest()
    k = int.from_bytes(digest[-8:], "little", signed=True)
    return k % parallelism


# --------------------------------------------------------------------------- Lua


DEDUPE_PUBLISH_LUA: Final = """\
-- KEYS[i]: dedupe key of publication i.
-- ARGV[1]: key expiry in whole seconds.
-- ARGV[2*i]: message of publication i; ARGV[2*i+1]: its channels joined with '$'.
-- Returns one 1 (published) or 0 (duplicate) per publication.
local ttl = ARGV[1]
local results = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == false then
    redis.call('SETEX', key, ttl, '1')
    local message = ARGV[2 * i]
    for channel in string.gmatch(ARGV[2 * i + 1], '([^$]+)') do
      redis.call('PUBLISH', channel, message)
    end
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
"""


def encode_channel(channel: str) -> bytes:
    """Channel name as bytes for Redis, restoring any undecodable bytes.

    If the name came from BSON decoded with ``surrogateescape``, each lone surrogate
    turns back into its original byte, the byte OTR would send.
    """
    try:
        return channel.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return channel.encode("utf-8", "surrogatepass")


def script_keys_and_args(
    publications: Sequence[Publication], ttl_seconds: int = DEFAULT_DEDUPE_TTL_SECONDS
) -> tuple[list[str], list[bytes | int]]:
    """``KEYS`` and ``ARGV`` for :data:`DEDUPE_PUBLISH_LUA`, as OTR builds them for one batch."""
    if ttl_seconds < 1:
        raise ValueError(f"ttl_seconds must be >= 1, got {ttl_seconds}")
    keys = [p.dedupe_key for p in publications]
    args: list[bytes | int] = [int(ttl_seconds)]
    for p in publications:
        args.append(p.message)
        args.append(b"$".join(encode_channel(c) for c in p.channels))
    return keys, args


# --------------------------------------------------------------------------- publications


def _message(event: str, id_json: str, fields: Sequence[str]) -> bytes:
    """``{"e":…,"d":{"_id":…},"f":[…]}``: the field order of OTR's Go struct."""
    parts = ",".join(go_json_string(f) for f in fields)
    return ('{"e":' + go_json_string(event) + ',"d":{"_id":' + id_json + '},"f":[' + parts + "]}").encode(
        "utf-8"
    )


_EVENT_FOR_OP: Final = {"i": "i", "u": "u", "d": "r"}


@dataclass
class _Run:
    ts: Timestamp
    deep_fields: bool
    meteor_ids: bool
    metadata_prefix: str
    denylist: Collection[str]
    publications: list[Publication] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    next_tx_index: int = 0

    def publish(
        self, op: str, ns: str, id_value: Any, tx_index: int, fields_of: Callable[[list[str]], list[str]]
    ) -> None:
        """Build one publication; ``fields_of`` is a callable returning the field list.

        Order as in OTR's ``processOplogEntry``: the system./config filter (done by the
        caller), then the id, then the changed fields.
        """
        try:
            suffix, id_json = _render_id(id_value, self.meteor_ids)
        except TypeError as exc:
            self.problems.append(f"{PROBLEM_UNSUPPORTED_ID}: {ns} (txIdx {tx_index}): {exc}")
            return
        field_problems: list[str] = []
        try:
            fields = fields_of(field_problems)
        except _FieldError as exc:
            self.problems.append(f"{PROBLEM_BAD_UPDATE}: {ns} (txIdx {tx_index}): {exc}")
            return
        self.problems.extend(
            f"{PROBLEM_UNPROCESSABLE_FIELD}: {ns} (txIdx {tx_index}): {p}" for p in field_problems
        )
        self.publications.append(
            Publication(
                channels=(ns, f"{ns}::{suffix}"),
                message=_message(_EVENT_FOR_OP[op], id_json, fields),
                dedupe_key=dedupe_key(self.ts, tx_index, self.metadata_prefix),
                ts=self.ts,
                tx_index=tx_index,
            )
        )


def _filtered(db: str, coll: str) -> bool:
    return coll.startswith("system.") or db == "config"


def _type_error(raw: Mapping[str, Any]) -> str | None:
    """The first field OTR's decoder would reject, as text, or None."""
    expected: tuple[tuple[str, tuple[type, ...], str], ...] = (
        ("ts", (Timestamp,), "a timestamp"),
        ("wall", (datetime.datetime, DatetimeMS), "a date"),
        ("op", (str,), "a string"),
        ("ns", (str,), "a string"),
        ("o", (Mapping, DBRef), "a document"),
        ("o2", (Mapping, DBRef), "a document"),
    )
    for name, types, label in expected:
        if name in raw and not isinstance(raw[name], types):
            return f"field {name!r} is a {_type_name(raw[name])}, expected {label}"
    return None


def _walk_oplog(raw: Mapping[str, Any], run: _Run, where: str) -> None:
    error = _type_error(raw)
    if error is not None:
        run.problems.append(f"{PROBLEM_MALFORMED}: {where}: {error}")
        return
    op: str = raw.get("op", "")
    ns: str = raw.get("ns", "")
    db, coll = split_ns(ns)
    if ns != "admin.$cmd" and db in run.denylist:
        return
    o = _as_document(raw.get("o")) or {}

    if op in _EVENT_FOR_OP:
        tx_index = run.next_tx_index
        run.next_tx_index += 1  # before the _id check, as in OTR
        id_holder = o if op != "u" else (_as_document(raw.get("o2")) or {})
        if "_id" not in id_holder:
            source = "o2._id" if op == "u" else "o._id"
            run.problems.append(f"{PROBLEM_MISSING_ID}: {ns} (txIdx {tx_index}): op {op!r} has no {source}")
            return
        if _filtered(db, coll):
            return

        def fields_of(problems: list[str]) -> list[str]:
            if op == "i":
                return list(o.keys())
            if op == "u":
                return _update_fields(o, run.deep_fields, problems)
            return []

        run.publish(op, ns, id_holder["_id"], tx_index, fields_of)
    elif op == "c" and ns == "admin.$cmd" and "applyOps" in o:
        ops = o["applyOps"]
        if not isinstance(ops, list):
            run.problems.append(
                f"{PROBLEM_MALFORMED}: {where}: applyOps is a {_type_name(ops)}, not an array"
            )
            return
        for position, element in enumerate(ops):
            element_where = f"{where} applyOps[{position}]"
            doc = _as_document(element)
            if doc is None:
                run.problems.append(f"{PROBLEM_MALFORMED}: {element_where} is a {_type_name(element)}")
                continue
            _walk_oplog(doc, run, element_where)
    # Any other command, noop ('n'), 'db' or unknown op publishes nothing.


def publications_from_oplog_entry(
    entry: Mapping[str, Any],
    *,
    deep_fields: bool = False,
    meteor_ids: bool = False,
    metadata_prefix: str = DEFAULT_METADATA_PREFIX,
    denylist: Collection[str] = (),
) -> tuple[list[Publication], list[str]]:
    """Publications OTR makes from one raw oplog entry, in order, plus problems.

    * ``i``/``u``/``d`` give at most one publication with txIdx 0.
    * A ``c`` entry on ``admin.$cmd`` with an ``applyOps`` array (a transaction) is
      flattened recursively, depth first. Every element gets the outer ``ts``. Each
      i/u/d element takes the next txIdx *before* its ``_id`` is checked, and
      before the system./config filter.
    * Other commands, noops and unknown ops give nothing.
    * Collections starting with ``system.`` and the ``config`` database are dropped
      silently.
    * ``denylist`` (database names, OTR's runtime denylist) is checked on each ``ns``
      before anything else, except ``admin.$cmd``. Denied elements use no txIdx.

    ``deep_fields`` is ``OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES``. ``meteor_ids``
    switches the document channel to Meteor's idStringify (see :func:`_render_id`).
    """
    ts = entry.get("ts")
    if not isinstance(ts, Timestamp):
        what = "missing" if ts is None else f"a {_type_name(ts)}"
        return [], [f"{PROBLEM_MALFORMED}: oplog entry ts is {what}, expected a timestamp"]
    run = _Run(ts, deep_fields, meteor_ids, metadata_prefix, denylist)
    _walk_oplog(entry, run, f"oplog entry {resume_value(ts)}")
    return run.publications, run.problems


_OP_FOR_OPERATION_TYPE: Final = {"insert": "i", "update": "u", "replace": "u", "delete": "d"}


def publications_from_change_event(
    event: Mapping[str, Any],
    *,
    tx_index: int,
    deep_fields: bool = False,
    meteor_ids: bool = False,
    metadata_prefix: str = DEFAULT_METADATA_PREFIX,
    denylist: Collection[str] = (),
) -> tuple[list[Publication], list[str]]:
    """The same as :func:`publications_from_oplog_entry`, from a change stream event.

    Only ``insert``, ``update``, ``replace`` and ``delete`` publish; other event
    types give nothing. ``clusterTime`` is the ts. ``tx_index`` is supplied by the
    caller: 0 outside transactions, otherwise the operation's position within its
    transaction. The dedupe keys match OTR's only when it counts as OTR does.

    Fields: insert and replace list the top-level keys of ``fullDocument``. An update
    with ``rawUpdateDescription`` (MongoDB 6.0+, ``showRawUpdateDescription``) is
    computed exactly like the oplog's ``o``. Without it, the fields come from
    ``updateDescription`` (see :func:`_description_fields`). That is close to OTR,
    not exact. In particular, deep mode lists truncated arrays, which OTR's deep
    converter drops.
    """
    operation_type = event.get("operationType")
    op = _OP_FOR_OPERATION_TYPE.get(operation_type) if isinstance(operation_type, str) else None
    if op is None:
        return [], []
    if isinstance(tx_index, bool) or not isinstance(tx_index, int) or tx_index < 0:
        raise ValueError(f"tx_index must be a non-negative int, got {tx_index!r}")

    ts = event.get("clusterTime")
    ns_doc = event.get("ns")
    db = ns_doc.get("db") if isinstance(ns_doc, Mapping) else None
    coll = ns_doc.get("coll") if isinstance(ns_doc, Mapping) else None
    where = f"{operation_type} event"
    if not isinstance(ts, Timestamp):
        return [], [f"{PROBLEM_MALFORMED}: {where}: clusterTime is {_type_name(ts)}, expected a timestamp"]
    if not isinstance(db, str) or not isinstance(coll, str):
        return [], [
            f"{PROBLEM_MALFORMED}: {where}: ns is {_short_repr(ns_doc)}, expected {{db, coll}} strings"
        ]
    ns = f"{db}.{coll}"
    if db in denylist:
        return [], []

    run = _Run(ts, deep_fields, meteor_ids, metadata_prefix, denylist)
    document_key = _as_document(event.get("documentKey"))
    if document_key is None or "_id" not in document_key:
        return [], [
            f"{PROBLEM_MISSING_ID}: {ns} (txIdx {tx_index}): {operation_type} event has no documentKey._id"
        ]
    if _filtered(db, coll):
        return [], []

    def fields_of(problems: list[str]) -> list[str]:
        if operation_type in ("insert", "replace"):
            full = _as_document(event.get("fullDocument"))
            if full is None:
                raise _FieldError(f"{operation_type} event has no fullDocument")
            return list(full.keys())
        if operation_type == "delete":
            return []
        raw = _as_document(event.get("rawUpdateDescription"))
        if raw is not None:
            return _update_fields(raw, deep_fields, problems)
        desc = _as_document(event.get("updateDescription"))
        if desc is None:
            raise _FieldError("update event has neither rawUpdateDescription nor updateDescription")
        return _description_fields(desc, deep_fields)

    run.publish(op, ns, document_key["_id"], tx_index, fields_of)
    return run.publications, run.problems
