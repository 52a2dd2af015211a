"""What a running prune reports: one snapshot feeds HTTP, Prometheus and the final summary."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mongoferry.state.health import Health

PAUSE_REASONS = ("window", "replication-lag", "latency", "paused")
STATES = ("STARTING", "RUNNING", "WAITING", "PAUSED", "STOPPED", "DONE")


@dataclass
class NamespaceProgress:
    ns: str
    estimated: int = 0  # documents in the namespace (metadata count) when the pass began
    scanned: int = 0
    deleted: int = 0
    kept_changed: int = 0  # to delete when read, but their key changed before the delete: kept
    unroutable: int = 0  # no part takes them: kept
    done: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {"ns": self.ns, "estimated": self.estimated, "scanned": self.scanned, "deleted": self.deleted,
                "keptChanged": self.kept_changed, "unroutable": self.unroutable, "done": self.done}


@dataclass
class PruneStatus:
    state: str = "STARTING"  # one of STATES
    rate: float | None = None  # documents/s, None for no limit
    paused: bool = False
    waiting_for: str | None = None  # why it is waiting right now
    namespaces: dict[str, NamespaceProgress] = field(default_factory=dict)
    pauses: Counter[str] = field(default_factory=Counter)  # reason → times
    paused_s: dict[str, float] = field(default_factory=dict)  # reason → seconds
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    last_error: str | None = None

    def set(self, **fields: Any) -> None:
        with self.lock:
            for k, v in fields.items():
                setattr(self, k, v)

    def health(self) -> Health:
        with self.lock:
            began = time.time() - (time.monotonic() - self.started)
            # a prune exits on any error it does not retry: while it serves, it is healthy
            return Health(self.state, STATES, True, self.last_error, began)

    def waited(self, reason: str, seconds: float) -> None:
        with self.lock:
            self.pauses[reason] += 1
            self.paused_s[reason] = self.paused_s.get(reason, 0.0) + seconds

    def totals(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for p in self.namespaces.values():
            out.update(scanned=p.scanned, deleted=p.deleted, estimated=p.estimated)
        return dict(out)

    def eta_seconds(self) -> float | None:
        """Time left at the average rate so far, from what is left to scan (scanning finds the work)."""
        t = self.totals()
        elapsed = time.monotonic() - self.started
        if not t.get("scanned") or elapsed <= 0:
            return None
        left = max(0, t.get("estimated", 0) - t["scanned"])
        return round(left / (t["scanned"] / elapsed), 1)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            elapsed = time.monotonic() - self.started
            t = self.totals()
            return {
                "state": self.state,
                "waitingFor": self.waiting_for,
                "rateLimit": self.rate,
                "elapsedSeconds": round(elapsed, 1),
                "deleted": t.get("deleted", 0),
                "scanned": t.get("scanned", 0),
                "averageRate": round(t.get("deleted", 0) / elapsed, 1) if elapsed > 0 else 0.0,
                "etaSeconds": self.eta_seconds(),
                "namespaces": [p.to_doc() for p in self.namespaces.values()],
                "pauses": {r: {"times": self.pauses[r], "seconds": round(self.paused_s.get(r, 0.0), 1)}
                           for r in PAUSE_REASONS if self.pauses[r]},
                "lastError": self.last_error,
                "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }


class PruneCollector(Collector):
    def __init__(self, status: PruneStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        snap = self.status.snapshot()
        deleted = CounterMetricFamily("mongoferry_prune_deleted", "Documents deleted, by namespace", labels=["ns"])
        scanned = CounterMetricFamily("mongoferry_prune_scanned", "Documents read, by namespace", labels=["ns"])
        for n in snap["namespaces"]:
            deleted.add_metric([n["ns"]], n["deleted"])
            scanned.add_metric([n["ns"]], n["scanned"])
        yield deleted
        yield scanned
        rate = GaugeMetricFamily("mongoferry_prune_rate_limit", "Documents/s allowed (0: no limit)")
        rate.add_metric([], snap["rateLimit"] or 0.0)
        yield rate
        waiting = GaugeMetricFamily("mongoferry_prune_waiting", "1 while waiting, by reason", labels=["reason"])
        for r in PAUSE_REASONS:
            waiting.add_metric([r], 1.0 if snap["waitingFor"] == r else 0.0)
        yield waiting
