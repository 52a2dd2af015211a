"""Settings of ``publish-redis``: its options, oplogtoredis's ``OTR_*`` variables and Go durations.

Configuration layers: flags > MONGOFERRY_* > OTR_* (oplogtoredis's own variables) >
config file > defaults. ``src`` is another name for ``mongo_url`` within each layer.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any, Final, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from mongoferry.core.errors import UsageError
from mongoferry.infra.config import LogFormat, Settings, StrList, split_list
from mongoferry.sinks.redis.format import DEFAULT_DEDUPE_TTL_SECONDS, DEFAULT_METADATA_PREFIX

__all__ = [
    "OTR_VARIABLES",
    "PublishRedisSettings",
    "parse_go_duration",
]

_GO_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                    "h": 3600.0}
_GO_PART: Final = re.compile("([0-9]*(?:\\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string: ``"1s"``, ``"500ms"``, ``"2m"``, ``"1h30m"``, ``"0"``."""
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as 1s, 500ms, 2m or 1h30m)")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _seconds(value: Any) -> Any:
    """Durations may be given as seconds (``120``, ``0.5``) or in Go syntax (``2m``, ``500ms``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return parse_go_duration(value)
    return value


def _whole_seconds(value: Any) -> Any:
    value = _seconds(value)
    if isinstance(value, float) and math.isfinite(value):
        return int(value)  # as OTR: int(d.Seconds())
    return value


_GO_BOOLS: Final = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
                    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _otr_text(name: str, value: str) -> Any:
    return value


def _otr_duration(name: str, value: str) -> Any:
    try:
        return parse_go_duration(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a Go duration",
                         f"for example {name}=120s, 2m or 500ms") from None


def _otr_bool(name: str, value: str) -> Any:
    if value not in _GO_BOOLS:
        raise UsageError(f"{name}={value!r} is not a boolean", f"use {name}=true or {name}=false")
    return _GO_BOOLS[value]


def _otr_int(name: str, value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not an integer", f"for example {name}=1") from None


def _otr_http(name: str, value: str) -> Any:
    return "0.0.0.0" + value if value.startswith(":") else value  # Go's ":9000" listens on every interface


# OTR variable -> (settings field, converter). Earlier entries win when two name one field.
OTR_VARIABLES: Final[dict[str, tuple[str, Callable[[str, str], Any]]]] = {
    "OTR_MONGO_URL": ("mongo_url", _otr_text),
    "OTR_REDIS_URL": ("redis_url", _otr_text),
    "OTR_HTTP_SERVER_ADDR": ("http", _otr_http),
    "OTR_MAX_CATCH_UP": ("max_catch_up_s", _otr_duration),
    "OTR_REDIS_DEDUPE_EXPIRATION": ("dedupe_ttl_s", _otr_duration),
    "OTR_DEDUPE_EXPIRATION": ("dedupe_ttl_s", _otr_duration),
    "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES": ("deep_fields", _otr_bool),
    "OTR_REDIS_METADATA_PREFIX": ("metadata_prefix", _otr_text),
    "OTR_TIMESTAMP_FLUSH_INTERVAL": ("flush_interval_s", _otr_duration),
    "OTR_REDIS_BATCH_SIZE": ("batch_size", _otr_int),
    "OTR_MONGO_CONNECT_TIMEOUT": ("connect_timeout", _otr_duration),
    "OTR_LOG_DEBUG": ("log_level", lambda name, value: "debug"),  # any non-empty value, as OTR
    "OTR_LOG_QUIET": ("quiet", lambda name, value: True),  # any non-empty value, as OTR
}


class _OtrEnvSource(PydanticBaseSettingsSource):
    """oplogtoredis's own variables, so a deployment switches by changing only the command."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (field_name, convert) in OTR_VARIABLES.items():
            value = os.environ.get(name)
            if value and field_name not in out:
                out[field_name] = convert(name, value)
        return out


class _SrcAlias(PydanticBaseSettingsSource):
    """``src`` (as in the other commands) is another name for ``mongo_url`` within one layer."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = dict(self.inner())
        src = data.pop("src", None)
        if src is not None and data.get("mongo_url") is None:
            data["mongo_url"] = src
        return data


class PublishRedisSettings(Settings):
    log_format: LogFormat = "json"
    quiet: bool = Field(False, description="log nothing (OTR_LOG_QUIET)")
    mongo_url: str | None = Field(None, description="MongoDB connection string (mongos or replica set)")
    src: str | None = Field(None, description="another name for mongo_url")
    redis_url: StrList = Field(default_factory=list, description="Redis URLs; every one gets every message")
    http: str = Field("127.0.0.1:9000", description="HOST:PORT of /healthz and /metrics, or 'off'")
    max_catch_up_s: float = Field(120.0, ge=0, description="resume only from a position younger than this")
    dedupe_ttl_s: int = Field(DEFAULT_DEDUPE_TTL_SECONDS, ge=1, description="lifetime of the dedupe keys")
    metadata_prefix: str = Field(DEFAULT_METADATA_PREFIX, description="prefix of the keys mongoferry sets")
    deep_fields: bool = Field(False, description="dotted changed paths (OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES)")
    meteor_ids: bool = Field(False, description="per-document channels named by Meteor's MongoID.idStringify")
    capture: Literal["change-stream", "oplog"] = "change-stream"
    flush_interval_s: float = Field(1.0, gt=0, description="how often the position is stored")
    batch_size: int = Field(100, ge=1, le=10_000, description="most publications per script call")
    connect_timeout: float = Field(10.0, gt=0)

    _split = field_validator("redis_url", mode="before")(split_list)
    _durations = field_validator("max_catch_up_s", "flush_interval_s", "connect_timeout", mode="before")(_seconds)
    _ttl = field_validator("dedupe_ttl_s", mode="before")(_whole_seconds)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init, env, file = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings)
        return (_SrcAlias(settings_cls, init), _SrcAlias(settings_cls, env), _OtrEnvSource(settings_cls),
                _SrcAlias(settings_cls, file))
