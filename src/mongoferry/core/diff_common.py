"""What the update appliers share: the format error, the server's limits, value helpers."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bson.dbref import DBRef
from bson.decimal128 import Decimal128


class DiffFormatError(ValueError):
    """An update entry, diff or update description that is malformed (the server would reject it)."""


_INT32_MAX = 2**31 - 1
# No array index at or past this fits in a 16 MiB BSON document; refusing it avoids huge null padding.
_MAX_ARRAY_LENGTH = 16 * 1024 * 1024
# The server's cap on null padding when a $set creates an array element (kMaxPaddingAllowed).
_MAX_V1_PADDING = 1_500_000
_MAX_UNSIGNED_INT = 2**32 - 1


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _clone(value: Any) -> Any:
    """Copy containers so the result shares nothing mutable with the inputs; leaves are immutable."""
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _as_object(value: Any) -> Mapping[str, Any] | None:
    """The value as a BSON object, or None. A DBRef is a plain object on the server."""
    if isinstance(value, DBRef):
        return dict(value.as_doc())
    if isinstance(value, Mapping):
        return value
    return None


def _is_int(value: Any) -> bool:
    """A BSON integer (int32 or Int64), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _canonical_index(text: str) -> int | None:
    """The array index spelled by ``text`` as the server writes it (no sign, no leading zero)."""
    if not _is_ascii_digits(text) or (len(text) > 1 and text[0] == "0"):
        return None
    index = int(text)
    return index if index < _MAX_ARRAY_LENGTH else None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DiffFormatError(f"{where}: expected an object, got {type(value).__name__}")
    return value

def _version_number(value: Any) -> int:
    """The integral value of ``$v``; anything else (bool, string, 1.5...) is an error."""
    number: Decimal | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, Decimal128):
        number = value.to_decimal()
    if number is None or not number.is_finite() or number not in (1, 2):
        raise DiffFormatError(f"unsupported update oplog version $v={value!r}")
    return int(number)
