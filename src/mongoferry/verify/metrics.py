"""The verifier's /metrics: what /api/v1/progress says, as Prometheus families (read at scrape
time, like every job's), beside the shared ones of state/health."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

TASK_STATUSES = {"addedTasks": "added", "processingTasks": "processing", "completedTasks": "completed",
                 "failedTasks": "failed", "metadataMismatchTasks": "metadata_mismatch"}


class Progressing(Protocol):
    def progress(self) -> dict[str, Any]: ...


class VerifyCollector(Collector):
    def __init__(self, verifier: Progressing) -> None:
        self.verifier = verifier

    def collect(self) -> Iterator[Any]:
        p = self.verifier.progress()["progress"]
        yield GaugeMetricFamily("mongoferry_verify_generation", "The generation being checked (0: the first pass; "
                                "then rechecks of what changed)", value=p["generation"])
        stats = p["generationStats"]
        yield GaugeMetricFamily("mongoferry_verify_generation_docs_compared", "Documents compared in this "
                                "generation", value=stats["docsCompared"])
        yield GaugeMetricFamily("mongoferry_verify_generation_docs_total", "Documents to compare in this "
                                "generation (estimate)", value=stats["totalDocs"])
        yield CounterMetricFamily("mongoferry_verify_docs_compared", "Documents compared by this process",
                                  value=p["docsCompared"])
        tasks = GaugeMetricFamily("mongoferry_verify_tasks", "This generation's tasks, by status", labels=["status"])
        for key, status in TASK_STATUSES.items():
            tasks.add_metric([status], p["verificationStatus"][key])
        yield tasks
        found = GaugeMetricFamily("mongoferry_verify_mismatches", "Differences found in the generation served "
                                  "(the last complete one), by category:type", labels=["type"])
        for kind, n in sorted(p["mismatches"]["byType"].items()):
            found.add_metric([kind], n)
        yield found
        events = CounterMetricFamily("mongoferry_verify_change_events", "Change events read, by side and kind",
                                     labels=["side", "kind"])
        lag = GaugeMetricFamily("mongoferry_verify_change_lag_seconds", "How far each side's change reader is "
                                "behind", labels=["side"])
        for side in ("src", "dst"):
            change = p[f"{side}ChangeStats"]
            for kind, n in change["eventCounts"].items():
                events.add_metric([side, kind], n)
            if change.get("lagSecs") is not None:
                lag.add_metric([side], change["lagSecs"])
        yield events
        yield lag
        yield GaugeMetricFamily("mongoferry_verify_writes_off", "1 once writesOff was posted",
                                value=1.0 if p["writesOff"] else 0.0)
