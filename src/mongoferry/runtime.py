"""What every job does around its work: connect, signals, reporting."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from mongoferry.clients import Client, connect, validate_uri
from mongoferry.config import ConnectionSettings
from mongoferry.namespaces import NamespaceMap
from mongoferry.state import MetaStore

log = logging.getLogger("mongoferry")


@dataclass
class Endpoints:
    src: Client
    dst: Client
    meta_client: Client
    meta: MetaStore
    nsmap: NamespaceMap

    def close(self) -> None:
        for c in {id(x): x for x in (self.src, self.dst, self.meta_client)}.values():
            c.close()


def open_endpoints(s: ConnectionSettings) -> Endpoints:
    """Validate everything that can be validated without writing, then connect."""
    src_uri = validate_uri(s.src, "--src")
    dst_uri = validate_uri(s.dst, "--dst")
    meta_uri = validate_uri(s.meta, "--meta") if s.meta else dst_uri
    connect_timeout = s.connect_timeout
    nsmap = NamespaceMap.build(s.include, s.exclude, s.rename, meta_db=s.meta_db)
    src = connect(src_uri, "source", connect_timeout)
    try:
        dst = connect(dst_uri, "destination", connect_timeout)
    except Exception:
        src.close()
        raise
    meta_client = dst if meta_uri == dst_uri else connect(meta_uri, "metadata server", connect_timeout)
    return Endpoints(src, dst, meta_client, MetaStore(meta_client, s.meta_db), nsmap)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set the event: work stops at the next safe point, after a checkpoint."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("stopping after the current batch (signal %s)", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
