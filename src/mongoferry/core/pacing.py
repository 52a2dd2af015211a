"""How gently a background job goes (pure): time windows, replication lag, and latency backoff.

- Windows are `HH:MM-HH:MM` in one time zone (UTC unless told); one may cross midnight
  (`22:00-06:00`). With none given the job may run at any time.
- Replication lag is what `replSetGetStatus` shows: the primary's optime minus the oldest optime
  of a healthy secondary (a member that is down is not replicating, and waiting for it could last
  days). A deployment without secondaries has no lag.
- A source's operation latency is what serverStatus `opLatencies` counts: the mean of the reads and
  writes it ran between two replies (microseconds and operations are running totals since start).
- Latency backoff compares each probe (a read of one document by `_id`) with the lowest latency
  seen lately; well above it, the job pauses, longer each time the rise persists.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mongoferry.core.errors import UsageError

_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Window:
    start: int  # minutes after midnight
    end: int

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # crosses midnight

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text.strip())
    hint = "write HH:MM-HH:MM, for example --window 22:00-06:00"
    if not m:
        raise UsageError(f"--window {text!r} is not HH:MM-HH:MM", hint)
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise UsageError(f"--window {text!r} is not a time of day", hint)
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise UsageError(f"--window {text!r} is empty", "give two different times, or no --window to run at any time")
    return Window(start, end)


def seconds_until_open(windows: Sequence[Window], now: dt.datetime) -> float:
    """0 inside a window (or with none); otherwise the seconds until the next one opens."""
    if not windows:
        return 0.0
    minute = now.hour * 60 + now.minute
    if any(w.contains(minute) for w in windows):
        return 0.0
    into_minute = now.second + now.microsecond / 1e6
    waits = [((w.start - minute) % 1440) * 60 - into_minute for w in windows]
    return max(0.0, min(waits))


def delayed_members(config: Mapping[str, Any]) -> set[Any]:
    """The `_id`s of members a replSetGetConfig reply says are delayed on purpose (their lag is no
    sign of trouble: waiting for one would wait forever)."""
    members = (config.get("config") or config).get("members") or []
    return {m.get("_id") for m in members if (m.get("secondaryDelaySecs") or m.get("slaveDelay") or 0) > 0}


def replication_lag(status: Mapping[str, Any], skip: set[Any] | frozenset[Any] = frozenset()) -> float:
    """Seconds the slowest healthy secondary (not in `skip`: delayed members) is behind the
    primary, from a replSetGetStatus reply."""
    members = [m for m in status.get("members") or [] if m.get("_id") not in skip]
    primary = next((m for m in members if m.get("state") == 1), None)
    if primary is None or not isinstance(primary.get("optimeDate"), dt.datetime):
        return 0.0
    top: dt.datetime = primary["optimeDate"]
    behind = [(top - m["optimeDate"]).total_seconds() for m in members
              if m.get("state") == 2 and m.get("health", 1) == 1 and isinstance(m.get("optimeDate"), dt.datetime)]
    return float(max([0.0, *behind]))


@dataclass
class LatencyGuard:
    """Pause when a probe takes `factor` times the lowest latency of the last `window` probes
    (and at least `floor_s`): 1 s, then doubling up to `max_pause_s` while it stays high."""

    factor: float = 4.0
    floor_s: float = 0.05
    max_pause_s: float = 60.0
    window: int = 100
    _recent: deque[float] = field(default_factory=deque)
    _pause: float = 0.0

    def observe(self, latency_s: float) -> float:
        """Record one probe; the seconds to pause before the next batch (0 when latency is normal)."""
        baseline = min(self._recent) if self._recent else latency_s
        self._recent.append(latency_s)
        if len(self._recent) > self.window:
            self._recent.popleft()
        if latency_s > max(self.floor_s, self.factor * baseline):
            self._pause = min(self.max_pause_s, self._pause * 2 if self._pause else 1.0)
            return self._pause
        self._pause = 0.0
        return 0.0


def mean_op_latency_ms(before: Mapping[str, Any], after: Mapping[str, Any]) -> float | None:
    """The mean latency (ms) of the reads and writes a server ran between two serverStatus replies;
    None when it ran none, reports no opLatencies, or restarted (its totals went down)."""
    micros = ops = 0
    for kind in ("reads", "writes"):
        a = (before.get("opLatencies") or {}).get(kind) or {}
        b = (after.get("opLatencies") or {}).get(kind) or {}
        if "latency" not in a or "latency" not in b:
            return None
        micros += int(b["latency"]) - int(a["latency"])
        ops += int(b.get("ops", 0)) - int(a.get("ops", 0))
    if ops <= 0 or micros < 0:
        return None
    return micros / ops / 1000.0


def eta_seconds(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far; None before there is a rate (or with nothing to estimate)."""
    if total <= 0 or done >= total:
        return 0.0 if total > 0 or done > 0 else None
    if done <= 0 or elapsed_s <= 0:
        return None
    return round((total - done) * elapsed_s / done, 1)
