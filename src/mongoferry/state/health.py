"""What every job's HTTP app says of itself, whatever the job: its state among the states it can be
in, whether it is healthy, its last error and since when it runs. One model for the three status
kinds (JobStatus: sync, split, backup, publish-redis; PruneStatus; the verifier), so `/healthz`
and the `mongoferry_state{state}` family read the same everywhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from mongoferry import __version__


@dataclass(frozen=True)
class Health:
    state: str
    states: tuple[str, ...]  # every state the job can be in: one metric series each
    ok: bool  # false while the job cannot make progress (source gone, failed commit, failed run)
    last_error: str | None
    started: float  # wall-clock time the job began

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "state": self.state, "lastError": self.last_error,
                "uptimeSeconds": round(time.time() - self.started, 1)}


class Observed(Protocol):
    def health(self) -> Health: ...


class HealthCollector(Collector):
    """The metrics every job has: its kind and version, its state, whether it is healthy."""

    def __init__(self, observed: Observed, kind: str) -> None:
        self.observed = observed
        self.kind = kind

    def collect(self) -> Iterator[Any]:
        h = self.observed.health()
        info = GaugeMetricFamily("mongoferry_job_info", "1, labelled with the job's kind and mongoferry's version",
                                 labels=["kind", "version"])
        info.add_metric([self.kind, __version__], 1.0)
        yield info
        state = GaugeMetricFamily("mongoferry_state", "1 for the job's current state", labels=["state"])
        for s in h.states if h.state in h.states else (*h.states, h.state):
            state.add_metric([s], 1.0 if h.state == s else 0.0)
        yield state
        yield GaugeMetricFamily("mongoferry_healthy", "1 while the job can make progress (as /healthz's ok)",
                                value=1.0 if h.ok else 0.0)
        yield GaugeMetricFamily("mongoferry_start_time_seconds", "When the job began (Unix time)", value=h.started)


def job_registry(observed: Observed, kind: str, *collectors: Collector) -> CollectorRegistry:
    """A job's /metrics: the shared families, then the job's own."""
    registry = CollectorRegistry()
    registry.register(HealthCollector(observed, kind))
    for collector in collectors:
        registry.register(collector)
    return registry
