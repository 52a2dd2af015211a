"""Keep passwords out of every line a user or a metrics scraper can see.

Every connection string mongoferry is given passes through `register_uri`,
which remembers its password. `redact` replaces any remembered secret (raw or
percent-encoded) and any `user:password@` in a URI-looking string with `***`.
A logging filter applies it to every record, so even driver messages are safe.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import quote, unquote

_lock = threading.Lock()
_secrets: set[str] = set()
# The password runs to the *last* `@` of the URI: a password with an unescaped `/` or `@` makes the
# URI invalid, and the error that says so must not show it either (over-redacting is fine).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s\"']*):(?P<pw>\S*)@")
# Options that carry secrets of their own (AWS session tokens, TLS key passwords).
_SECRET_OPTIONS = re.compile(
    r"(?i)(?P<name>authMechanismProperties|tlsCertificateKeyFilePassword|sslPEMKeyPassword"
    r"|sslClientCertificateKeyPassword)=(?P<value>[^&\s\"']*)")


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
        register_secret(json.dumps(unquote(m.group("pw")))[1:-1])  # as it appears inside JSON text
    for option in _SECRET_OPTIONS.finditer(uri):
        value = option.group("value")
        if value:
            register_secret(value)
            for prop in unquote(value).split(","):  # KEY:VALUE pairs; only the AWS token is secret
                key, _, secret = prop.partition(":")
                if key.strip().upper() == "AWS_SESSION_TOKEN" and secret:
                    register_secret(secret)


def redact_uri(uri: str) -> str:
    """Return `uri` with its password replaced by ***."""
    uri = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", uri)
    return _SECRET_OPTIONS.sub(lambda m: f"{m.group('name')}=***", uri)


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
