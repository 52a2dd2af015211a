"""How the source is doing, for `--max-source-latency` and `--max-source-lag`: sampled at most once a
second whichever thread asks, so N copy readers add one serverStatus a second, not N.

Latency is the mean of the reads and writes the source ran since the last sample (serverStatus
`opLatencies`, the application's operations and ours). A server that reports no opLatencies
(SecantusDB) is measured from here instead: the round trip of a `ping`. Replication lag is the
slowest healthy secondary's (replSetGetStatus), leaving out members delayed on purpose
(replSetGetConfig's secondaryDelaySecs). With several sources (a cluster backup's
shards) the worst of them counts. A server that is not a replica set, or a user without
the clusterMonitor role, has none we can see, and that is said once in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pymongo
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from mongoferry.core.pacing import delayed_members, mean_op_latency_ms, replication_lag
from mongoferry.infra.redact import redact

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
UNAUTHORIZED = 13  # the server's error code for a command the user may not run
SAMPLE_TIMEOUT_S = 2.0  # a struggling server's slow answer must not hold the sampler (and the job) long


class SourceHealth:
    def __init__(self, *clients: MongoClient[Any], every_s: float = SAMPLE_EVERY_S) -> None:
        self.clients = list(clients)
        self.every_s = every_s
        self.latency_ms: float | None = None
        self.lag_s: float | None = None
        self._lock = threading.Lock()
        self._sampled = 0.0
        self._status: dict[int, Mapping[str, Any]] = {}
        self._delayed: dict[int, set[Any]] = {}
        self._said: set[str] = set()

    def sample(self, latency: bool, lag: bool) -> None:
        """Refresh what is asked for, unless another thread did less than `every_s` ago."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is sampling: its answer will do
        try:
            if time.monotonic() - self._sampled < self.every_s:
                return
            self._sampled = time.monotonic()
            if latency:
                self.latency_ms = worst(self._measure("latency", self._latency, i, c)
                                        for i, c in enumerate(self.clients))
            if lag:
                self.lag_s = worst(self._measure("lag", self._lag, i, c) for i, c in enumerate(self.clients))
        finally:
            self._lock.release()

    def _measure(self, what: str, how: Callable[[int, MongoClient[Any]], float | None], i: int,
                 client: MongoClient[Any]) -> float | None:
        """One measurement, bounded in time; a failure counts as unknown (it holds nothing), said once."""
        try:
            with pymongo.timeout(SAMPLE_TIMEOUT_S):
                return how(i, client)
        except PyMongoError as exc:
            if what not in self._said:
                self._said.add(what)
                denied = isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED
                log.warning(f"the source's {what} could not be read ({redact(str(exc))}): --max-source-{what} "
                            "holds nothing while that lasts"
                            + (" (the user needs the clusterMonitor role)" if denied else ""))
            return None

    def _latency(self, i: int, client: MongoClient[Any]) -> float | None:
        status = client.admin.command("serverStatus", opLatencies={"histograms": False}, repl=0,
                                           metrics=0, locks=0, wiredTiger=0)
        if "opLatencies" not in status:
            started = time.perf_counter()
            client.admin.command("ping")
            return (time.perf_counter() - started) * 1000.0
        before, self._status[i] = self._status.get(i), status
        return mean_op_latency_ms(before, status) if before is not None else None

    def _lag(self, i: int, client: MongoClient[Any]) -> float | None:
        try:
            status = client.admin.command("replSetGetStatus")
            if i not in self._delayed:
                self._delayed[i] = delayed_of(client)
        except OperationFailure:
            if "no-lag" not in self._said:
                self._said.add("no-lag")
                log.info("the source's replication lag is not available (not a replica set, or no "
                         "clusterMonitor role): --max-source-lag has no effect")
            return None
        return replication_lag(status, self._delayed[i])


def delayed_of(client: MongoClient[Any]) -> set[Any]:
    """The members delayed on purpose, or none where the configuration cannot be read."""
    try:
        return delayed_members(client.admin.command("replSetGetConfig"))
    except OperationFailure:
        return set()


def worst(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None
