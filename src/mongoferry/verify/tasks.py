"""The verifier's task results and recheck-queue rules: the sink a task reports to (findings and
their rechecks, written in batches), the compare rate, and the pure rules for mismatch ages,
queue merges and the remaining-time estimate."""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from bson import Binary
from pymongo import UpdateOne
from pymongo.collection import Collection

from mongoferry.core.model import utc_now
from mongoferry.verify.findings import DocFinding, NsFinding, Pair, Sink, diff_to_json
from mongoferry.verify.keys import raw_id_document

FLUSH_FINDINGS: Final = 200


def merge_entry(doc: Mapping[str, Any]) -> UpdateOne | None:
    """The update that folds a duplicate recheck-queue entry into the stored one."""
    update: dict[str, Any] = {}
    if "first" in doc:
        update["$min"] = {"first": doc["first"]}
    if "changed" in doc:
        update["$max"] = {"changed": doc["changed"]}
    return UpdateOne({"_id": doc["_id"]}, update) if update else None


def estimate_remaining(stats: Mapping[str, Any], docs_per_s: float, src_bytes_per_s: float) -> float | None:
    """``estCheckSecsRemaining`` of generation 0: source bytes left over the byte rate, or, when
    the server gives no size, documents left over the document rate; 0 once all are compared;
    None without a rate."""
    if stats["totalDocs"] and stats["docsCompared"] >= stats["totalDocs"]:
        return 0.0
    total_bytes = stats.get("totalSrcBytes")
    if total_bytes and src_bytes_per_s > 0:
        return round(max(0.0, float(total_bytes - stats["srcBytesCompared"]) / src_bytes_per_s), 1)
    if docs_per_s > 0:
        return round(max(0.0, float(stats["totalDocs"] - stats["docsCompared"]) / docs_per_s), 1)
    return None


def mismatch_since(first: dt.datetime | None, changed: dt.datetime | None) -> dt.datetime | None:
    """Since when a document has been seen to differ: its first mismatch, unless it changed later
    (then the age restarts at the change); None when it was only changed."""
    if first is None or changed is None:
        return first
    return max(first, changed)


class TaskSink(Sink):
    """Persists a task's findings (and their rechecks) in batches; counts its progress."""

    def __init__(self, verifier: TaskHost, task: dict[str, Any]) -> None:
        super().__init__()
        self.verifier = verifier
        self.task = task
        self.generation: int = task["generation"]
        self.final: bool = verifier.final
        self.firsts: dict[bytes, dt.datetime] = {}
        for key, first in zip(task.get("ids") or [], task.get("firsts") or [], strict=False):
            if first is not None:
                self.firsts[bytes(key)] = first
        self.buffer: list[dict[str, Any]] = []
        self.rechecks: list[tuple[int, str, str, Any, dt.datetime | None]] = []
        self.findings = 0

    def _base(self, finding: DocFinding | NsFinding, first: dt.datetime) -> dict[str, Any]:
        now = utc_now()
        if first.tzinfo is None:
            first = first.replace(tzinfo=dt.UTC)
        return {"generation": self.generation, "taskId": self.task["_id"], "taskType": self.task["type"],
                "type": finding.type, "namespace": finding.ns, "dstNamespace": finding.dst_ns,
                "first": first, "durationMS": int((now - first).total_seconds() * 1000)}

    def doc(self, finding: DocFinding) -> None:
        first = self.firsts.get(finding.key) or utc_now()
        doc = self._base(finding, first)
        doc.update(category="document", key=Binary(finding.key), id=raw_id_document(finding.key),
                   lines=len({d.top_field for d in finding.diffs}) or 1,  # DocMismatchInfo lines it makes
                   diffs=json.dumps([diff_to_json(d) for d in finding.diffs], ensure_ascii=False))
        with self.lock:
            self.findings += 1
            self.buffer.append(doc)
            if not self.final:
                self.rechecks.append((self.generation + 1, finding.ns, finding.dst_ns, Binary(finding.key), first))
            full = len(self.buffer) >= FLUSH_FINDINGS
        if full:
            self.flush()

    def namespace(self, finding: NsFinding) -> None:
        doc = self._base(finding, utc_now())
        doc.update(category="namespace", aspect=finding.aspect, component=finding.component, detail=finding.detail)
        with self.lock:
            self.findings += 1
            self.buffer.append(doc)
            if not self.final:
                self.rechecks.append((self.generation + 1, finding.ns, finding.dst_ns, "meta", None))

    def counted(self, pair: Pair, src_docs: int, dst_docs: int, src_bytes: int, dst_bytes: int) -> None:
        self.verifier.rate.add(src_docs, src_bytes + dst_bytes)

    def flush(self) -> None:
        with self.lock:
            buffer, self.buffer = self.buffer, []
            rechecks, self.rechecks = self.rechecks, []
        if rechecks:
            self.verifier.enqueue(rechecks)
        if buffer:
            self.verifier.mismatches.insert_many(buffer, ordered=False)


class Rate:
    """Documents and bytes compared: totals and a rolling per-second rate."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.lock = threading.Lock()
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self.docs = 0
        self.bytes = 0

    def add(self, docs: int, nbytes: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.docs += docs
            self.bytes += nbytes
            self.samples.append((now, docs, nbytes))
            while self.samples and now - self.samples[0][0] > self.window_s:
                self.samples.popleft()

    def per_second(self) -> tuple[float, float]:
        now = time.monotonic()
        with self.lock:
            while self.samples and now - self.samples[0][0] > self.window_s:
                self.samples.popleft()
            docs = sum(s[1] for s in self.samples)
            nbytes = sum(s[2] for s in self.samples)
        return docs / self.window_s, nbytes / self.window_s


class TaskHost(Protocol):
    """What a task's sink needs of the verifier running it."""

    final: bool
    rate: Rate
    mismatches: Collection[dict[str, Any]]

    def enqueue(self, entries: list[tuple[int, str, str, Any, dt.datetime | None]],
                changed: dt.datetime | None = None) -> None: ...
