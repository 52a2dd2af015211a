"""Typed configuration: defaults → YAML file (--config) → MONGOFERRY_* env → flags.

Each command has one settings class. `load_settings` builds it from the three
layers and turns every validation problem into one UsageError line.
Nothing here reads the environment at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mongoferry.core.errors import UsageError

StrList = Annotated[list[str], NoDecode]
JOB_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
LogFormat = Literal["auto", "rich", "json", "text"]
# How the verifier compares documents: byte for byte, or field order ignored.
CompareMode = Literal["binary", "ignore-order"]


def split_list(value: Any) -> Any:
    """Env vars, YAML and repeated flags may give a list as 'a,b' as well as a real list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [v.strip() for item in value for v in str(item).split(",") if v.strip()]
    return value


def split_on_spaces(value: Any) -> Any:
    """For values that hold commas themselves (URIs with several hosts, JSON bounds): an env var
    or YAML string is split on spaces; a list or repeated flag is kept as given."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, tuple):
        return list(value)
    return value


def filter_entries(value: Any) -> Any:
    """--filter values hold commas and spaces: an env var or YAML string holds one per line; YAML
    may also give a mapping of namespace to query."""
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, dict):
        return [f"{ns}={json.dumps(q) if isinstance(q, dict) else q}" for ns, q in value.items()]
    if isinstance(value, tuple):
        return list(value)
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MONGOFERRY_", extra="forbid", validate_default=True)

    log_format: LogFormat = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _yaml: dict[str, Any] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_source = InitSettingsSource(settings_cls, init_kwargs=dict(_FILE_VALUES.get(settings_cls, {})))
        return (init_settings, env_settings, file_source)


# The YAML layer for the settings class being loaded (set only inside load_settings).
_FILE_VALUES: dict[type[BaseSettings], dict[str, Any]] = {}


class ConnectionSettings(Settings):
    src: str | None = Field(None, description="source connection string")
    dst: str | None = Field(None, description="destination connection string")
    meta: str | None = Field(None, description="metadata database URI (default: the destination)")
    meta_db: str = "mongoferry_meta"
    job: str | None = Field(None, pattern=JOB_NAME, description="job name in the metadata (default: the command)")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for each server to answer")
    include: StrList = Field(default_factory=list)
    exclude: StrList = Field(default_factory=list)
    rename: StrList = Field(default_factory=list)
    filter: StrList = Field(default_factory=list, description="DB.COLL=QUERY: only the documents matching QUERY")

    _split = field_validator("include", "exclude", "rename", mode="before")(split_list)
    _filters = field_validator("filter", mode="before")(filter_entries)


ENV_ONLY: dict[str, Any] = {"envOnly": True}  # a setting with no command-line flag (env or YAML)
AUTO_READERS = 4  # readers at once with --workers auto (collections, or ranges where they are cheap)
MAX_WORKERS = 64


def parse_workers(value: Any) -> Any:
    """'auto' or a whole number from 1 to MAX_WORKERS, as one problem when it is neither."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or not 1 <= n <= MAX_WORKERS or (isinstance(value, float) and n != value):
        raise ValueError(f"expected 'auto' or a whole number from 1 to {MAX_WORKERS}, got {value!r}")
    return n


class CopySettings(ConnectionSettings):
    workers: Literal["auto"] | int = Field(
        "auto", description="readers in parallel, or 'auto': up to 4, one per collection, plus a second "
        "reader for a collection where measured faster")
    ranges: Literal["auto", "on", "off"] = Field(
        "auto", description="readers within a collection: auto (a second from its end, kept where measured "
        "faster), on (planned _id ranges), off")
    # Tuning of --ranges auto (env/YAML only): a second reader is tried where opening a cursor took at
    # most this share of the time the collection has left, and kept where throughput rose by auto_gain.
    auto_open_share: float = Field(0.05, ge=0, description="try a second reader where opening a cursor costs "
                                   "at most this share of the collection's time left", json_schema_extra=ENV_ONLY)
    auto_gain: float = Field(1.1, ge=0, description="keep the second reader where throughput rose by this factor",
                             json_schema_extra=ENV_ONLY)
    batch_size: int = Field(1000, ge=1, le=100_000)
    partition_docs: int = Field(50_000, ge=100, description="target documents per partition")
    drop_dst: bool = False
    max_docs_per_s: float | None = Field(None, gt=0, description="write at most this many documents (copied "
                                         "and, for sync and split, change events applied) per second")
    max_bytes_per_s: float | None = Field(None, gt=0, description="copy at most this many bytes per second")
    max_source_latency: float | None = Field(None, gt=0, description="ms: hold while the source's mean operation "
                                             "latency is above this")
    max_source_lag: float | None = Field(None, gt=0, description="seconds: hold while the source's secondaries "
                                         "are further behind than this")

    _workers = field_validator("workers", mode="before")(parse_workers)

    @property
    def readers(self) -> int:
        """Threads reading at once."""
        return AUTO_READERS if self.workers == "auto" else self.workers


class SyncSettings(CopySettings):
    capture: Literal["change-stream", "oplog"] = "change-stream"
    http: str = Field("127.0.0.1:27182", description="HOST:PORT of the status/control API, or 'off'")
    http_token: SecretStr | None = Field(None, description="the token the HTTP controls need (required off loopback)")
    no_write_block: bool = False
    no_verify: bool = False
    reverse: bool = False
    max_batch: int = Field(1000, ge=1, le=100_000)


class SplitSettings(SyncSettings):
    """`mongoferry split`: sync with N destinations, each document to the part its key routes to."""

    dst: StrList = Field(default_factory=list, description="destinations, in part order")  # type: ignore[assignment]
    key: StrList = Field(default_factory=list, description="FIELD, or DB.COLL=FIELD for one namespace")
    by: Literal["mod", "hash", "range"] = "mod"
    bound: StrList = Field(default_factory=list, description="--by range: the first key of each part after the first")
    broadcast: StrList = Field(default_factory=list, description="DB or DB.COLL copied whole to every destination")
    unrouted: int | None = Field(None, ge=0, description="the destination of documents the rule cannot route")
    explain: bool = False

    _split_lists = field_validator("key", "broadcast", mode="before")(split_list)
    _space_lists = field_validator("dst", "bound", mode="before")(split_on_spaces)


class PruneSettings(Settings):
    """`mongoferry prune`: delete from one deployment what a split rule gives to other parts, gently."""

    uri: str | None = Field(None, description="the deployment to prune")
    meta: str | None = Field(None, description="where progress is kept (default: --uri)")
    meta_db: str = "mongoferry_meta"
    job: str | None = Field(None, pattern=JOB_NAME, description="job name in the metadata (default: prune)")
    connect_timeout: float = Field(10.0, gt=0)
    include: StrList = Field(default_factory=list)
    exclude: StrList = Field(default_factory=list)
    key: StrList = Field(default_factory=list, description="FIELD, or DB.COLL=FIELD for one namespace")
    by: Literal["mod", "hash", "range"] = "mod"
    bound: StrList = Field(default_factory=list)
    broadcast: StrList = Field(default_factory=list)
    unrouted: int | None = Field(None, ge=0)
    parts: int | None = Field(None, description="how many parts the rule divides into")
    keep: int | None = Field(None, ge=0, description="the part this deployment keeps")
    from_split: str | None = Field(None, pattern=JOB_NAME, description="reuse this split job's rule (in --meta)")
    filter: StrList = Field(default_factory=list, description="DB.COLL=QUERY: prune only documents matching QUERY")
    rate: float = Field(1000.0, ge=0, allow_inf_nan=False,
                        description="documents deleted per second at most (0: no limit)")
    window: StrList = Field(default_factory=list, description="HH:MM-HH:MM when deleting may run (repeatable)")
    timezone: str = Field("UTC", description="the time zone of --window")
    max_lag: float = Field(10.0, ge=0, allow_inf_nan=False,
                           description="pause while a secondary is this many seconds behind (0: never)")
    batch_size: int = Field(1000, ge=1, le=100_000, description="documents read per batch")
    execute: bool = False
    http: str = Field("127.0.0.1:27183", description="HOST:PORT of the status/control API (--execute), or 'off'")
    http_token: SecretStr | None = Field(None, description="the token the HTTP controls need (required off loopback)")

    _split_lists = field_validator("key", "broadcast", "include", "exclude", "window", mode="before")(split_list)
    _space_lists = field_validator("bound", mode="before")(split_on_spaces)
    _filters = field_validator("filter", mode="before")(filter_entries)


def parse_duration(value: Any) -> Any:
    """Seconds, or a number with a unit: 90, 90s, 15m, 6h, 7d."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ValueError(f"expected a duration such as 60s, 15m, 6h or 1d, got {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


def parse_size(value: Any) -> Any:
    """Bytes, or a number with a unit: 16MB, 1GB, 512KB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        return int(float(number) * unit)
    except ValueError:
        raise ValueError(f"expected a size such as 16MB or 1GB, got {value!r}") from None


class BackupSettings(Settings):
    """`mongoferry backup`: a snapshot, then the oplog in chunks, to a directory or S3."""

    src: StrList = Field(default_factory=list, description="URI, or NAME=URI per shard (repeatable)")
    to: str | None = Field(None, description="a directory, or s3://BUCKET/PREFIX")
    once: bool = Field(False, description="one snapshot, archived up to its end, then exit")
    snapshot_every: float | None = Field(None, description="take a new snapshot this often (e.g. 1d)")
    chunk: float = Field(60.0, description="cut an oplog chunk at least this often (e.g. 60s)")
    chunk_size: int = Field(16 * 1024**2, ge=1, description="cut an oplog chunk at this many bytes")
    compress: Literal["gzip", "zstd", "none"] = "gzip"
    include: StrList = Field(default_factory=list)
    exclude: StrList = Field(default_factory=list)
    filter: StrList = Field(default_factory=list, description="refused: see `mongoferry restore --filter`")
    workers: int = Field(4, ge=1, le=64, description="collections read at once for a snapshot")
    batch_size: int = Field(1000, ge=1, le=100_000)
    connect_timeout: float = Field(10.0, gt=0)
    http: str = Field("off", description="HOST:PORT of the status API, or 'off'")
    http_token: SecretStr | None = Field(None, description="the token the HTTP controls need (required off loopback)")
    max_docs_per_s: float | None = Field(None, gt=0, description="write at most this many documents per second")
    max_bytes_per_s: float | None = Field(None, gt=0, description="write at most this many bytes per second")
    max_source_latency: float | None = Field(None, gt=0, description="ms: hold a snapshot's reads while the source's "
                                             "mean operation latency is above this")
    max_source_lag: float | None = Field(None, gt=0, description="seconds: hold a snapshot's reads while the "
                                         "source's secondaries are further behind than this")

    _split = field_validator("include", "exclude", mode="before")(split_list)
    _filters = field_validator("filter", mode="before")(filter_entries)
    _space = field_validator("src", mode="before")(split_on_spaces)
    _duration = field_validator("snapshot_every", "chunk", mode="before")(parse_duration)
    _size = field_validator("chunk_size", mode="before")(parse_size)


class BackupListSettings(Settings):
    """`mongoferry backup list` and `backup prune`."""

    backup: str | None = Field(None, description="--from: the backup, a directory or s3://BUCKET/PREFIX")
    keep_days: float | None = Field(None, gt=0, allow_inf_nan=False, description="prune: the restore window")
    dry_run: bool = False


class RestoreSettings(Settings):
    """`mongoferry restore`: a backup (or a mongodump directory) into a deployment, up to a time."""

    backup: str | None = Field(None, description="--from: the backup, a directory or s3://BUCKET/PREFIX")
    dst: StrList = Field(default_factory=list, description="URI, or NAME=URI per shard of a cluster backup")
    to_time: str | None = Field(None, description="ISO 8601 or SECONDS:ORDINAL (inclusive); default: the latest")
    include: StrList = Field(default_factory=list)
    exclude: StrList = Field(default_factory=list)
    rename: StrList = Field(default_factory=list)
    filter: StrList = Field(default_factory=list, description="DB.COLL=QUERY: restore only the documents matching")
    drop: bool = False
    dry_run: bool = False
    workers: int = Field(4, ge=1, le=64, description="namespaces restored at once")
    max_docs_per_s: float | None = Field(None, gt=0, description="write at most this many documents per second")
    max_bytes_per_s: float | None = Field(None, gt=0, description="write at most this many bytes per second")
    connect_timeout: float = Field(10.0, gt=0)

    _split = field_validator("include", "exclude", "rename", mode="before")(split_list)
    _filters = field_validator("filter", mode="before")(filter_entries)
    _space = field_validator("dst", mode="before")(split_on_spaces)


class ReplayOplogSettings(Settings):
    dst: str | None = None
    oplog_limit: str | None = Field(None, description="SECONDS[:ORDINAL]: apply entries before this time only")
    include: StrList = Field(default_factory=list)
    exclude: StrList = Field(default_factory=list)
    rename: StrList = Field(default_factory=list)
    connect_timeout: float = Field(10.0, gt=0)

    _split = field_validator("include", "exclude", "rename", mode="before")(split_list)


class StatusSettings(Settings):
    dst: str | None = None
    backup: str | None = Field(None, description="--from: a backup's directory or s3://BUCKET/PREFIX (its status "
                               "is read from its manifest)")
    meta: str | None = None
    meta_db: str = "mongoferry_meta"
    job: str | None = Field(None, pattern=JOB_NAME)
    connect_timeout: float = Field(10.0, gt=0)


class VerifySettings(ConnectionSettings):
    """Settings of ``mongoferry verify`` (flags, MONGOFERRY_* env, YAML file)."""

    port: int = Field(27020, ge=0, le=65535, description="HTTP API port on 127.0.0.1 (0 = any free port)")
    check_only: bool = Field(False, description="one full pass, a report and an exit code; no server")
    compare: CompareMode = "ignore-order"
    failure_display_size: int = Field(20, ge=1, description="findings shown; the rest are counted")
    workers: int = Field(4, ge=1, le=64)
    partition_docs: int = Field(50_000, ge=100, description="target documents per _id range")
    src_namespace: StrList = Field(default_factory=list)
    dst_namespace: StrList = Field(default_factory=list)
    start: bool = Field(False, description="server mode: start checking at once, without POST /api/v1/check")
    clean: bool = Field(False, description="server mode: forget the saved verification state first")
    index_spec_ignore: Annotated[list[Literal["expireAfterSeconds", "unique"]], NoDecode] = Field(
        default_factory=list, description="--check-only: index differences only in these options are tolerated")

    _split_ns = field_validator("src_namespace", "dst_namespace", "index_spec_ignore", mode="before")(split_list)


S = TypeVar("S", bound=Settings)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}", "check the --config path") from None
    try:
        data = yaml.safe_load(text)
        if data is None:  # an empty file
            data = {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"config file {path} is not valid YAML{where}", "fix the syntax") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of option: value", "see docs/configuration.md")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _describe_error(cls: type[Settings], err: Any) -> str:
    """One problem of a validation, naming the option as the user spells it on each side."""
    name = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"unknown option {name!r}"
    field = str(err["loc"][0]) if err["loc"] else ""
    info = cls.model_fields.get(field)
    flag = "" if info is None or info.json_schema_extra == ENV_ONLY else f"--{field.replace('_', '-')} / "
    where = f" ({flag}MONGOFERRY_{field.upper()})" if info is not None else ""
    return f"invalid value for {name!r}{where}: {err['msg'].removeprefix('Value error, ')}"


def load_settings(cls: type[S], flags: dict[str, Any], config_file: Path | None = None) -> S:
    file_values = read_config_file(config_file) if config_file else {}
    _FILE_VALUES[cls] = file_values
    try:
        return cls(**flags)
    except ValidationError as exc:
        problems = [_describe_error(cls, err) for err in exc.errors()]
        unknown_only = all(p.startswith("unknown option") for p in problems)
        hint = "see `mongoferry COMMAND --help` for the options" if unknown_only else "see docs/configuration.md"
        head = "" if len(problems) == 1 else f"{len(problems)} problems: "
        raise UsageError(head + "; ".join(problems), hint) from None
    finally:
        _FILE_VALUES.pop(cls, None)
