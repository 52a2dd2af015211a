"""Logging setup: JSON lines or plain text on stderr, always redacted."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from mongoferry.infra.redact import RedactingFilter, redact

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # Redact every value before encoding: JSON escaping would hide a password from a later search.
        return json.dumps(_redact_values(out), default=lambda v: redact(str(v)))


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_redact_values(v) for v in value]
    return value


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        line = f"{record.levelname.lower():7s} {record.getMessage()}" + (f" {tail}" if tail else "")
        return redact(line)


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so rich's live display can interleave log lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(fmt: str, level: str = "info") -> None:
    """fmt: 'json' or 'text'. Replaces any handler installed before."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _CurrentStderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("pymongo", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve_format(requested: str) -> str:
    """'auto' becomes 'rich' on a terminal, 'json' otherwise."""
    if requested != "auto":
        return requested
    return "rich" if sys.stderr.isatty() else "json"
