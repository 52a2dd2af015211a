"""What a running job reports: one snapshot feeds HTTP, Prometheus and `mongoferry status`."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mongoferry.core.pacing import eta_seconds
from mongoferry.infra.progress import Reporter
from mongoferry.state.health import Health

# sync and split: COPYING … COMMITTED; backup: SNAPSHOT, ARCHIVING; publish-redis: STARTING, RUNNING
STATES = ("STARTING", "COPYING", "CATCHING_UP", "RUNNING", "PAUSED", "COMMITTING", "COMMIT_FAILED", "COMMITTED",
          "SNAPSHOT", "ARCHIVING", "SOURCE_UNREACHABLE")
EVENT_TYPES = ("insert", "update", "replace", "delete", "ddl", "txn", "skipped")
RECENT_ERRORS = 20
UNHEALTHY = ("SOURCE_UNREACHABLE", "COMMIT_FAILED")


def recent_error(errors: deque[dict[str, str]], message: str | None) -> None:
    """Keep the last RECENT_ERRORS messages with their time (the dashboard lists them)."""
    if message:
        errors.append({"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "message": message})


class JobStatus:
    """The one status model of a running job: HTTP, Prometheus and `mongoferry status` read it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "COPYING"
        self.copy_done = False
        self.lag = 0.0
        # While the source does not answer, lag grows on its own from this monotonic time (the last
        # batch), so a read blocked on the gone source cannot freeze it.
        self.lag_growing_since: float | None = None
        self.copy = {"totalDocs": 0, "copiedDocs": 0, "totalBytes": 0, "copiedBytes": 0}
        self.events: Counter[str] = Counter()
        self.namespaces: list[dict[str, Any]] = []
        self.errors = 0
        self.last_error: str | None = None
        self.recent_errors: deque[dict[str, str]] = deque(maxlen=RECENT_ERRORS)
        # per source namespace: destination, documents to copy and copied, when its copy began
        self.copy_namespaces: dict[str, dict[str, Any]] = {}
        self.paused = False
        self.recopied: list[str] = []  # namespaces copied again because DDL changed them during the copy
        self.source_unreachable = False
        self.sinks: dict[str, dict[str, Any]] = {}  # per-sink counters (sinks.base.SinkStats)
        self.commit_requested = False
        self.commit_write_block = True  # the commit request's choice (POST {"writeBlock": false})
        self.started = time.time()

    def set(self, **fields: Any) -> None:
        with self.lock:
            for k, v in fields.items():
                setattr(self, k, v)
            if "last_error" in fields:
                recent_error(self.recent_errors, fields["last_error"])

    def current_lag(self) -> float:
        if self.source_unreachable and self.lag_growing_since is not None:
            return self.lag + (time.monotonic() - self.lag_growing_since)
        return self.lag

    def can_commit(self) -> bool:
        return (self.copy_done and self.current_lag() < 1.0 and not self.source_unreachable
                and self.state in ("RUNNING", "CATCHING_UP"))

    def shown_state(self) -> str:
        return "SOURCE_UNREACHABLE" if self.source_unreachable and self.state != "COMMITTED" else self.state

    def health(self) -> Health:
        with self.lock:
            state = self.shown_state()
            return Health(state, STATES, state not in UNHEALTHY, self.last_error, self.started)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "state": self.shown_state(),
                "canCommit": self.can_commit(),
                "lagTimeSeconds": round(self.current_lag(), 3),
                "copy": {**self.copy, "etaSeconds": eta_seconds(
                    self.copy["copiedDocs"], self.copy["totalDocs"], time.time() - self.started)},
                "copyNamespaces": [self._copy_namespace(src, n) for src, n in self.copy_namespaces.items()],
                "events": {t: int(self.events.get(t, 0)) for t in EVENT_TYPES},
                "namespaces": [dict(n) for n in self.namespaces],
                "recopied": list(self.recopied),
                "sourceUnreachable": self.source_unreachable,
                "sinks": {name: dict(s) for name, s in self.sinks.items()},
                "errors": self.errors,
                "lastError": self.last_error,
                "recentErrors": list(self.recent_errors),
                "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }

    @staticmethod
    def _copy_namespace(src: str, n: dict[str, Any]) -> dict[str, Any]:
        eta = 0.0 if n["done"] else eta_seconds(n["copiedDocs"], n["totalDocs"], time.time() - n["startedAt"])
        return {"source": src, "destination": n["destination"], "totalDocs": n["totalDocs"],
                "copiedDocs": n["copiedDocs"], "done": n["done"], "etaSeconds": eta}


class StatusReporter:
    """Copy progress into the status (and on to the user's reporter)."""

    def __init__(self, inner: Reporter, status: JobStatus) -> None:
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
        with self.status.lock:
            n = self.status.copy_namespaces.setdefault(
                src, {"destination": dst, "totalDocs": 0, "copiedDocs": 0, "done": False, "startedAt": time.time()})
            n["copiedDocs"] += docs
            n["totalDocs"] = max(n["totalDocs"] + total_docs, n["copiedDocs"])
        self.inner.add(src, dst, total_docs, total_bytes, docs, bytes_)

    def advance(self, src: str, docs: int, bytes_: int) -> None:
        self._bump(docs, bytes_)
        with self.status.lock:
            n = self.status.copy_namespaces.get(src)
            if n is not None:
                n["copiedDocs"] += docs
                n["totalDocs"] = max(n["totalDocs"], n["copiedDocs"])
        self.inner.advance(src, docs, bytes_)

    def finish(self, src: str) -> None:
        with self.status.lock:
            n = self.status.copy_namespaces.get(src)
            if n is not None:
                n["done"] = True
        self.inner.finish(src)

    def close(self) -> None:
        self.inner.close()


class StatusCollector(Collector):
    """Prometheus metrics read from the status snapshot at scrape time (beside state/health's)."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        snap = self.status.snapshot()
        lag = GaugeMetricFamily("mongoferry_lag_seconds", "Seconds between the source writing the last applied "
                                "change and now (0 when nothing is pending)")
        lag.add_metric([], snap["lagTimeSeconds"])
        yield lag
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
        sink_events = CounterMetricFamily("mongoferry_sink_events", "Change events applied, by sink", labels=["sink"])
        sink_lag = GaugeMetricFamily("mongoferry_sink_lag_seconds", "Lag of each sink", labels=["sink"])
        sink_errors = CounterMetricFamily("mongoferry_sink_errors", "Errors met by each sink", labels=["sink"])
        for name, s in snap["sinks"].items():
            sink_events.add_metric([name], s["events"])
            sink_lag.add_metric([name], s["lagSeconds"])
            sink_errors.add_metric([name], s["errors"])
        yield sink_events
        yield sink_lag
        yield sink_errors
        up = GaugeMetricFamily("mongoferry_source_reachable", "1 while the source answers, 0 while it does not")
        up.add_metric([], 0.0 if snap["sourceUnreachable"] else 1.0)
        yield up
        delta = GaugeMetricFamily("mongoferry_namespace_delta", "Source count minus destination count",
                                  labels=["source", "destination"])
        for n in snap["namespaces"]:
            delta.add_metric([n["source"], n["destination"]], n.get("delta", 0))
        yield delta
