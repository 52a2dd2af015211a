"""What a running job reports: one snapshot feeds HTTP, Prometheus and `mongoferry status`."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from mongoferry.infra.progress import Reporter

STATES = ("COPYING", "CATCHING_UP", "RUNNING", "PAUSED", "COMMITTING", "COMMITTED")
EVENT_TYPES = ("insert", "update", "replace", "delete", "ddl", "txn", "skipped")


class SyncStatus:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "COPYING"
        self.copy_done = False
        self.lag = 0.0
        self.copy = {"totalDocs": 0, "copiedDocs": 0, "totalBytes": 0, "copiedBytes": 0}
        self.events: Counter[str] = Counter()
        self.namespaces: list[dict[str, Any]] = []
        self.errors = 0
        self.last_error: str | None = None
        self.paused = False
        self.recopied: list[str] = []  # namespaces copied again because DDL changed them during the copy
        self.commit_requested = False
        self.started = time.time()

    def set(self, **fields: Any) -> None:
        with self.lock:
            for k, v in fields.items():
                setattr(self, k, v)

    def can_commit(self) -> bool:
        return self.copy_done and self.lag < 1.0 and self.state in ("RUNNING", "CATCHING_UP")

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "state": self.state,
                "canCommit": self.can_commit(),
                "lagTimeSeconds": round(self.lag, 3),
                "copy": dict(self.copy),
                "events": {t: int(self.events.get(t, 0)) for t in EVENT_TYPES},
                "namespaces": [dict(n) for n in self.namespaces],
                "recopied": list(self.recopied),
                "errors": self.errors,
                "lastError": self.last_error,
                "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }


class StatusReporter:
    """Copy progress into the status (and on to the user's reporter)."""

    def __init__(self, inner: Reporter, status: SyncStatus) -> None:
        self.inner = inner
        self.status = status

    def _bump(self, docs: int, bytes_: int, total_docs: int = 0, total_bytes: int = 0) -> None:
        with self.status.lock:
            c = self.status.copy
            c["copiedDocs"] += docs
            c["copiedBytes"] += bytes_
            c["totalDocs"] = max(c["totalDocs"] + total_docs, c["copiedDocs"])
            c["totalBytes"] = max(c["totalBytes"] + total_bytes, c["copiedBytes"])

    def add(self, src: str, dst: str, total_docs: int, total_bytes: int, docs: int = 0, bytes_: int = 0) -> None:
        self._bump(docs, bytes_, total_docs, total_bytes)
        self.inner.add(src, dst, total_docs, total_bytes, docs, bytes_)

    def advance(self, src: str, docs: int, bytes_: int) -> None:
        self._bump(docs, bytes_)
        self.inner.advance(src, docs, bytes_)

    def finish(self, src: str) -> None:
        self.inner.finish(src)

    def close(self) -> None:
        self.inner.close()


class StatusCollector(Collector):
    """Prometheus metrics read from the status snapshot at scrape time."""

    def __init__(self, status: SyncStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        snap = self.status.snapshot()
        lag = GaugeMetricFamily("mongoferry_lag_seconds", "Seconds between the source writing the last applied "
                                "change and now (0 when nothing is pending)")
        lag.add_metric([], snap["lagTimeSeconds"])
        yield lag
        state = GaugeMetricFamily("mongoferry_state", "1 for the job's current state", labels=["state"])
        for s in STATES:
            state.add_metric([s], 1.0 if snap["state"] == s else 0.0)
        yield state
        events = CounterMetricFamily("mongoferry_events_applied", "Change events applied, by type", labels=["type"])
        for t, n in snap["events"].items():
            events.add_metric([t], n)
        yield events
        for key, name, help_ in (("copiedDocs", "mongoferry_copy_docs_copied", "Documents copied"),
                                 ("totalDocs", "mongoferry_copy_docs_total", "Documents to copy (estimate)"),
                                 ("copiedBytes", "mongoferry_copy_bytes_copied", "Bytes copied"),
                                 ("totalBytes", "mongoferry_copy_bytes_total", "Bytes to copy (estimate)")):
            g = GaugeMetricFamily(name, help_)
            g.add_metric([], snap["copy"][key])
            yield g
        errors = CounterMetricFamily("mongoferry_errors", "Errors met (retried or fatal)")
        errors.add_metric([], snap["errors"])
        yield errors
        delta = GaugeMetricFamily("mongoferry_namespace_delta", "Source count minus destination count",
                                  labels=["source", "destination"])
        for n in snap["namespaces"]:
            delta.add_metric([n["source"], n["destination"]], n.get("delta", 0))
        yield delta


def make_registry(status: SyncStatus) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    return registry
