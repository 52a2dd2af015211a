"""`mongoferry verify` server mode: a migration-verifier compatible HTTP API.

Lifecycle of a check (started by ``POST /api/v1/check`` or ``--start``):

1. Change streams are opened on the source and the destination *before* anything is compared,
   and their first resume tokens saved: every document written from then on is seen.
2. Generation 0: one ``verifyCollection`` task per namespace pair compares the metadata and
   cuts the collection into ``verifyDocuments`` tasks (``_id`` ranges), which ``--workers``
   threads merge-join (see :mod:`mongoferry.verify.oneshot`).
3. Every finding, and every ``_id`` touched by a change event on either side, goes into the
   recheck queue of the next generation; a namespace with a metadata finding or DDL gets a new
   ``verifyCollection`` task there. A generation ends when none of its tasks is ``added`` or
   ``processing``; the next one starts once its queue holds something (no empty generations).
4. ``POST /api/v1/writesOff`` records the cluster time of both sides; the change readers read
   up to it (or until an empty read that started after it), the current generation finishes,
   and one *final* generation rechecks what is left. Its tasks decide the verdict: success is
   ``phase == "idle"``, ``error == null``, ``failedTasks == 0`` and ``metadataMismatchTasks == 0``.

Everything lives in the metadata database (``--meta``/``--meta-db``), so a verifier killed at
any point continues where it was when started again with the same options:

* ``verify_state``: ``{_id: "state"}`` (pairs, filter, generation, built generation, writesOff,
  final, done, error) and ``{_id: "reader:src"|"reader:dst"}`` (resume token, event counts);
* ``verify_tasks``: the tasks, with their generation, type, status and results;
* ``verify_mismatches``: the findings, per generation and task;
* ``verify_recheck``: the recheck queue, ``_id: {g, ns, k}`` (``k``: pairing key bytes, or
  ``"meta"`` for a metadata recheck), so duplicates collapse.

Restart rules: a ``processing`` task is reset to ``added`` and its findings deleted (a
``verifyCollection`` task also loses the range tasks it had created; a task cut short by a lost
connection or DDL is reset the same way and retried); a generation whose tasks were not
completely built is built again from its queue (kept until it is built), its findings deleted;
the change streams resume after their saved tokens. Queue entries are written before the token
that covers them, so a restart can only see an event twice, never miss one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from bson import Binary, ObjectId, Timestamp, json_util
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError
from pymongo.uri_parser import parse_uri

from mongoferry.core.errors import EXIT_OK, UsageError
from mongoferry.core.model import Partition, utc_now
from mongoferry.http.server import HttpServer
from mongoferry.infra.config import VerifySettings
from mongoferry.infra.redact import redact
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.state.endpoints import Endpoints, open_endpoints
from mongoferry.verify.api import (
    verifier_app,
)
from mongoferry.verify.engine import Engine
from mongoferry.verify.findings import Pair
from mongoferry.verify.metadata import (
    both_exist,
    compare_metadata,
    explicit_pairs,
    pair_for_new_namespace,
    plan_ranges,
    refuse_self_comparison,
    resolve_pairs,
    target_of,
)
from mongoferry.verify.readers import ChangeReader, writes_off_time
from mongoferry.verify.reports import GENERATIONS_ID, Reports
from mongoferry.verify.tasks import Rate, TaskSink, merge_entry, mismatch_since

log = logging.getLogger("mongoferry.verify")

STATE_ID: Final = "state"
IDS_PER_TASK: Final = 1000
GENERATION_PAUSE_S: Final = 1.0
WORKER_SLEEP_S: Final = 0.2
MONITOR_S: Final = 0.25
TASK_ATTEMPTS: Final = 5
# A read cut short by DDL or a lost cursor (NamespaceNotFound, CursorNotFound, QueryPlanKilled,
# Interrupted): the task is run again; the DDL itself is rechecked through the change streams.
RETRY_CODES: Final = frozenset({26, 43, 175, 11601})


def _hosts(uri: str | None) -> list[str]:
    """The hosts a URI names, for the restart fingerprint; a mongodb+srv name as written (its
    DNS records may change between runs)."""
    uri = uri or ""
    if uri.startswith("mongodb+srv://"):
        return [uri.split("://", 1)[1].rpartition("@")[2].split("/", 1)[0].split("?", 1)[0]]
    return sorted(f"{h}:{p}" for h, p in parse_uri(uri)["nodelist"])


# ======================================================================================
# The verifier
# ======================================================================================


class Verifier(Reports):
    def __init__(self, settings: VerifySettings, ends: Endpoints, stop: threading.Event) -> None:
        self.s = settings
        self.ends = ends
        self.stop = stop
        db = ends.meta.db
        self.states: Collection[dict[str, Any]] = db["verify_state"]
        self.tasks: Collection[dict[str, Any]] = db["verify_tasks"]
        self.mismatches: Collection[dict[str, Any]] = db["verify_mismatches"]
        self.recheck: Collection[dict[str, Any]] = db["verify_recheck"]
        self.engine = Engine(ends.src, ends.dst, settings.compare, threading.Event(), src_filters=ends.nsmap.filters)
        self.lock = threading.RLock()  # the in-memory state below
        self.gen_lock = threading.Lock()  # generation bumps vs. queue writes of the readers
        self.op_lock = threading.Lock()  # /check and /writesOff one at a time
        self.state: dict[str, Any] = {}
        self.generation = 0
        self.final = False
        self.running = False
        self.error: str | None = None
        self.pairs: list[Pair] = []
        self.filter: dict[str, Any] | None = None
        self.readers: dict[str, ChangeReader] = {}
        self.rate = Rate()
        self.live: dict[ObjectId, TaskSink] = {}
        self.driver: threading.Thread | None = None
        self.check_stop = threading.Event()  # the current check stops (failure or shutdown)
        self.run_over = threading.Event()  # the current check's driver has returned: workers leave
        self.gen0_cache: dict[str, Any] | None = None
        self.not_adopted: set[tuple[str, str]] = set()
        self.started = time.time()

    # ------------------------------------------------------------------ persistence
    def fingerprint(self) -> dict[str, Any]:
        return {"src": _hosts(self.s.src), "dst": _hosts(self.s.dst), "selection": self.ends.nsmap.fingerprint(),
                "srcNamespaces": list(self.s.src_namespace), "dstNamespaces": list(self.s.dst_namespace),
                "compare": self.s.compare}

    def save_state(self, **fields: Any) -> None:
        with self.lock:
            self.state.update(fields)
        self.states.update_one({"_id": STATE_ID}, {"$set": fields}, upsert=True)

    def load(self) -> None:
        """Read the saved state; refuse a running check saved with other options (unless --clean)."""
        if self.s.clean:
            self.forget()
            return
        saved = self.states.find_one({"_id": STATE_ID})
        if saved is None:
            return
        if saved.get("running") and saved.get("fingerprint") != self.fingerprint():
            raise UsageError("the metadata database holds an unfinished verification with other options "
                             f"({json.dumps(saved.get('fingerprint'), default=str)})",
                             "rerun with the same options to continue it, or pass --clean to start over")
        self.state = saved
        self.generation = int(saved.get("generation", 0))
        self.final = bool(saved.get("final", False))
        self.error = saved.get("error")
        self.pairs = [Pair(p["src"], p["dst"]) for p in saved.get("pairs", [])]
        self.filter = json_util.loads(saved["filter"]) if saved.get("filter") else None

    def forget(self) -> None:
        for coll in (self.states, self.tasks, self.mismatches, self.recheck):
            coll.delete_many({})
        self.state = {}

    def adopt(self, side: str, ns: str) -> None:
        """A namespace first seen in a change stream after the check started: if the selection
        covers it (not with explicit --src-namespace pairs), it becomes a pair. Both readers
        track it from now on, and a metadata recheck in the next generation compares it (and
        its documents, once both sides hold it)."""
        if self.s.src_namespace or (side, ns) in self.not_adopted or self.ends.nsmap.is_system(ns):
            return
        pair = pair_for_new_namespace(self.ends.nsmap, side, ns)
        with self.lock:
            if pair is None:
                self.not_adopted.add((side, ns))  # outside the selection: do not ask again per event
                return
            if any(p.src_ns == pair.src_ns or p.dst_ns == pair.dst_ns for p in self.pairs):
                return
            self.pairs.append(pair)
            for reader in self.readers.values():
                reader.mapping[pair.src_ns if reader.side == "src" else pair.dst_ns] = pair.src_ns
            # saved under the lock: two readers adopting at once must not save older lists last
            self.save_state(pairs=[{"src": p.src_ns, "dst": p.dst_ns} for p in self.pairs])
        log.info("new namespace joins the verification", extra={"source": pair.src_ns, "destination": pair.dst_ns})
        with self.gen_lock:
            self.enqueue([(self.generation + 1, pair.src_ns, pair.dst_ns, "meta", None)])

    def dst_of(self, src_ns: str) -> str:
        return next((p.dst_ns for p in self.pairs if p.src_ns == src_ns), src_ns)

    def enqueue(self, entries: list[tuple[int, str, str, Any, dt.datetime | None]],
                changed: dt.datetime | None = None) -> None:
        """Add recheck-queue entries ``(generation, source ns, destination ns, key bytes | "meta",
        first mismatch)``; the destination is kept because data namespaces (time-series buckets)
        are not always pairs of their own. ``changed``: the entries come from change events at
        that time, which restart a mismatch's age (a busy document is not a lasting difference).

        New entries are inserted (cheap on every server); an entry that exists already keeps the
        earliest mismatch time and the latest change time."""
        for i in range(0, len(entries), 1000):
            docs: list[dict[str, Any]] = []
            for generation, ns, dst_ns, key, first in entries[i: i + 1000]:
                doc: dict[str, Any] = {"_id": {"g": generation, "ns": ns, "k": key}, "dst": dst_ns}
                if first is not None:
                    doc["first"] = first
                if changed is not None:
                    doc["changed"] = changed
                docs.append(doc)
            try:
                self.recheck.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                merges = [merge_entry(docs[e["index"]]) for e in errors]
                ops = [op for op in merges if op is not None]
                if ops:
                    self.recheck.bulk_write(ops, ordered=False)

    # ------------------------------------------------------------------ control (HTTP)
    def start_check(self, filt: dict[str, Any] | None) -> None:
        with self.op_lock:
            if self.running:
                log.info("already checking")
                return
            try:
                pairs = resolve_pairs(self.s, self.ends.src, self.ends.dst, self.ends.nsmap)
            except UsageError as exc:  # shown by /progress too, so a script polling it cannot miss it
                with self.lock:
                    self.error = exc.one_line()
                raise
            self.forget()
            self.filter = filt
            self.pairs = pairs
            self.generation, self.final, self.error = 0, False, None
            self.gen0_cache = None
            self.state = {}
            self.save_state(fingerprint=self.fingerprint(), running=True, done=False,
                            generation=0, built=-1, final=False, writesOff=False, error=None,
                            filter=json_util.dumps(filt, json_options=json_util.CANONICAL_JSON_OPTIONS)
                            if filt else None,
                            pairs=[{"src": p.src_ns, "dst": p.dst_ns} for p in pairs], startedAt=utc_now())
            self._launch(fresh=True)
        log.info("verification started", extra={"namespaces": len(pairs), "filter": bool(filt)})

    def resume(self) -> None:
        with self.op_lock:
            if self.running:
                return
            log.info("resuming the saved verification", extra={"generation": self.generation,
                                                                "namespaces": len(self.pairs)})
            self._launch(fresh=False)

    def writes_off(self) -> str | None:
        """Returns an error text, or None when accepted."""
        with self.op_lock:
            if not self.running:
                return "no verification is running; POST /api/v1/check first"
            if self.state.get("writesOff"):
                return "writesOff already set"
            src_ts = writes_off_time(self.ends.src)
            dst_ts = writes_off_time(self.ends.dst)
            self.save_state(writesOff=True, writesOffAt={"src": src_ts, "dst": dst_ts, "wall": time.time()})
        log.info("writes off: finishing with a final generation")
        return None

    def writes_off_target(self, side: str) -> tuple[Timestamp, float] | None:
        with self.lock:
            at = self.state.get("writesOffAt")
        if not at:
            return None
        return at[side], float(at["wall"])

    def fail(self, error: str) -> None:
        error = redact(error)  # shown by /progress, which no log filter sees
        log.error("verification failed", extra={"error": error})
        with self.lock:
            self.error = error
        with contextlib.suppress(PyMongoError):
            self.save_state(error=error, running=False)
        self.check_stop.set()

    # ------------------------------------------------------------------ running
    def _ensure_indexes(self) -> None:
        """What the workers, the monitor and the API ask for, without collection scans."""
        self.tasks.create_index([("generation", ASCENDING), ("status", ASCENDING), ("type", ASCENDING)])
        self.tasks.create_index([("parent", ASCENDING)])
        self.mismatches.create_index([("generation", ASCENDING), ("category", ASCENDING),
                                      ("durationMS", DESCENDING), ("id", ASCENDING)])
        self.mismatches.create_index([("taskId", ASCENDING)])

    def _launch(self, fresh: bool) -> None:
        self._ensure_indexes()
        self.running = True
        self.check_stop.clear()
        self.run_over.clear()
        self.engine.stop.clear()
        self.driver = threading.Thread(target=self._drive_guarded, args=(fresh,), name="verify-driver", daemon=True)
        self.driver.start()

    def _halted(self) -> bool:
        return self.stop.is_set() or self.check_stop.is_set()

    def _drive_guarded(self, fresh: bool) -> None:
        try:
            self._drive(fresh)
        except Exception as exc:
            if not self._halted():
                log.exception("verification failed")
                self.fail(f"{type(exc).__name__}: {exc}")
        finally:
            self.engine.stop.set()
            for reader in self.readers.values():
                reader.stop()
            self.readers = {}
            with self.lock:
                self.running = False

    def _open_readers(self, fresh: bool) -> None:
        assert self.s.src is not None and self.s.dst is not None
        self.readers = {
            "src": ChangeReader(self, "src", self.s.src, {p.src_ns: p.src_ns for p in self.pairs}),
            "dst": ChangeReader(self, "dst", self.s.dst, {p.dst_ns: p.src_ns for p in self.pairs}),
        }
        for reader in self.readers.values():
            reader.open_fresh() if fresh else reader.open_saved()
        for reader in self.readers.values():
            reader.start()

    def _drive(self, fresh: bool) -> None:
        if not fresh:
            self._reset_in_progress()
        self._open_readers(fresh)  # before anything is compared
        workers = [threading.Thread(target=self._work, name=f"verify-worker-{i}", daemon=True)
                   for i in range(self.s.workers)]
        for w in workers:
            w.start()
        try:
            while not self._halted():
                if int(self.state.get("built", -1)) < self.generation:
                    self._build(self.generation)
                self._await_generation()
                if self._halted():
                    return
                self._mark_generation(self.generation, "end")
                if self.final:
                    self.save_state(running=False, done=True, finishedAt=utc_now())
                    log.info("verification finished", extra=self.verdict())
                    return
                if not self._await_next():
                    return
        finally:
            self.run_over.set()
            self.engine.stop.set()
            for w in workers:
                w.join(timeout=30)

    def _await_generation(self) -> None:
        while not self._halted():
            busy = self.tasks.count_documents({"generation": self.generation,
                                               "status": {"$in": ["added", "processing"]}})
            if busy == 0:
                return
            self.check_stop.wait(MONITOR_S)

    def _await_next(self) -> bool:
        """Wait until the next generation has work or writes are off; then start it."""
        final = False
        while not self._halted():
            if self.state.get("writesOff"):
                for reader in self.readers.values():
                    while not reader.drained.is_set() and not self._halted():
                        reader.drained.wait(0.2)
                final = True
                break
            # Generation 1 always follows generation 0 (as in migration-verifier: the phase then
            # says the first full pass is over); later ones only once their queue holds something.
            if self.generation == 0 or self.recheck.find_one({"_id.g": self.generation + 1}) is not None:
                self.check_stop.wait(GENERATION_PAUSE_S)  # let a burst of changes gather
                break
            self.check_stop.wait(MONITOR_S)
        if self._halted():
            return False
        with self.gen_lock:
            self.generation += 1
            self.final = final
            self.save_state(generation=self.generation, final=final)
        self._mark_generation(self.generation, "start")
        log.info("generation started", extra={"generation": self.generation, "final": final})
        return True

    def _mark_generation(self, generation: int, which: str) -> None:
        """Record when a generation started or ended (``recentRecheckSecs``); the first mark wins,
        so a restart does not shorten a generation."""
        self.states.update_one({"_id": GENERATIONS_ID}, {"$min": {f"g{generation}.{which}": utc_now()}}, upsert=True)

    def _build(self, generation: int) -> None:
        """Create a generation's tasks (gen 0: one per pair; later: from the recheck queue). A
        build interrupted by a restart is redone from scratch, findings included."""
        self.tasks.delete_many({"generation": generation})
        self.mismatches.delete_many({"generation": generation})
        now = utc_now()
        if generation == 0:
            tasks = [{"generation": 0, "type": "verifyCollection", "status": "added", "ns": p.src_ns,
                      "dstNs": p.dst_ns, "created": now, "attempts": 0} for p in self.pairs]
        else:
            dst_of = {p.src_ns: p.dst_ns for p in self.pairs}
            by_ns: dict[str, list[tuple[bytes, dt.datetime | None]]] = {}
            meta: set[str] = set()
            for entry in self.recheck.find({"_id.g": generation}):
                ns, key = entry["_id"]["ns"], entry["_id"]["k"]
                if key == "meta":
                    if ns in dst_of:
                        meta.add(ns)
                    continue
                dst_of.setdefault(ns, entry.get("dst") or ns)
                by_ns.setdefault(ns, []).append((bytes(key), mismatch_since(entry.get("first"), entry.get("changed"))))
            tasks = [{"generation": generation, "type": "verifyCollection", "status": "added", "ns": ns,
                      "dstNs": dst_of[ns], "created": now, "attempts": 0} for ns in sorted(meta)]
            for ns, entries in sorted(by_ns.items()):
                for i in range(0, len(entries), IDS_PER_TASK):
                    chunk = entries[i: i + IDS_PER_TASK]
                    tasks.append({"generation": generation, "type": "verifyDocuments", "status": "added",
                                  "ns": ns, "dstNs": dst_of[ns], "kind": "ids", "created": now, "attempts": 0,
                                  "ids": [Binary(k) for k, _ in chunk], "firsts": [f for _, f in chunk],
                                  "documents_count": len(chunk)})
        if tasks:
            self.tasks.insert_many(tasks)
        self.save_state(built=generation)
        if generation > 0:
            self.recheck.delete_many({"_id.g": generation})

    def _reset_in_progress(self) -> None:
        for task in self.tasks.find({"status": "processing"}):
            self._reset_task(task)

    def _reset_task(self, task: Mapping[str, Any]) -> None:
        """Undo a task that did not finish: its findings, and a verifyCollection task's range
        tasks (the rerun plans them again), then queue it again."""
        if task["type"] == "verifyCollection":
            children = [t["_id"] for t in self.tasks.find({"parent": task["_id"]}, {"_id": 1})]
            if children:
                self.mismatches.delete_many({"taskId": {"$in": children}})
                self.tasks.delete_many({"_id": {"$in": children}})
        self.mismatches.delete_many({"taskId": task["_id"]})
        self.tasks.update_one({"_id": task["_id"]}, {"$set": {"status": "added"}})

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        while not self._halted() and not self.run_over.is_set():
            try:
                task = self.tasks.find_one_and_update(
                    {"generation": self.generation, "status": "added"},
                    {"$set": {"status": "processing", "began": utc_now()}, "$inc": {"attempts": 1}},
                    sort=[("type", ASCENDING)], return_document=ReturnDocument.AFTER)
            except PyMongoError as exc:
                log.warning("cannot claim a task", extra={"error": str(exc)})
                self.check_stop.wait(1.0)
                continue
            if task is None:
                self.check_stop.wait(WORKER_SLEEP_S)
                continue
            try:
                self._run_task(task)
            except (ConnectionFailure, OperationFailure) as exc:
                if self._halted():
                    return
                retry = isinstance(exc, ConnectionFailure) or exc.code in RETRY_CODES
                if not retry or task.get("attempts", 1) >= TASK_ATTEMPTS:
                    log.exception("task failed", extra={"ns": task.get("ns")})
                    self.fail(f"task on {task['ns']} failed after {task.get('attempts', 1)} attempt(s): {exc}")
                    return
                log.warning("task interrupted; retrying", extra={"ns": task["ns"], "error": str(exc)})
                with contextlib.suppress(PyMongoError):
                    self._reset_task(task)
            except Exception as exc:
                if self._halted():
                    return
                log.exception("task failed", extra={"ns": task.get("ns")})
                self.fail(f"task on {task.get('ns')}: {type(exc).__name__}: {exc}")
                return

    def _run_task(self, task: dict[str, Any]) -> None:
        pair = Pair(task["ns"], task["dstNs"])
        sink = TaskSink(self, task)
        self.live[task["_id"]] = sink
        try:
            update: dict[str, Any] = {}
            if task["type"] == "verifyCollection":
                plan = compare_metadata(self.engine, pair, self._target, count=True)
                for f in plan.findings:
                    sink.namespace(f)
                update.update(documents_count=plan.count, bytes_count=plan.size, kind=plan.kind)
                # Ranges are planned once: in generation 0, or when a namespace first becomes
                # comparable later (created on the other side meanwhile).
                if plan.comparable and (task["generation"] == 0 or self.tasks.find_one(
                        {"parentNs": pair.src_ns, "kind": "range"}, {"_id": 1}) is None):
                    ranges = plan_ranges(self.engine, pair, plan, self.s.workers, self.s.partition_docs)
                    self._add_range_tasks(task, plan.data or pair, ranges, plan.ranged, plan.collation)
                status = "completed"
                if plan.findings:
                    status = "mismatch" if plan.comparable else "failed"
            elif task.get("kind") == "ids":
                keys = [bytes(k) for k in task["ids"]]
                # A namespace on one side only is a namespace finding; its documents are not compared.
                if both_exist(self.engine, pair):
                    self.engine.compare_keys(pair, keys, self.filter, sink)
                status = "failed" if sink.findings else "completed"
            else:
                rng = Partition(id="", ns=pair.src_ns, index=0, lower=task.get("lower"), upper=task.get("upper"),
                                has_lower=bool(task.get("hasLower")), has_upper=bool(task.get("hasUpper")))
                self.engine.compare_range(pair, rng, self.filter, sink, hint=bool(task.get("hint", True)),
                                          confirm=bool(task.get("confirm")))
                status = "failed" if sink.findings else "completed"
            if self._halted():
                return  # left `processing`: a restart redoes it
            sink.flush()
            update.update(status=status, finished=utc_now(), src_docs=sink.src_docs, dst_docs=sink.dst_docs,
                          src_bytes=sink.src_bytes, dst_bytes=sink.dst_bytes, findings=sink.findings)
            self.tasks.update_one({"_id": task["_id"]}, {"$set": update})
        finally:
            self.live.pop(task["_id"], None)

    def _add_range_tasks(self, parent: dict[str, Any], data: Pair, ranges: list[Partition], hint: bool,
                         confirm: bool) -> None:
        docs = []
        for rng in ranges:
            doc: dict[str, Any] = {"generation": parent["generation"], "type": "verifyDocuments", "status": "added",
                                   "ns": data.src_ns, "dstNs": data.dst_ns, "kind": "range",
                                   "parent": parent["_id"], "parentNs": parent["ns"], "hint": hint,
                                   "confirm": confirm,
                                   "hasLower": rng.has_lower, "hasUpper": rng.has_upper, "created": utc_now(),
                                   "attempts": 0}
            if rng.has_lower:
                doc["lower"] = rng.lower
            if rng.has_upper:
                doc["upper"] = rng.upper
            docs.append(doc)
        if docs:
            self.tasks.insert_many(docs)

    def _target(self, ns: str) -> str | None:
        return target_of(ns, self.pairs, self.s, self.ends.nsmap)

    def shutdown(self) -> None:
        self.check_stop.set()
        self.engine.stop.set()
        if self.driver is not None:
            self.driver.join(timeout=30)


def _listening_port(http: HttpServer, requested: int) -> int:
    if requested:
        return requested
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        servers = getattr(http.server, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        time.sleep(0.05)
    return requested


def run_server(s: VerifySettings) -> int:
    """``mongoferry verify`` without --check-only: serve until SIGTERM/SIGINT. Everything that can
    be checked is checked before the port is taken and before --clean forgets anything."""
    ends = open_endpoints(s)
    http: HttpServer | None = None
    verifier: Verifier | None = None
    try:
        explicit_pairs(s, ends.nsmap)
        refuse_self_comparison(s, ends)
        with stop_on_signals() as stop:
            verifier = Verifier(s, ends, stop)
            http = HttpServer(verifier_app(verifier), "127.0.0.1", s.port,
                              hint="choose another port with --port (0: any free port)")
            http.server.config.server_header = False  # ours names the API (migration-verifier/…)
            http.probe()  # a taken port fails before --clean forgets anything
            if s.start:  # so does a selection that matches nothing
                resolve_pairs(s, ends.src, ends.dst, ends.nsmap)
            verifier.load()
            http.start()
            log.info("Web server started.", extra={"port": _listening_port(http, s.port)})
            if verifier.state.get("running"):
                verifier.resume()
            elif s.start:
                verifier.start_check(None)
            while not stop.wait(0.5):
                pass
            log.info("stopping; start the same command again to continue")
    finally:
        if verifier is not None:
            verifier.shutdown()
        if http is not None:
            http.stop()
        ends.close()
    return EXIT_OK
