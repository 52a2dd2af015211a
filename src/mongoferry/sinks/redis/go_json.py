"""JSON exactly as Go's encoding/json writes it (OTR is a Go program): string escapes and the
shortest round-trip number forms of ECMAScript, which Go follows."""


from __future__ import annotations

import math
import re
from typing import Any, Final

PROBLEM_UNPROCESSABLE_FIELD: Final = "unprocessable-field"

# --------------------------------------------------------------------------- JSON


_HEX: Final = "0123456789abcdef"
# Characters Go's encoding/json (Marshal, HTML escaping on) does not copy through:
# '"', '\\', C0 controls, '<', '>', '&', U+2028, U+2029, plus lone surrogates, which
# are how invalid UTF-8 shows up in a Python str.
_NEEDS_ESCAPE: Final = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _escape_table(pre_go122: bool) -> dict[str, str]:
    table = {chr(c): "\\u00" + _HEX[c >> 4] + _HEX[c & 0xF] for c in range(0x20)}
    table.update({"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"})
    if not pre_go122:
        table.update({"\b": "\\b", "\f": "\\f"})
    table.update({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})
    table.update({"\u2028": "\\u2028", "\u2029": "\\u2029"})
    return table


_ESCAPES: Final = _escape_table(pre_go122=False)
_ESCAPES_PRE_GO122: Final = _escape_table(pre_go122=True)


def go_json_string(s: str, *, pre_go122: bool = False) -> str:
    """Encode ``s`` as Go's ``json.Marshal`` does, quotes included.

    No whitespace. ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e`` and
    ``\\u0026``. U+2028 and U+2029 are escaped. Other non-ASCII characters are written
    raw. ``\\n``, ``\\r`` and ``\\t`` (and, since Go 1.22, ``\\b`` and ``\\f``) get short
    escapes; the other C0 controls become ``\\u00xx`` in lowercase hex. Each lone
    surrogate (one undecodable byte under ``surrogateescape``) becomes ``\\ufffd``.
    """
    table = _ESCAPES_PRE_GO122 if pre_go122 else _ESCAPES

    def repl(m: re.Match[str]) -> str:
        return table.get(m.group(), "\\ufffd")

    return '"' + _NEEDS_ESCAPE.sub(repl, s) + '"'


def _shortest_decimal(a: float) -> tuple[str, int]:
    """Return ``(digits, n)`` with ``a == 0.<digits> * 10**n``, for finite ``a > 0``.

    The digits are the shortest ones that round-trip: Python's ``repr`` produces the
    same digits as ECMAScript Number::toString and Go ``strconv`` with precision -1.
    """
    mantissa, _, exp = repr(a).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    stripped = digits.lstrip("0")
    n = (int(exp) if exp else 0) + len(int_part) - (len(digits) - len(stripped))
    return stripped.rstrip("0"), n


def _es_number(f: float, *, go_negative_zero: bool) -> str:
    """Format a finite float like ECMAScript ``Number::toString``.

    Go's ``encoding/json`` float encoder has used the same ES6 format since Go 1.8.
    The one difference is negative zero: Go writes ``-0`` and JavaScript writes ``0``.
    """
    if f == 0:
        return "-0" if go_negative_zero and math.copysign(1.0, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    s, n = _shortest_decimal(abs(f))
    k = len(s)
    if k <= n <= 21:
        body = s + "0" * (n - k)
    elif 0 < n <= 21:
        body = s[:n] + "." + s[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + s
    else:
        e = n - 1
        body = s[0] + ("." + s[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + body


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _short_repr(value: Any, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."
