"""Pure comparison core of ``mongoferry verify``: documents (collection specs and indexes are in
:mod:`mongoferry.verify.spec_compare`).

Nothing here talks to a server. The semantics follow mongodb-labs/migration-verifier
(document pairing and comparison, collection metadata and index comparison) so that its
users can switch:

* Documents are paired by a *type-exact* key (type byte + raw value bytes), so
  ``_id: 1`` (int32), ``NumberLong(1)`` and ``1.0`` never pair.
* A pair is equal when the raw bytes are identical; otherwise it is compared element by
  element on the raw BSON: a different BSON type is a difference (no numeric coercion),
  documents are compared ignoring field order at every depth, arrays by position, and any
  other value only by its raw bytes (so ``0.0 != -0.0`` and NaNs are equal only when
  bit-identical). ``bson.decode`` is never used for the comparison itself because it maps
  distinct BSON types onto one Python type (symbol and string both become ``str``).
* Unlike the reference, which names only the differing top-level field, every
  :class:`FieldDiff` carries the deepest differing path as well as its top-level field;
  :func:`mismatch_detail` and :func:`top_level_mismatches` give back the reference's text
  and granularity for the HTTP API.

Memory: the comparison walks the two raw buffers in place and keeps only offsets (plus
the per-level element lists of the documents currently being compared), so nothing
beyond the two documents and the findings is held. ``max_diffs`` bounds the findings.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON

from mongoferry.infra.config import CompareMode

__all__ = [
    "BSON_TYPE_NAMES",
    "DISPLAY_CODEC",
    "FIXED_SIZES",
    "CompareMode",
    "FieldDiff",
    "compare_raw_documents",
    "doc_key",
    "doc_key_for_value",
    "id_key_from_raw_document",
    "iter_elements",
    "mismatch_detail",
    "pairing_key",
    "top_level_mismatches",
]

FieldDiffKind = Literal["missing_on_dst", "missing_on_src", "value", "type", "order"]

# --------------------------------------------------------------------------------------
# BSON types
# --------------------------------------------------------------------------------------

_T_DOUBLE: Final = 0x01
_T_STRING: Final = 0x02
_T_DOCUMENT: Final = 0x03
_T_ARRAY: Final = 0x04
_T_BINARY: Final = 0x05
_T_REGEX: Final = 0x0B
_T_DBPOINTER: Final = 0x0C
_T_JAVASCRIPT: Final = 0x0D
_T_SYMBOL: Final = 0x0E
_T_CODE_W_SCOPE: Final = 0x0F
_T_NULL: Final = 0x0A

#: BSON type byte -> the type name the Go driver prints (used in mismatch details).
BSON_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x01: "double",
        0x02: "string",
        0x03: "embedded document",
        0x04: "array",
        0x05: "binary",
        0x06: "undefined",
        0x07: "objectID",
        0x08: "boolean",
        0x09: "UTC datetime",
        0x0A: "null",
        0x0B: "regex",
        0x0C: "dbPointer",
        0x0D: "javascript",
        0x0E: "symbol",
        0x0F: "code with scope",
        0x10: "32-bit integer",
        0x11: "timestamp",
        0x12: "64-bit integer",
        0x13: "128-bit decimal",
        0xFF: "min key",
        0x7F: "max key",
    }
)

# Value sizes of the fixed-width types.
_FIXED_SIZES: Final[Mapping[int, int]] = MappingProxyType(
    {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
     0xFF: 0, 0x7F: 0}
)
FIXED_SIZES: Final = _FIXED_SIZES
_STRING_LIKE: Final = frozenset({_T_STRING, _T_JAVASCRIPT, _T_SYMBOL})
_INT32: Final = struct.Struct("<i")

# Deeper than any server accepts (MongoDB stores at most 100 levels); guards recursion.
_MAX_DEPTH: Final = 400

DISPLAY_CODEC: Final[CodecOptions[dict[str, Any]]] = CodecOptions(
    document_class=dict,
    tz_aware=True,
    unicode_decode_error_handler="replace",
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)


class _Elem(NamedTuple):
    """One element of a raw document: type byte, raw name, value span in the buffer."""

    type: int
    name: bytes
    start: int
    end: int


def _read_i32(data: bytes, pos: int, limit: int) -> int:
    if pos + 4 > limit:
        raise InvalidBSON(f"truncated BSON: int32 at offset {pos} runs past {limit}")
    value: int = _INT32.unpack_from(data, pos)[0]
    return value


def _string_end(data: bytes, pos: int, limit: int) -> int:
    """End offset of a BSON string (int32 length incl. NUL, bytes, NUL) starting at pos."""
    n = _read_i32(data, pos, limit)
    end = pos + 4 + n
    if n < 1 or end > limit or data[end - 1] != 0:
        raise InvalidBSON(f"invalid BSON string at offset {pos}")
    return end


def _value_end(data: bytes, btype: int, pos: int, limit: int) -> int:
    """End offset of the value of type btype starting at pos; validates its framing."""
    size = _FIXED_SIZES.get(btype)
    if size is not None:
        end = pos + size
    elif btype in _STRING_LIKE:
        end = _string_end(data, pos, limit)
    elif btype in (_T_DOCUMENT, _T_ARRAY):
        n = _read_i32(data, pos, limit)
        end = pos + n
        if n < 5 or end > limit or data[end - 1] != 0:
            raise InvalidBSON(f"invalid embedded document at offset {pos}")
    elif btype == _T_CODE_W_SCOPE:
        n = _read_i32(data, pos, limit)
        end = pos + n
        if n < 14:
            raise InvalidBSON(f"invalid code with scope at offset {pos}")
    elif btype == _T_BINARY:
        n = _read_i32(data, pos, limit)
        if n < 0:
            raise InvalidBSON(f"invalid binary length at offset {pos}")
        end = pos + 5 + n
    elif btype == _T_REGEX:
        first = data.find(b"\x00", pos, limit)
        second = data.find(b"\x00", first + 1, limit) if first >= 0 else -1
        if second < 0:
            raise InvalidBSON(f"invalid regex at offset {pos}")
        end = second + 1
    elif btype == _T_DBPOINTER:
        end = _string_end(data, pos, limit) + 12
    else:
        raise InvalidBSON(f"unknown BSON type 0x{btype:02x} at offset {pos - 1}")
    if end > limit:
        raise InvalidBSON(f"truncated BSON value at offset {pos}")
    return end


def _iter_elements(data: bytes, off: int, limit: int) -> Iterator[_Elem]:
    """Walk the element list of the (sub)document whose int32 length sits at ``off``."""
    size = _read_i32(data, off, limit)
    end = off + size
    if size < 5 or end > limit or data[end - 1] != 0:
        raise InvalidBSON(f"invalid BSON document at offset {off}")
    pos = off + 4
    stop = end - 1
    while pos < stop:
        btype = data[pos]
        nul = data.find(b"\x00", pos + 1, stop)
        if nul < 0:
            raise InvalidBSON(f"unterminated field name at offset {pos + 1}")
        value_start = nul + 1
        value_end = _value_end(data, btype, value_start, stop)
        yield _Elem(btype, data[pos + 1 : nul], value_start, value_end)
        pos = value_end
    if pos != stop:
        raise InvalidBSON(f"BSON document at offset {off} overruns its length")


def iter_elements(data: bytes, off: int = 0) -> Iterator[_Elem]:
    """The elements (type, name, value span) of the (sub)document at ``off``, framing validated."""
    return _iter_elements(data, off, len(data))


def _top_elements(data: bytes) -> Iterator[_Elem]:
    size = _read_i32(data, 0, len(data))
    if size != len(data):
        raise InvalidBSON(f"BSON document length {size} != buffer length {len(data)}")
    return _iter_elements(data, 0, len(data))


def _decode_value(data: bytes, btype: int, start: int, end: int) -> Any:
    """Decode a single raw value for display; falls back to the raw bytes."""
    body = bytes((btype,)) + b"v\x00" + data[start:end]
    wrapped = _INT32.pack(len(body) + 5) + body + b"\x00"
    try:
        return bson.decode(wrapped, codec_options=DISPLAY_CODEC)["v"]
    except (InvalidBSON, ValueError, OverflowError):
        return data[start:end]


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _as_bytes(raw: bytes | bytearray | memoryview) -> bytes:
    return raw if isinstance(raw, bytes) else bytes(raw)


# --------------------------------------------------------------------------------------
# Pairing keys (reference 5.2)
# --------------------------------------------------------------------------------------


def doc_key(raw_id_bytes: bytes | bytearray | memoryview) -> bytes:
    """Type-exact pairing key of one raw ``_id`` *element* (type byte, name, value).

    The key is the type byte followed by the raw value bytes, so int32 1, int64 1,
    double 1.0, Decimal128("1") and symbol/string twins all get different keys.
    """
    data = _as_bytes(raw_id_bytes)
    if not data:
        raise InvalidBSON("empty BSON element")
    nul = data.find(b"\x00", 1)
    if nul < 0:
        raise InvalidBSON("unterminated field name in BSON element")
    end = _value_end(data, data[0], nul + 1, len(data))
    if end != len(data):
        raise InvalidBSON("trailing bytes after BSON element")
    return data[:1] + data[nul + 1 :]


def id_key_from_raw_document(raw: bytes | bytearray | memoryview) -> bytes:
    """Pairing key of the first ``_id`` of a raw document, found without decoding it.

    Raises KeyError when the document has no ``_id``.
    """
    data = _as_bytes(raw)
    for elem in _top_elements(data):
        if elem.name == b"_id":
            return bytes((elem.type,)) + data[elem.start : elem.end]
    raise KeyError("_id")


def doc_key_for_value(value: Any) -> bytes:
    """Pairing key of a decoded ``_id`` value (encoded as pymongo's ``bson`` does)."""
    return id_key_from_raw_document(bson.encode({"_id": value}))


def _lookup_dotted(data: bytes, path: str) -> _Elem | None:
    off = 0
    parts = path.split(".")
    for depth, part in enumerate(parts):
        wanted = part.encode("utf-8", "surrogateescape")
        found = next((e for e in _iter_elements(data, off, len(data)) if e.name == wanted), None)
        if found is None:
            return None
        if depth == len(parts) - 1:
            return found
        if found.type not in (_T_DOCUMENT, _T_ARRAY):
            return None
        off = found.start
    return None


def pairing_key(raw: bytes | bytearray | memoryview, shard_key_fields: Sequence[str] = ()) -> bytes:
    """Pairing key of a raw document: ``_id`` then the shard-key fields (reference 5.2).

    When the shard key already holds ``_id``, only the shard-key fields are used. Dotted
    fields are looked up through embedded documents (and arrays by index); an absent field
    counts as null. Each component is type byte + raw value bytes; BSON values are
    self-delimiting, so the concatenation is unambiguous.
    """
    data = _as_bytes(raw)
    if not shard_key_fields:
        return id_key_from_raw_document(data)
    _top_elements(data)  # validates the outer framing
    fields = list(shard_key_fields)
    if "_id" not in fields:
        fields.insert(0, "_id")
    parts: list[bytes] = []
    for field in fields:
        elem = _lookup_dotted(data, field)
        if elem is None:
            parts.append(bytes((_T_NULL,)))
        else:
            parts.append(bytes((elem.type,)) + data[elem.start : elem.end])
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# Document comparison (reference 5.3)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldDiff:
    """One difference between a source and a destination document.

    ``path`` is the dotted path of the deepest differing value (array positions as
    numbers, e.g. ``a.b.2``); ``top_field`` is its first component. Types are
    :data:`BSON_TYPE_NAMES` names (``None`` on the side where the value is absent) and the
    values are decoded for display only. For ``kind == "order"`` the path names the
    document whose field order differs (``""`` for the top level) and the values are the
    lists of its field names on each side.
    """

    path: str
    kind: FieldDiffKind
    src_type: str | None
    dst_type: str | None
    src_value: Any
    dst_value: Any
    top_field: str


class _Full(Exception):
    """Raised internally once ``max_diffs`` findings are collected."""


class _Comparer:
    def __init__(self, src: bytes, dst: bytes, max_diffs: int | None) -> None:
        self.src = src
        self.dst = dst
        self.smv = memoryview(src)
        self.dmv = memoryview(dst)
        self.max_diffs = max_diffs
        self.diffs: list[FieldDiff] = []
        # First container (in pre-order) whose element names differ in sequence.
        self.order: FieldDiff | None = None

    # -- findings ---------------------------------------------------------------------

    def _add(self, diff: FieldDiff) -> None:
        self.diffs.append(diff)
        if self.max_diffs is not None and len(self.diffs) >= self.max_diffs:
            raise _Full

    def _missing(self, side: Literal["src", "dst"], elem: _Elem, path: str, top: str) -> None:
        if side == "src":  # elem exists on src only
            value = _decode_value(self.src, elem.type, elem.start, elem.end)
            self._add(FieldDiff(path, "missing_on_dst", BSON_TYPE_NAMES[elem.type], None,
                                value, None, top))
        else:
            value = _decode_value(self.dst, elem.type, elem.start, elem.end)
            self._add(FieldDiff(path, "missing_on_src", None, BSON_TYPE_NAMES[elem.type],
                                None, value, top))

    def _note_order(self, btype: int, path: str | None, top: str | None,
                    s_names: list[bytes], d_names: list[bytes]) -> None:
        if self.order is None and s_names != d_names:
            name = BSON_TYPE_NAMES[btype]
            self.order = FieldDiff(path or "", "order", name, name, [_name(n) for n in s_names],
                                   [_name(n) for n in d_names], top or "")

    # -- walking ----------------------------------------------------------------------

    def compare_document(self, s_off: int, d_off: int, path: str | None, top: str | None,
                         depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise InvalidBSON("BSON nesting too deep")
        s_elems = list(_iter_elements(self.src, s_off, len(self.src)))
        d_elems = list(_iter_elements(self.dst, d_off, len(self.dst)))
        s_names = [e.name for e in s_elems]
        d_names = [e.name for e in d_elems]
        self._note_order(_T_DOCUMENT, path, top, s_names, d_names)

        def child(raw_name: bytes) -> tuple[str, str]:
            name = _name(raw_name)
            return (name, name) if path is None else (f"{path}.{name}", top or name)

        if s_names == d_names:  # common case: same fields, same order -> pair by position
            for se, de in zip(s_elems, d_elems, strict=True):
                self._compare_value(se, de, *child(se.name), depth)
            return

        # Match by name; the k-th occurrence of a (duplicated) name pairs with the k-th.
        d_positions: dict[bytes, list[int]] = {}
        for j, name in enumerate(d_names):
            d_positions.setdefault(name, []).append(j)
        seen: dict[bytes, int] = {}
        matched = [False] * len(d_elems)
        for se in s_elems:
            k = seen.get(se.name, 0)
            seen[se.name] = k + 1
            candidates = d_positions.get(se.name, ())
            child_path, child_top = child(se.name)
            if k < len(candidates):
                j = candidates[k]
                matched[j] = True
                self._compare_value(se, d_elems[j], child_path, child_top, depth)
            else:
                self._missing("src", se, child_path, child_top)
        for j, de in enumerate(d_elems):
            if not matched[j]:
                self._missing("dst", de, *child(de.name))

    def _compare_array(self, s_off: int, d_off: int, path: str, top: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise InvalidBSON("BSON nesting too deep")
        s_elems = list(_iter_elements(self.src, s_off, len(self.src)))
        d_elems = list(_iter_elements(self.dst, d_off, len(self.dst)))
        # Arrays compare by position; differing index names (non-canonical arrays) are a
        # byte-level difference only, reported like a field-order difference.
        self._note_order(_T_ARRAY, path, top, [e.name for e in s_elems], [e.name for e in d_elems])
        common = min(len(s_elems), len(d_elems))
        for i in range(common):
            self._compare_value(s_elems[i], d_elems[i], f"{path}.{i}", top, depth)
        for i in range(common, len(s_elems)):
            self._missing("src", s_elems[i], f"{path}.{i}", top)
        for i in range(common, len(d_elems)):
            self._missing("dst", d_elems[i], f"{path}.{i}", top)

    def _compare_value(self, se: _Elem, de: _Elem, path: str, top: str, depth: int) -> None:
        if se.type != de.type:
            self._add(FieldDiff(path, "type", BSON_TYPE_NAMES[se.type], BSON_TYPE_NAMES[de.type],
                                _decode_value(self.src, se.type, se.start, se.end),
                                _decode_value(self.dst, de.type, de.start, de.end), top))
            return
        if se.end - se.start == de.end - de.start and (
            self.smv[se.start : se.end] == self.dmv[de.start : de.end]
        ):
            return
        if se.type == _T_DOCUMENT:
            self.compare_document(se.start, de.start, path, top, depth + 1)
        elif se.type == _T_ARRAY:
            self._compare_array(se.start, de.start, path, top, depth + 1)
        else:
            name = BSON_TYPE_NAMES[se.type]
            self._add(FieldDiff(path, "value", name, name,
                                _decode_value(self.src, se.type, se.start, se.end),
                                _decode_value(self.dst, de.type, de.start, de.end), top))


def compare_raw_documents(
    src: bytes | bytearray | memoryview,
    dst: bytes | bytearray | memoryview,
    mode: CompareMode,
    *,
    max_diffs: int | None = None,
) -> list[FieldDiff]:
    """Compare two raw BSON documents; an empty list means equal.

    1. Identical bytes are equal.
    2. Otherwise the documents are compared ignoring field order at every depth (arrays by
       position, no numeric coercion, other values by raw bytes) and every difference is
       reported at its deepest path, in source order, destination-only fields last.
    3. If nothing differs but the field order: ``"ignore-order"`` returns ``[]``;
       ``"binary"`` returns one ``kind="order"`` finding for the first document (in
       pre-order, so the top level ``""`` if its own order differs) whose order differs.

    ``max_diffs`` stops the walk after that many findings (the result then holds exactly
    ``max_diffs`` entries and may be incomplete). Malformed BSON raises ``InvalidBSON``.
    """
    if mode not in ("binary", "ignore-order"):
        raise ValueError(f"unknown comparison mode {mode!r}")
    if max_diffs is not None and max_diffs < 1:
        raise ValueError("max_diffs must be at least 1")
    s = _as_bytes(src)
    d = _as_bytes(dst)
    if s == d:
        return []
    for data in (s, d):
        _read_i32(data, 0, len(data))
        if _INT32.unpack_from(data, 0)[0] != len(data):
            raise InvalidBSON("BSON document length does not match the buffer length")
    comparer = _Comparer(s, d, max_diffs)
    with contextlib.suppress(_Full):
        comparer.compare_document(0, 0, None, None, 0)
    if comparer.diffs:
        return comparer.diffs
    if mode == "ignore-order":
        return []
    if comparer.order is not None:
        return [comparer.order]
    # Unreachable for valid BSON: equal elements in equal order are equal bytes.
    return [FieldDiff("", "order", BSON_TYPE_NAMES[_T_DOCUMENT], BSON_TYPE_NAMES[_T_DOCUMENT],
                      None, None, "")]


def mismatch_detail(diff: FieldDiff) -> str:
    """The migration-verifier ``detail`` text for a finding.

    The reference reports per *top-level* field, so a nested finding (whose top-level
    values are necessarily both documents or both arrays) is a plain ``"Mismatch"``.
    """
    if diff.kind == "order":
        return "Mismatch : only field order differs"
    if diff.path != diff.top_field:
        return "Mismatch"
    if diff.kind in ("missing_on_dst", "missing_on_src"):
        return "Missing"
    if diff.kind == "type":
        return f"Mismatch : type mismatch: src={diff.src_type}, dst={diff.dst_type}"
    return "Mismatch"


def top_level_mismatches(diffs: Sequence[FieldDiff]) -> list[FieldDiff]:
    """The first finding per top-level field: the reference's one-result-per-field view.

    With :func:`mismatch_detail` this yields the reference's ``field``/``detail`` pairs
    (an ``"order"`` finding stands for the reference's result without a field).
    """
    seen: set[tuple[bool, str]] = set()
    out: list[FieldDiff] = []
    for diff in diffs:
        key = (diff.kind == "order", diff.top_field)
        if key not in seen:
            seen.add(key)
            out.append(diff)
    return out
