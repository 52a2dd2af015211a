"""The one throttle point before writes: documents and bytes per second, changeable while running.

A token bucket per limit, refilled continuously, holding at most one second of budget (so a pause
is not followed by a burst). A batch larger than one second's budget waits for its whole cost: the
rate holds on average, whatever the batch size.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Throttle:
    max_docs_per_s: float | None = None
    max_bytes_per_s: float | None = None
    throttled_s: float = 0.0  # time spent waiting, for progress and metrics
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _docs: float = 0.0
    _bytes: float = 0.0
    _last: float = field(default_factory=time.monotonic, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.max_docs_per_s or self.max_bytes_per_s)

    def set_limits(self, max_docs_per_s: float | None, max_bytes_per_s: float | None) -> None:
        with self._lock:
            self.max_docs_per_s, self.max_bytes_per_s = max_docs_per_s or None, max_bytes_per_s or None
            self._docs = min(self._docs, self.max_docs_per_s or 0.0)
            self._bytes = min(self._bytes, self.max_bytes_per_s or 0.0)

    def describe(self) -> dict[str, float | None]:
        """The limits and the time spent waiting, as progress and the throttle API show them."""
        return {"maxDocsPerSecond": self.max_docs_per_s, "maxBytesPerSecond": self.max_bytes_per_s,
                "throttledSeconds": round(self.throttled_s, 3)}

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

    def wait(self, docs: int, nbytes: int, stop: threading.Event | None = None) -> None:
        if not self.active:
            return
        pause = self.delay(docs, nbytes, time.monotonic())
        if pause > 0:
            self.throttled_s += pause
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)
