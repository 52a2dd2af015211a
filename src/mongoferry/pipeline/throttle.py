"""The one throttle point before writes: documents and bytes per second, and a hold while the source
suffers, all changeable while running.

A token bucket per limit, refilled continuously, holding at most one second of budget (so a pause
is not followed by a burst). A batch larger than one second's budget waits for its whole cost: the
rate holds on average, whatever the batch size.

With `max_source_latency_ms` / `max_source_lag_s` and a `SourceHealth`, a batch also waits while
the source's operation latency or its secondaries' lag is above the limit (checked each
`HOLD_STEP_S`), the way gh-ost backs off: the job slows to what production can take, and the time
waited is counted by reason.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

HOLD_STEP_S = 0.5
REASONS = ("rate", "source-latency", "replication-lag")


class Health(Protocol):
    """How the source is doing (pipeline/source_health.py samples a real one)."""

    latency_ms: float | None
    lag_s: float | None

    def sample(self, latency: bool, lag: bool) -> None: ...


@dataclass
class Throttle:
    max_docs_per_s: float | None = None
    max_bytes_per_s: float | None = None
    max_source_latency_ms: float | None = None
    max_source_lag_s: float | None = None
    health: Health | None = None  # how the source is doing; without it the two source limits wait for nothing
    waited_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REASONS, 0.0))
    holding_for: str | None = None  # the reason batches are waiting right now (source limits only)
    _holders: int = 0  # threads held by a source limit now
    _hold_said: float = 0.0  # when a hold was last logged (once a minute while it lasts)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _docs: float = 0.0
    _bytes: float = 0.0
    _last: float = field(default_factory=time.monotonic, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.max_docs_per_s or self.max_bytes_per_s or self.watching)

    @property
    def watching(self) -> bool:
        return self.health is not None and bool(self.max_source_latency_ms or self.max_source_lag_s)

    @property
    def throttled_s(self) -> float:
        return sum(self.waited_s.values())

    def set_limits(self, max_docs_per_s: float | None, max_bytes_per_s: float | None) -> None:
        with self._lock:
            self.max_docs_per_s, self.max_bytes_per_s = max_docs_per_s or None, max_bytes_per_s or None
            self._docs = min(self._docs, self.max_docs_per_s or 0.0)
            self._bytes = min(self._bytes, self.max_bytes_per_s or 0.0)

    def set_source_limits(self, max_source_latency_ms: float | None, max_source_lag_s: float | None) -> None:
        self.max_source_latency_ms, self.max_source_lag_s = max_source_latency_ms or None, max_source_lag_s or None

    def describe(self) -> dict[str, Any]:
        """The limits, what the source looks like, and the time spent waiting (in all and by reason),
        as progress and the throttle API show them."""
        health = self.health
        return {"maxDocsPerSecond": self.max_docs_per_s, "maxBytesPerSecond": self.max_bytes_per_s,
                "maxSourceLatencyMs": self.max_source_latency_ms, "maxSourceLagSeconds": self.max_source_lag_s,
                "sourceLatencyMs": _round(health.latency_ms if health else None),
                "sourceLagSeconds": _round(health.lag_s if health else None),
                "holdingFor": self.holding_for,
                "throttledSeconds": round(self.throttled_s, 3),
                "throttledSecondsBy": {k: round(v, 3) for k, v in self.waited_s.items()}}

    def delay(self, docs: int, nbytes: int, now: float) -> float:
        """Take a batch's cost from the budget; the seconds to wait before writing it (pure arithmetic)."""
        with self._lock:
            elapsed = max(0.0, now - self._last)
            self._last = now
            wait = 0.0
            if self.max_docs_per_s:
                self._docs = min(self.max_docs_per_s, self._docs + elapsed * self.max_docs_per_s) - docs
                wait = max(wait, -self._docs / self.max_docs_per_s)
            if self.max_bytes_per_s:
                self._bytes = min(self.max_bytes_per_s, self._bytes + elapsed * self.max_bytes_per_s) - nbytes
                wait = max(wait, -self._bytes / self.max_bytes_per_s)
            return wait

    def hold_reason(self) -> str | None:
        """Why the source says wait now, or None (samples it when due)."""
        health = self.health
        if health is None or not self.watching:
            return None
        latency, lag = self.max_source_latency_ms, self.max_source_lag_s
        health.sample(latency=bool(latency), lag=bool(lag))
        return source_verdict(latency, lag, health.latency_ms, health.lag_s)

    def wait(self, docs: int, nbytes: int, stop: threading.Event | None = None) -> None:
        if not self.active:
            return
        pause = self.delay(docs, nbytes, time.monotonic())
        if pause > 0:
            self._sleep("rate", pause, stop)
        reason = self.hold_reason()
        if reason is None:
            return
        with self._lock:
            self._holders += 1
        try:
            while reason is not None and not (stop is not None and stop.is_set()):
                self.holding_for = reason
                self._say_held(reason)
                self._sleep(reason, HOLD_STEP_S, stop)
                reason = self.hold_reason()
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self.holding_for = None

    def _say_held(self, reason: str) -> None:
        """A hold is logged when it starts and once a minute while it lasts: a limit set below the
        source's normal latency (or a lag that never closes) would otherwise stall the job quietly."""
        now = time.monotonic()
        if now - self._hold_said < 60.0:
            return
        self._hold_said = now
        health = self.health
        log.warning("holding: the source is above a limit", extra={
            "reason": reason, "sourceLatencyMs": _round(health.latency_ms if health else None),
            "maxSourceLatencyMs": self.max_source_latency_ms,
            "sourceLagSeconds": _round(health.lag_s if health else None), "maxSourceLagSeconds": self.max_source_lag_s,
            "heldSeconds": round(self.waited_s[reason], 1)})

    def _sleep(self, reason: str, seconds: float, stop: threading.Event | None) -> None:
        with self._lock:
            self.waited_s[reason] += seconds  # thread-seconds: N readers held one second count N
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)


class Limits(Protocol):
    """What a job's settings say about its pace (copy, sync, split and backup settings all do)."""

    @property
    def max_docs_per_s(self) -> float | None: ...
    @property
    def max_bytes_per_s(self) -> float | None: ...
    @property
    def max_source_latency(self) -> float | None: ...
    @property
    def max_source_lag(self) -> float | None: ...


def job_throttle(settings: Limits, health: Health) -> Throttle:
    """The one throttle of a job, from its settings' limits, watching the source through `health`."""
    return Throttle(settings.max_docs_per_s, settings.max_bytes_per_s, settings.max_source_latency,
                    settings.max_source_lag, health=health)


def source_verdict(max_latency_ms: float | None, max_lag_s: float | None,
                   latency_ms: float | None, lag_s: float | None) -> str | None:
    """The reason to hold, from the limits and the last sample (unknown values hold nothing)."""
    if max_latency_ms and latency_ms is not None and latency_ms > max_latency_ms:
        return "source-latency"
    if max_lag_s and lag_s is not None and lag_s > max_lag_s:
        return "replication-lag"
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
