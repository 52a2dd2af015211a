"""What the verifier server reports: phase, per-generation task and comparison statistics,
mismatch counts and listings, ``/progress`` and ``/summary`` (a mixin of the Verifier; all reads)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Final, cast

from bson import ObjectId, json_util
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection

from mongoferry.state.health import Health
from mongoferry.verify.api import doc_mismatch_lines, mismatch_to_json, ns_mismatch_info
from mongoferry.verify.findings import Pair
from mongoferry.verify.readers import EVENT_KINDS, ChangeReader
from mongoferry.verify.tasks import Rate, TaskSink, estimate_remaining

GENERATIONS_ID: Final = "generations"
STATUSES: Final = ("added", "processing", "failed", "completed", "mismatch")
STATES: Final = ("IDLE", "CHECKING", "RECHECKING", "DONE", "FAILED")  # the shared health model's


class Reports:
    """Reads of the verifier's state for the HTTP API; the Verifier provides the attributes."""

    running: bool
    error: str | None
    generation: int
    final: bool
    state: dict[str, Any]
    pairs: list[Pair]
    rate: Rate
    readers: dict[str, ChangeReader]
    live: dict[ObjectId, TaskSink]
    gen0_cache: dict[str, Any] | None
    states: Collection[dict[str, Any]]
    tasks: Collection[dict[str, Any]]
    mismatches: Collection[dict[str, Any]]
    started: float

    def recent_recheck_secs(self) -> list[float]:
        """Durations of the last (up to 10) finished recheck generations."""
        saved = self.states.find_one({"_id": GENERATIONS_ID}) or {}
        out: list[tuple[int, float]] = []
        for name, times in saved.items():
            if name.startswith("g") and name[1:].isdigit() and int(name[1:]) > 0 \
                    and isinstance(times, dict) and "start" in times and "end" in times:
                out.append((int(name[1:]), round((times["end"] - times["start"]).total_seconds(), 3)))
        return [secs for _, secs in sorted(out)[-10:]]

    def phase(self) -> str:
        if not self.running:
            return "idle"
        return "check" if self.generation == 0 else "recheck"

    def health(self) -> Health:
        """The verifier in the model every job's /healthz and mongoferry_state share (its phase
        stays migration-verifier's in /progress)."""
        if self.error is not None:
            state = "FAILED"
        elif self.running:
            state = "CHECKING" if self.generation == 0 else "RECHECKING"
        else:
            state = "DONE" if self.state.get("done") else "IDLE"
        return Health(state, STATES, self.error is None, self.error, self.started)

    def status_counts(self, generation: int) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        rechecks = 0
        for t in self.tasks.find({"generation": generation}, {"status": 1, "kind": 1}):
            counts[t["status"]] = counts.get(t["status"], 0) + 1
            rechecks += t.get("kind") == "ids"
        return {"totalTasks": sum(counts.values()), "addedTasks": counts["added"],
                "processingTasks": counts["processing"], "failedTasks": counts["failed"],
                "completedTasks": counts["completed"], "metadataMismatchTasks": counts["mismatch"],
                "recheckTasks": rechecks}

    def generation_stats(self, generation: int) -> dict[str, Any]:
        docs = total = sbytes = 0
        total_bytes = 0
        namespaces = 0
        for t in self.tasks.find({"generation": generation}, {"type": 1, "status": 1, "src_docs": 1, "src_bytes": 1,
                                                              "documents_count": 1, "bytes_count": 1}):
            if t["type"] == "verifyCollection":
                namespaces += 1
                if generation == 0:
                    total += int(t.get("documents_count") or 0)
                    total_bytes += int(t.get("bytes_count") or 0)
            else:
                if generation > 0:
                    total += int(t.get("documents_count") or 0)
                if t["status"] in ("completed", "failed"):
                    docs += int(t.get("src_docs") or 0)
                    sbytes += int(t.get("src_bytes") or 0)
        for sink in list(self.live.values()):
            if sink.generation == generation:
                docs += sink.src_docs
                sbytes += sink.src_bytes
        out: dict[str, Any] = {"docsCompared": docs, "totalDocs": total, "srcBytesCompared": sbytes}
        if total_bytes:
            out["totalSrcBytes"] = total_bytes
        out["totalNamespaces"] = namespaces if generation == 0 else len(self.pairs)
        return out

    def served_generation(self) -> int:
        """The generation whose findings are served: the final one when done, the current one
        during generation 0, otherwise the last complete one."""
        if not self.running or self.generation == 0:
            return self.generation
        return self.generation - 1

    def mismatch_counts(self, generation: int) -> dict[str, Any]:
        by_type: dict[str, int] = {}
        by_ns: dict[str, int] = {}
        for g in self.mismatches.aggregate([
                {"$match": {"generation": generation}},
                {"$group": {"_id": {"c": "$category", "t": "$type", "ns": "$namespace"}, "n": {"$sum": 1}}}]):
            kind, n = f"{g['_id']['c']}:{g['_id']['t']}", int(g["n"])
            by_type[kind] = by_type.get(kind, 0) + n
            by_ns[g["_id"]["ns"]] = by_ns.get(g["_id"]["ns"], 0) + n
        return {"generation": generation, "total": sum(by_type.values()), "byType": by_type, "byNamespace": by_ns}

    def change_stats(self, side: str, saved: Mapping[str, Any] | None = None) -> dict[str, Any]:
        reader = self.readers.get(side)
        if reader is not None:
            return reader.stats()
        if saved is None:
            saved = self.states.find_one({"_id": f"reader:{side}"}) or {}
        counts = dict.fromkeys(EVENT_KINDS, 0)
        counts.update({k: v for k, v in (saved.get("counts") or {}).items() if k in counts})
        return {"eventsPerSecond": None, "lagSecs": None, "bufferSaturation": 0.0, "eventCounts": counts}

    def total_rechecks_done(self) -> int:
        return sum(int(t.get("documents_count") or 0) for t in self.tasks.find(
            {"generation": {"$gt": 0}, "kind": "ids", "status": {"$in": ["completed", "failed"]}},
            {"documents_count": 1}))

    def progress(self) -> dict[str, Any]:
        generation = self.generation
        docs_per_s, bytes_per_s = self.rate.per_second()
        p: dict[str, Any] = {"phase": self.phase(), "generation": generation,
                             "generationStats": self.generation_stats(generation)}
        if generation > 0:
            if self.gen0_cache is None:
                self.gen0_cache = self.generation_stats(0)
            p["gen0Stats"] = self.gen0_cache
        recent = self.recent_recheck_secs()
        if recent:
            p["recentRecheckSecs"] = recent
        p["error"] = self.error
        p["verificationStatus"] = self.status_counts(generation)
        for side in ("src", "dst"):
            saved = self.states.find_one({"_id": f"reader:{side}"}) or {}
            p[f"{side}LastRecheckedTS"] = saved.get("ts")
            p[f"{side}ChangeStats"] = self.change_stats(side, saved)
        p["docsComparedPerSecond"] = round(docs_per_s, 3)
        p["srcBytesComparedPerSecond"] = round(bytes_per_s / 2, 3)
        if generation > 0:
            longest = self.longest_doc_mismatch()
            if longest is not None:
                p["longestDocMismatch"] = longest
        p["totalRechecksDone"] = self.total_rechecks_done()
        # mongoferry's own fields
        p["docsCompared"] = self.rate.docs
        p["mbPerSecond"] = round(bytes_per_s / 1e6, 3)
        p["writesOff"] = bool(self.state.get("writesOff"))
        p["finalGeneration"] = self.final
        p["done"] = bool(self.state.get("done"))
        p["mismatches"] = self.mismatch_counts(self.served_generation())
        return {"progress": json.loads(json_util.dumps(p, json_options=json_util.RELAXED_JSON_OPTIONS))}

    def verdict(self) -> dict[str, Any]:
        status = self.status_counts(self.generation)
        return {"generation": self.generation, "failedTasks": status["failedTasks"],
                "metadataMismatchTasks": status["metadataMismatchTasks"],
                "identical": status["failedTasks"] == 0 and status["metadataMismatchTasks"] == 0}

    def doc_mismatch_lines(self, min_duration_s: int = 0) -> Iterator[dict[str, Any]]:
        """``/docMismatches``: the served generation's document findings lasting at least
        ``min_duration_s``, longest first, then by ``_id``. (In generation 0 every duration is 0,
        so a positive minimum gives nothing, as in the reference.)"""
        query: dict[str, Any] = {"generation": self.served_generation(), "category": "document"}
        if min_duration_s:
            query["durationMS"] = {"$gte": 1000 * min_duration_s}
        # `id` holds {_id: value} in raw BSON, so the server orders equal durations (all of
        # generation 0) by `_id` as it sorts `_id`s; streamed, never held in memory.
        for m in self.mismatches.find(query).sort([("durationMS", DESCENDING), ("id", ASCENDING)]):
            yield from doc_mismatch_lines(m)

    def longest_doc_mismatch(self) -> dict[str, Any] | None:
        return next(self.doc_mismatch_lines(), None)

    def doc_mismatch_counts(self, min_duration_s: int) -> dict[str, Any]:
        """``summary.docMismatches``: the lines /docMismatches would serve, counted by the server."""
        match: dict[str, Any] = {"generation": self.served_generation(), "category": "document"}
        if min_duration_s:
            match["durationMS"] = {"$gte": 1000 * min_duration_s}
        groups = self.mismatches.aggregate([
            {"$match": match},
            {"$group": {"_id": {"type": "$type", "ns": "$namespace"}, "n": {"$sum": {"$ifNull": ["$lines", 1]}}}}])
        by_type: dict[str, int] = {}
        by_ns: dict[str, int] = {}
        for g in groups:
            n = int(g["n"])
            by_type[g["_id"]["type"]] = by_type.get(g["_id"]["type"], 0) + n
            by_ns[g["_id"]["ns"]] = by_ns.get(g["_id"]["ns"], 0) + n
        return {"total": sum(by_type.values()), "byType": by_type, "byNamespace": by_ns}

    def ns_mismatches(self) -> Iterator[dict[str, Any]]:
        yield from self.mismatches.find({"generation": self.served_generation(), "category": "namespace"}).sort(
            [("namespace", ASCENDING), ("_id", ASCENDING)])

    def summary(self, min_duration_s: int = 0) -> dict[str, Any]:
        """``GET /api/v1/summary`` (the reference's object; index tolerances never apply)."""
        phase = self.phase()
        check_stats = self.generation_stats(0)
        est = None
        if phase == "check":
            docs_per_s, bytes_per_s = self.rate.per_second()
            est = estimate_remaining(check_stats, docs_per_s, bytes_per_s / 2)
        out: dict[str, Any] = {"estCheckSecsRemaining": est}
        recent = self.recent_recheck_secs()
        if recent:
            out["recentRecheckSecs"] = recent
        out["checkStats"] = check_stats
        out["nsMismatches"] = [ns_mismatch_info(m) for m in self.ns_mismatches()]
        out["docMismatches"] = self.doc_mismatch_counts(min_duration_s)
        out["totalRechecksDone"] = self.total_rechecks_done()
        for side in ("src", "dst"):
            out[f"{side}ChangeEvents"] = self.change_stats(side)["eventCounts"]
        if min_duration_s:
            out["notes"] = [f"Filtering document mismatches by minimum duration ({min_duration_s} seconds)"]
        return cast(dict[str, Any], json.loads(json_util.dumps(out, json_options=json_util.RELAXED_JSON_OPTIONS)))

    def mismatch_items(self, generation: int | None = None) -> list[dict[str, Any]]:
        g = self.served_generation() if generation is None else generation
        return [mismatch_to_json(m) for m in self.mismatches.find({"generation": g}).sort(
            [("namespace", ASCENDING), ("category", ASCENDING), ("_id", ASCENDING)])]
