"""Raw BSON for the verifier: pairing keys sorted as the server sorts ``_id``, exact ``$in``
filters, and values decoded for display."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import bson
from bson import json_util
from bson.decimal128 import Decimal128
from bson.raw_bson import RawBSONDocument

from mongoferry.infra.clients import RAW
from mongoferry.verify.compare import DISPLAY_CODEC, FIXED_SIZES, id_key_from_raw_document, iter_elements

#: Longest display text of a value (relaxed extended JSON) before it is cut.
MAX_VALUE_TEXT: Final = 512

_INT32: Final = struct.Struct("<i")
_INT64: Final = struct.Struct("<q")
_UINT64: Final = struct.Struct("<Q")
_DOUBLE: Final = struct.Struct("<d")

# The server's canonical type order (BSON "type brackets").
_CANON: Final[Mapping[int, int]] = {0xFF: -1, 0x06: 0, 0x0A: 5, 0x01: 10, 0x10: 10, 0x12: 10, 0x13: 10,
                                    0x02: 15, 0x0E: 15, 0x03: 20, 0x04: 25, 0x05: 30, 0x07: 35, 0x08: 40,
                                    0x09: 45, 0x11: 47, 0x0B: 50, 0x0C: 55, 0x0D: 60, 0x0F: 65, 0x7F: 127}


def fast_id_key(raw: bytes) -> bytes:
    """:func:`compare.id_key_from_raw_document`, without a walk when ``_id`` comes first."""
    if raw[5:9] == b"_id\x00":
        btype = raw[4]
        size = FIXED_SIZES.get(btype)
        if size is not None:
            return raw[4:5] + raw[9: 9 + size]
        if btype == 0x02:
            return raw[4:5] + raw[9: 13 + _INT32.unpack_from(raw, 9)[0]]
    return id_key_from_raw_document(raw)


def _number_key(btype: int, data: bytes, start: int) -> tuple[Any, ...]:
    if btype == 0x10:
        return (1, Decimal(_INT32.unpack_from(data, start)[0]))
    if btype == 0x12:
        return (1, Decimal(_INT64.unpack_from(data, start)[0]))
    if btype == 0x01:
        value = _DOUBLE.unpack_from(data, start)[0]
        return (0,) if value != value else (1, Decimal(value))
    dec = Decimal128.from_bid(data[start: start + 16]).to_decimal()
    return (0,) if dec.is_nan() else (1, dec)


def _value_sort_key(btype: int, data: bytes, start: int, end: int) -> Any:
    canon = _CANON.get(btype)
    if canon == 10:
        return _number_key(btype, data, start)
    if canon == 15 or btype == 0x0D:
        return data[start + 4: end - 1]
    if btype in (0x03, 0x04):
        return tuple((_CANON.get(t, 200), name, _value_sort_key(t, data, s, e))
                     for t, name, s, e in iter_elements(data, start))
    if btype == 0x05:
        return (_INT32.unpack_from(data, start)[0], data[start + 4], data[start + 5: end])
    if btype == 0x08:
        return data[start]
    if btype == 0x09:
        return _INT64.unpack_from(data, start)[0]
    if btype == 0x11:
        return _UINT64.unpack_from(data, start)[0]
    if btype == 0x0B:
        mid = data.index(b"\x00", start)
        return (data[start:mid], data[mid + 1: end - 1])
    return data[start:end]  # objectId, dbPointer, code with scope, null, min/max key


def id_sort_key(key: bytes) -> tuple[Any, ...]:
    """A sort key ordering pairing keys (type byte + raw value) as the server sorts ``_id``."""
    btype = key[0]
    return (_CANON.get(btype, 200), _value_sort_key(btype, key, 1, len(key)))


def _element(key: bytes, name: bytes) -> bytes:
    return key[:1] + name + b"\x00" + key[1:]


def _document(body: bytes) -> bytes:
    return _INT32.pack(len(body) + 5) + body + b"\x00"


def raw_id_in_filter(keys: Sequence[bytes]) -> RawBSONDocument:
    """``{_id: {$in: [...]}}`` holding the exact BSON values of the pairing keys."""
    array = _document(b"".join(_element(k, str(i).encode()) for i, k in enumerate(keys)))
    inner = _document(b"\x04$in\x00" + array)
    return RawBSONDocument(_document(b"\x03_id\x00" + inner), RAW)


def raw_id_document(key: bytes) -> RawBSONDocument:
    """``{_id: <value>}`` with the exact bytes of a pairing key: stored with a finding, the server
    sorts findings by it in its own ``_id`` order, with no decoding."""
    return RawBSONDocument(_document(_element(key, b"_id")), RAW)


def id_value(key: bytes) -> Any:
    """The ``_id`` value of a pairing key, decoded for display."""
    try:
        return bson.decode(_document(_element(key, b"_id")), codec_options=DISPLAY_CODEC)["_id"]
    except Exception:  # an odd value must not stop a report
        return {"$binary": key.hex()}


def to_json_value(value: Any, limit: int = MAX_VALUE_TEXT) -> Any:
    """A BSON value as relaxed extended JSON (a JSON-compatible value); long ones become text."""
    try:
        text = json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS)
    except Exception:
        text = json.dumps(repr(value))
    if len(text) > limit:  # the length tells two long values with one prefix apart
        return f"{text[:limit]}… ({len(text):,} characters)"
    return json.loads(text)


def split_batch(batch: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos, end = 0, len(batch)
    unpack = _INT32.unpack_from
    while pos < end:
        size: int = unpack(batch, pos)[0]
        out.append(batch[pos: pos + size])
        pos += size
    return out
