"""Connecting to MongoDB, and the one place driver errors become mongoferry errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    InvalidURI,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.uri_parser import parse_uri

from mongoferry.core.errors import AuthError, ConnectError, MongoferryError, UsageError
from mongoferry.core.identity import DeploymentIdentity, identity_from_hello
from mongoferry.core.model import DECODED as DECODED  # re-exported: defined once, in core
from mongoferry.infra.redact import redact, redact_uri, register_uri

Client = MongoClient[dict[str, Any]]
T = TypeVar("T")

# Raw BSON on the hot path: documents are never decoded on their way through.
RAW = CodecOptions(document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO)

AUTH_FAILED = 18
# The one classification of driver errors (by code and label, never by message text).
# A read ended because its collection was dropped or renamed under it: NamespaceNotFound,
# QueryPlanKilled, CursorNotFound (some servers kill the cursor outright).
NAMESPACE_CHANGED_CODES = frozenset({26, 43, 175})
# The server no longer holds a position: ChangeStreamHistoryLost, ChangeStreamFatalError (a resume
# token whose event is gone, as after a rollback), CappedPositionLost, OplogQueryMinTsMissing.
HISTORY_LOST_CODES = frozenset({286, 280, 136, 326})
# Worth waiting out: shutdowns, step-downs, "not primary", interrupted at shutdown, host unreachable.
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
TRANSIENT_LABELS = ("ResumableChangeStreamError", "RetryableWriteError", "TransientTransactionError")


def validate_uri(uri: str | None, flag: str) -> str:
    if not uri:
        raise UsageError(f"{flag} is required", f"give {flag} mongodb://HOST:PORT (or set it in the config file)")
    register_uri(uri)
    try:
        parse_uri(uri)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise UsageError(f"{flag} {redact_uri(uri)} is not a valid MongoDB URI: {redact(str(exc))}",
                         "the form is mongodb://[user:password@]host[:port][/?options]") from None
    return uri


def connect(uri: str, role: str, timeout_s: float = 10.0, **kwargs: Any) -> Client:
    """Open a client and prove it can run a command; errors are translated."""
    shown = redact_uri(uri)
    try:
        client: Client = MongoClient(
            uri, serverSelectionTimeoutMS=int(timeout_s * 1000), connectTimeoutMS=int(timeout_s * 1000),
            appname="mongoferry", datetime_conversion=DatetimeConversion.DATETIME_AUTO, **kwargs,
        )
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise UsageError(f"{role} URI {shown} is invalid: {redact(str(exc))}", "fix the connection string") from None
    try:
        client.admin.command("ping")
        # Listing databases needs authentication where it is on: a wrong password fails here.
        client.admin.command("listDatabases", nameOnly=True)
    except OperationFailure as exc:
        client.close()
        if exc.code == AUTH_FAILED:
            raise AuthError(f"authentication failed for the {role} {shown}",
                            "check the user name, password and authSource in the URI") from None
        raise ConnectError(f"the {role} {shown} refused a basic command: {redact(str(exc))}",
                           "check that the user has the needed roles") from None
    except ServerSelectionTimeoutError:
        client.close()
        raise ConnectError(f"cannot reach the {role} at {shown} within {timeout_s:g}s",
                           "check host, port, firewall, and that the server is running") from None
    except PyMongoError as exc:
        client.close()
        raise ConnectError(f"cannot connect to the {role} at {shown}: {redact(str(exc))}",
                           "check host, port and TLS options") from None
    return client


def translate(exc: PyMongoError, doing: str) -> MongoferryError:
    """A driver error met after connecting, as a mongoferry error."""
    if isinstance(exc, OperationFailure) and exc.code == AUTH_FAILED:
        return AuthError(f"authentication failed while {doing}", "check the credentials")
    if isinstance(exc, ConnectionFailure):
        return ConnectError(f"lost the connection while {doing}: {redact(str(exc))}",
                            "check the server, then rerun the same command (jobs with saved progress resume)")
    return MongoferryError(f"MongoDB error while {doing}: {redact(str(exc))}",
                           "rerun the same command (jobs with saved progress resume); report it if it repeats")


@contextmanager
def driver_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise translate(exc, doing) from None


def deployment_identity(client: Client) -> DeploymentIdentity:
    """What the server says it is (read-only; ids that need privileges are skipped when refused)."""
    hello = client.admin.command("hello")
    deployment_id: Any = None
    try:
        if hello.get("msg") == "isdbgrid":  # mongos: the sharded cluster's id
            version = client["config"]["version"].find_one({}, {"clusterId": 1})
            deployment_id = version.get("clusterId") if version else None
        elif hello.get("setName"):
            config = client.admin.command("replSetGetConfig").get("config", {})
            deployment_id = config.get("settings", {}).get("replicaSetId")
    except PyMongoError:
        deployment_id = None  # not allowed or not offered: the other proofs remain
    return identity_from_hello(hello, deployment_id)


def namespace_changed(exc: PyMongoError) -> bool:
    """Did a read end because its collection was dropped or renamed?"""
    return isinstance(exc, OperationFailure) and exc.code in NAMESPACE_CHANGED_CODES


def is_history_lost(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and exc.code in HISTORY_LOST_CODES


def is_transient(exc: BaseException) -> bool:
    """A connection problem or a server state that passes (retry from the last checkpoint)."""
    if isinstance(exc, ConnectionFailure):  # includes timeouts and server selection
        return True
    if not isinstance(exc, OperationFailure) or is_history_lost(exc):
        return False
    return exc.code in TRANSIENT_CODES or any(exc.has_error_label(label) for label in TRANSIENT_LABELS)
