"""Keep passwords out of every line a user or a metrics scraper can see.

Every connection string mongoferry is given passes through `register_uri`,
which remembers its password. `redact` replaces any remembered secret (raw or
percent-encoded) and any `user:password@` in a URI-looking string with `***`.
A logging filter applies it to every record, so even driver messages are safe.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, unquote

_lock = threading.Lock()
_secrets: set[str] = set()
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]*)@")


def register_secret(secret: str) -> None:
    if len(secret) < 1:
        return
    with _lock:
        _secrets.update({secret, quote(secret, safe=""), unquote(secret)})


def register_uri(uri: str) -> None:
    """Remember the password of `uri` (if any) so it is redacted everywhere."""
    m = _USERINFO.search(uri)
    if m and m.group("pw"):
        register_secret(m.group("pw"))


def redact_uri(uri: str) -> str:
    """Return `uri` with its password replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", uri)


def redact(text: str) -> str:
    text = redact_uri(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s and s in text:
            text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg or record.args:
            record.msg = clean
            record.args = None
        return True
