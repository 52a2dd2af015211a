"""`mongoferry prune`: delete from one deployment what a split rule gives to other parts, gently.

Each namespace is read once in `_id` order (index walk with cursor `min`, so every `_id` type is
covered and a restart continues from the saved `_id`), projected on its key. A document the rule
gives to another part is deleted with `Rule.unchanged_filter`: the delete matches only while the
key is what was read, so an owned document is never deleted, whatever the application does
meanwhile; documents that changed are read again and decided again. Before each batch the job
waits for its time window, for the secondaries (`--max-lag`), for the server's latency and for
the rate limit (changeable at runtime: POST /api/v1/rate). Without --execute nothing is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import bson
from pymongo import DeleteOne
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from mongoferry.core.doc_filter import Filters, and_filter, parse_filters
from mongoferry.core.doc_filter import describe as describe_filters
from mongoferry.core.errors import EXIT_OK, UsageError
from mongoferry.core.model import utc_now
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.core.pacing import LatencyGuard, parse_window, replication_lag, seconds_until_open
from mongoferry.core.routing import Rule, key_value, parse_rule, rule_from_spec, rule_spec
from mongoferry.http.server import HttpServer, parse_bind, prune_app, secret
from mongoferry.infra.clients import Client, connect, driver_errors, is_transient, namespace_changed, validate_uri
from mongoferry.infra.config import PruneSettings
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.pipeline.source_health import delayed_of
from mongoferry.pipeline.throttle import Throttle
from mongoferry.source.catalog import describe, list_namespaces
from mongoferry.state.meta import Job, MetaStore
from mongoferry.state.prune_status import NamespaceProgress, PruneStatus

log = logging.getLogger("mongoferry.prune")

KIND = "prune"
SAMPLE = 5
RETRIES = 3  # rounds of reading again documents whose key changed between the read and the delete
LAG_EVERY_S = 5.0
PROGRESS_EVERY_S = 10.0  # a progress line in the log
CURSOR_NOT_FOUND = 43
DEFAULT_META_DB = "mongoferry_meta"
SIMPLE = {"locale": "simple"}  # binary comparison, whatever the collection's default collation


@dataclass
class Target:
    """One namespace to prune and where its pass stands."""

    ns: str
    key: str
    progress: NamespaceProgress
    last: list[Any] = field(default_factory=list)  # [] before the first batch, else [last _id read]
    sample: list[Any] = field(default_factory=list)

    def state_doc(self) -> dict[str, Any]:
        return {**self.progress.to_doc(), "last": self.last}


def resolve_rule(s: PruneSettings, meta: MetaStore) -> tuple[Rule, int, dict[str, dict[str, Any]]]:
    """The rule, the part kept, and the --filter queries (a filtered split moved only what matches:
    the rest is every part's own, never pruned)."""
    filters = parse_filters(s.filter)
    if s.from_split:
        given = [f"--{f.replace('_', '-')}" for f in ("key", "parts", "by", "bound", "broadcast", "unrouted",
                                                       "filter")
                 if f in s.model_fields_set and getattr(s, f) not in (None, [])]
        if given:
            raise UsageError(f"--from-split reuses a split's whole rule: it takes no {', '.join(given)}",
                             "give either --from-split NAME or the rule (--key/--by/--parts...), not both")
        pattern = f"^{re.escape(s.from_split)}\\.[0-9]+$"
        with driver_errors("reading the split's rule"):
            doc = meta.jobs.find_one({"_id": {"$regex": pattern}, "extra.rule": {"$exists": True}})
        if doc is None:
            raise UsageError(f"no split job {s.from_split!r} in the metadata database {s.meta_db!r}",
                             "give --meta the URI of one of that split's destinations (its progress is kept there)")
        try:
            rule = rule_from_spec(doc["extra"]["rule"])
            filters = parse_filters(doc["extra"].get("filter", []))
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            raise UsageError(f"split job {s.from_split!r}: its saved rule is unreadable ({exc})",
                             "give the rule with --key/--by/--parts instead; nothing was deleted") from None
    else:
        if s.parts is None:
            raise UsageError("prune needs --parts N: how many parts the rule divides the data into",
                             "for example --key userId --by mod --parts 2 --keep 0")
        rule = parse_rule(s.parts, s.by, s.key, s.bound, s.broadcast, s.unrouted, parts_flag="--parts")
    if s.keep is None or not 0 <= s.keep < rule.parts:
        raise UsageError(f"--keep {s.keep}: the parts are 0 to {rule.parts - 1}" if s.keep is not None else
                         "prune needs --keep I: the part this deployment keeps",
                         "give the index of the part to keep, counting from 0")
    return rule, s.keep, filters


def fingerprint(rule: Rule, keep: int, filters: Filters) -> dict[str, Any]:
    fp: dict[str, Any] = {"rule": rule_spec(rule), "keep": keep}
    if filters:  # absent without filters: a prune saved before filters existed still resumes
        fp["filter"] = describe_filters(filters)
    return fp


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {name!r} is not a time zone", "give a name such as UTC or Europe/Paris") from None


def same_value(a: Any, b: Any) -> bool:
    return bson.encode({"": a}) == bson.encode({"": b})


def projection(key: str) -> dict[str, int]:
    """`{_id, key}`; a key inside `_id` must not cut the `_id` down to that field."""
    return {"_id": 1} if key == "_id" or key.startswith("_id.") else {key: 1}


def scan(coll: Collection[Any], key: str, last: list[Any], batch: int,
         query: Mapping[str, Any] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Batches of `{_id, key}` (of the documents `query` matches) in `_id` index order, from just
    after `last` (when given)."""
    cursor = coll.find(dict(query or {}), projection(key), batch_size=batch).hint([("_id", 1)]).sort("_id", 1)
    if last:
        cursor = cursor.min([("_id", last[0])])
    buf: list[dict[str, Any]] = []
    first = True
    for doc in cursor:
        if first and last and same_value(doc["_id"], last[0]):
            first = False
            continue  # cursor `min` is inclusive: this one was handled before
        first = False
        buf.append(doc)
        if len(buf) >= batch:
            yield buf
            buf = []
    if buf:
        yield buf


class PruneJob:
    def __init__(self, s: PruneSettings, client: Client, meta: MetaStore | None, rule: Rule, keep: int,
                 status: PruneStatus, stop: threading.Event, filters: Filters | None = None) -> None:
        self.s = s
        self.filters = filters or {}
        self.client = client
        self.meta = meta  # None for a dry run: it writes nothing, not even progress
        self.rule = rule
        self.keep = keep
        self.status = status
        self.stop = stop
        self.windows = [parse_window(w) for w in s.window]
        self.tz = zone(s.timezone)
        self.throttle = Throttle(max_docs_per_s=status.rate)
        self.guard = LatencyGuard()
        self._lag_checked = 0.0
        self._lag = 0.0
        self._lag_known = True
        self._delayed: set[Any] | None = None  # members delayed on purpose: their lag is not waited for
        self._last_persist = 0.0
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------------ plan
    def targets(self) -> list[Target]:
        # Any mongoferry metadata database here is left alone, whichever one this job uses.
        exclude = [*self.s.exclude, *({DEFAULT_META_DB} - {self.s.meta_db})]
        nsmap = NamespaceMap.build(self.s.include, exclude, meta_db=self.s.meta_db)
        out = []
        with driver_errors("listing the namespaces"):
            for ns in list_namespaces(self.client, nsmap):
                if not nsmap.selected(ns):
                    continue
                if self.rule.is_broadcast(ns):
                    log.info("kept whole: broadcast to every part", extra={"ns": ns})
                    continue
                spec = describe(self.client, ns)
                if spec is None or spec.kind != "collection" or spec.options.get("capped"):
                    log.info("skipped: not a plain collection", extra={"ns": ns})
                    continue
                out.append(Target(ns, self.rule.key_of(ns), NamespaceProgress(ns, estimated=spec.count)))
        return out

    def check_filters(self, targets: list[Target]) -> None:
        """A --filter for a namespace that is not pruned is a typo: pruning the intended one unfiltered
        would delete what the split never moved. Refused before any delete."""
        pruned = {t.ns for t in targets}
        for ns in sorted(set(self.filters) - pruned):
            raise UsageError(f"--filter names {ns}, which this prune does not touch",
                             "check the name and --include/--exclude; nothing was deleted")

    def check_keys(self, targets: list[Target]) -> None:
        """A key no document has is a typo, not an instruction to keep everything: refuse it."""
        for t in targets:
            if not t.key:
                raise UsageError(f"{t.ns} has no routing key: --key names other namespaces only",
                                 f"give --key FIELD for the others, --key {t.ns}=FIELD, --broadcast {t.ns} or "
                                 f"--exclude {t.ns}; nothing was deleted")
            db, _, coll = t.ns.partition(".")
            with driver_errors(f"reading {t.ns}"):
                first = list(self.client[db][coll].find(dict(self.filters.get(t.ns) or {}), projection(t.key))
                             .limit(self.s.batch_size))
            if first and not any(self.rule.part_of_value(key_value(d, t.key)) is not None for d in first):
                raise UsageError(f"{t.ns}: none of its first {len(first)} documents has a key {t.key!r} that "
                                 f"{self.rule.by} can route", f"check --key, or give --key {t.ns}=FIELD, "
                                 f"--broadcast {t.ns} or --exclude {t.ns}; nothing was deleted")

    # ------------------------------------------------------------------ dry run
    def dry_run(self, targets: list[Target]) -> str:
        for t in targets:
            db, _, coll = t.ns.partition(".")
            with driver_errors(f"reading {t.ns}"):
                for batch in scan(self.client[db][coll], t.key, [], self.s.batch_size, self.filters.get(t.ns)):
                    self.count(t, batch)
                    if self.stop.is_set():
                        break
        rate = self.status.rate
        total = sum(t.progress.deleted for t in targets)
        lines = [("stopped before the end; " if self.stop.is_set() else "")
                 + f"dry run (nothing deleted): prune keeps part {self.keep} of {self.rule.describe('kept')}"]
        for t in targets:
            p = t.progress
            lines.append(f"  {t.ns}: {p.deleted} of {p.scanned} would go"
                         + (f" (e.g. _id {', '.join(map(repr, t.sample))})" if t.sample else "")
                         + (f"; {p.unroutable} without a routable key are kept" if p.unroutable else ""))
        took = f"about {duration(total / rate)} at {rate:g} documents/s" if rate else "no rate limit"
        lines.append(f"total: {total} document(s) would be deleted, {took}; add --execute to delete them")
        return "\n".join(lines)

    def count(self, t: Target, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tally a batch; the documents to delete."""
        doomed = []
        for d in batch:
            owner = self.rule.part_of(t.ns, d)
            if self.rule.part_of_value(key_value(d, t.key)) is None and owner is None:
                t.progress.unroutable += 1
            elif owner != self.keep:
                doomed.append(d)
                if len(t.sample) < SAMPLE:
                    t.sample.append(d["_id"])
        t.progress.scanned += len(batch)
        if self.meta is None:
            t.progress.deleted += len(doomed)  # a dry run counts what would go
        return doomed

    # ------------------------------------------------------------------ execute
    def execute(self, targets: list[Target]) -> None:
        self.status.set(state="RUNNING", namespaces={t.ns: t.progress for t in targets})
        for t in targets:
            if t.progress.done:
                continue
            self.prune_namespace(t)
            if self.stop.is_set():
                return

    def prune_namespace(self, t: Target) -> None:
        db, _, name = t.ns.partition(".")
        coll = self.client[db][name]
        failures = 0
        while not self.stop.is_set():
            try:
                for batch in scan(coll, t.key, t.last, self.s.batch_size, self.filters.get(t.ns)):
                    self.pace(coll, batch[0]["_id"])
                    if self.stop.is_set():
                        return
                    self.prune_batch(coll, t, batch)
                    failures = 0
                    if self.stop.is_set():
                        return
                t.progress.done = True
                self.checkpoint(t, force=True)
                log.info("namespace pruned", extra=t.progress.to_doc())
                return
            except PyMongoError as exc:
                if namespace_changed(exc):
                    log.info("namespace dropped or renamed while pruning: nothing more to do", extra={"ns": t.ns})
                    t.progress.done = True
                    self.checkpoint(t, force=True)
                    return
                if isinstance(exc, OperationFailure) and exc.code == CURSOR_NOT_FOUND:
                    continue  # idle through a long wait: read on from the last batch
                if not is_transient(exc) or failures >= 30:
                    raise
                failures += 1
                self.status.set(last_error=str(exc))
                log.warning("server error; retrying from the last batch", extra={"ns": t.ns, "error": str(exc)})
                self.stop.wait(min(30.0, 2.0 ** failures))

    def prune_batch(self, coll: Collection[Any], t: Target, batch: list[dict[str, Any]]) -> None:
        doomed = self.count(t, batch)
        size = self.chunk_size()
        for i in range(0, len(doomed), size):
            if i:
                self.pace(coll, doomed[i]["_id"])
            self.throttle.wait(len(doomed[i:i + size]), 0, self.stop)
            deleted, kept = self.delete(coll, t.ns, doomed[i:i + size])
            t.progress.deleted += deleted
            t.progress.kept_changed += kept
        t.last = [batch[-1]["_id"]]
        self.checkpoint(t)

    def chunk_size(self) -> int:
        rate = self.status.rate
        if rate != self.throttle.max_docs_per_s:
            self.throttle.set_limits(rate, None)
        return max(1, min(self.s.batch_size, int(rate / 4) if rate else self.s.batch_size))

    def delete(self, coll: Collection[Any], ns: str, docs: list[dict[str, Any]]) -> tuple[int, int]:
        """Delete documents still as read; read the others again and decide again. (deleted, kept)"""
        deleted, kept, pending = 0, 0, docs
        query = self.filters.get(ns)  # a document that stopped matching was never moved: kept
        for _ in range(RETRIES):
            # Simple collation: a collection's default collation must not make "A" match "a".
            result = coll.bulk_write([DeleteOne(and_filter(self.rule.unchanged_filter(ns, d), query), collation=SIMPLE)
                                      for d in pending], ordered=False)
            deleted += result.deleted_count
            if result.deleted_count == len(pending):
                return deleted, kept
            now = list(coll.find(and_filter({"_id": {"$in": [d["_id"] for d in pending]}}, query),
                                 projection(self.rule.key_of(ns)), collation=SIMPLE))
            still = [d for d in now if self.rule.prunable(self.keep, ns, d)]
            kept += len(now) - len(still)  # their key changed to one this part owns (or nobody's)
            pending = still
            if not pending:
                return deleted, kept
        log.info("documents kept: their key kept changing while pruning", extra={"ns": ns, "docs": len(pending)})
        return deleted, kept + len(pending)

    # ------------------------------------------------------------------ pacing
    def pace(self, coll: Collection[Any], probe_id: Any) -> None:
        """Return when deleting may go on: inside a window, secondaries caught up, latency normal."""
        while not self.stop.is_set():
            if self.status.paused:
                self.wait("paused", 1.0)
                continue
            until = seconds_until_open(self.windows, dt.datetime.now(self.tz))
            if until > 0:
                self.wait("window", min(until, 60.0))
                continue
            if self.lag() > self.s.max_lag > 0:
                self.wait("replication-lag", LAG_EVERY_S)
                continue
            started = time.perf_counter()
            coll.find_one({"_id": probe_id}, {"_id": 1})
            pause = self.guard.observe(time.perf_counter() - started)
            if pause:
                self.wait("latency", pause)
                continue
            if self.status.waiting_for is not None:
                log.info("prune going on", extra={"after": self.status.waiting_for})
            self.status.set(state="RUNNING", waiting_for=None)
            return

    def lag(self) -> float:
        if self.s.max_lag <= 0 or time.monotonic() - self._lag_checked < LAG_EVERY_S:
            return self._lag
        self._lag_checked = time.monotonic()
        try:
            if self._delayed is None:
                self._delayed = delayed_of(self.client)
            self._lag = replication_lag(self.client.admin.command("replSetGetStatus"), self._delayed)
        except OperationFailure:  # not a replica set, or not allowed: no secondaries we can see
            if self._lag_known:
                log.info("replication lag not available here (not a replica set, or no clusterMonitor role): "
                         "--max-lag has no effect")
            self._lag_known, self._lag = False, 0.0
        return self._lag

    def wait(self, reason: str, seconds: float) -> None:
        if self.status.waiting_for != reason:
            log.info("prune waiting", extra={"reason": reason, "lagSeconds": round(self._lag, 1),
                                             "windows": [str(w) for w in self.windows]})
        self.status.set(state="PAUSED" if reason == "paused" else "WAITING", waiting_for=reason)
        started = time.monotonic()
        self.stop.wait(seconds)
        self.status.waited(reason, time.monotonic() - started)

    # ------------------------------------------------------------------ state
    def checkpoint(self, t: Target, force: bool = False) -> None:
        assert self.meta is not None
        self.meta.collections.put(t.ns, t.state_doc())
        now = time.monotonic()
        if force or now - self._last_persist >= 1.0:
            self._last_persist = now
            self.meta.set_extra(status=self.status.snapshot())
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            snap = self.status.snapshot()
            log.info("prune progress", extra={k: snap[k] for k in ("deleted", "scanned", "averageRate", "etaSeconds",
                                                                   "rateLimit", "state")} | {"ns": t.ns})

    def load(self, targets: list[Target]) -> list[Target]:
        assert self.meta is not None
        saved = {d["_id"]: d for d in self.meta.collections.all()}
        for t in targets:
            d = saved.get(t.ns)
            if d:
                t.last = list(d.get("last", []))
                p = t.progress
                p.scanned, p.deleted, p.kept_changed = d["scanned"], d["deleted"], d["keptChanged"]
                p.unroutable, p.done, p.estimated = d["unroutable"], d["done"], d["estimated"]
        return targets

    def summary(self) -> str:
        snap = self.status.snapshot()
        lines = [f"prune {'finished' if snap['state'] == 'DONE' else 'stopped'}: deleted {snap['deleted']} "
                 f"document(s) in {duration(snap['elapsedSeconds'])}, {snap['averageRate']:g} documents/s"]
        for n in snap["namespaces"]:
            extra = [f"{n['keptChanged']} kept (key changed meanwhile)"] if n["keptChanged"] else []
            extra += [f"{n['unroutable']} kept (no routable key)"] if n["unroutable"] else []
            lines.append(f"  {n['ns']}: deleted {n['deleted']} of {n['scanned']} read"
                         + (f"; {', '.join(extra)}" if extra else ""))
        pauses = ", ".join(f"{r} {p['times']}x {duration(p['seconds'])}" for r, p in snap["pauses"].items())
        lines.append(f"pauses: {pauses or 'none'}")
        return "\n".join(lines)


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def check_job(meta: MetaStore, rule: Rule, keep: int, filters: Filters) -> Job | None:
    """The saved job, refused when it pruned with another rule: a second rule would delete what the
    first one kept (together, they keep nothing)."""
    with driver_errors("reading the job's progress"):
        job = meta.load_job()
    if job is not None and (job.kind != KIND or job.fingerprint != fingerprint(rule, keep, filters)):
        what = "a job of another kind" if job.kind != KIND else "a prune with another rule"
        raise UsageError(f"job {meta.job_name!r} in the metadata database is {what} "
                         f"({job.fingerprint.get('rule', {})}, keep {job.fingerprint.get('keep')}): pruning with a "
                         "second rule deletes what the first kept",
                         "rerun it with the same rule; if the deployment really changes rule, give --job NEW_NAME; "
                         "nothing was deleted")
    return job


def start_or_resume(meta: MetaStore, rule: Rule, keep: int, filters: Filters) -> bool:
    """True when an unfinished pass of this job resumes; a new pass (same rule) starts otherwise."""
    job = check_job(meta, rule, keep, filters)
    if job is not None and not job.finished:
        return True
    passes = int(job.extra.get("pass", 0)) if job is not None else 0
    with driver_errors("saving the job"):
        meta.start_job(Job(kind=KIND, fingerprint=fingerprint(rule, keep, filters), state="running",
                           extra={"pass": passes + 1, "started": utc_now()}))
    return False


def run_prune(s: PruneSettings) -> int:
    uri = validate_uri(s.uri, "--uri")
    meta_uri = validate_uri(s.meta, "--meta") if s.meta else uri
    for w in s.window:
        parse_window(w)
    zone(s.timezone)
    bind = parse_bind(s.http) if s.execute else None
    client = connect(uri, "deployment to prune", s.connect_timeout)
    meta_client = client if meta_uri == uri else connect(meta_uri, "metadata server", s.connect_timeout)
    http: HttpServer | None = None
    try:
        meta = MetaStore(meta_client, s.meta_db, s.job or KIND)
        rule, keep, filters = resolve_rule(s, meta)
        status = PruneStatus(rate=s.rate or None)
        with stop_on_signals() as stop:
            job = PruneJob(s, client, meta if s.execute else None, rule, keep, status, stop, filters)
            targets = job.targets()
            if s.filter:  # (a split's own filters may name namespaces this prune leaves alone)
                job.check_filters(targets)
            job.check_keys(targets)
            if not s.execute:
                check_job(meta, rule, keep, filters)
                print(job.dry_run(targets))
                return EXIT_OK
            resumed = start_or_resume(meta, rule, keep, filters)
            if resumed:
                job.load(targets)
            if bind:
                http = HttpServer(prune_app(status), *bind, token=secret(s.http_token), guarded=True).start()
            log.info("prune resuming" if resumed else "prune starting",
                     extra={"rule": rule.describe("kept"), "keep": keep, "rate": s.rate or None,
                            "windows": list(s.window), "maxLag": s.max_lag, "namespaces": len(targets),
                            "http": f"{bind[0]}:{bind[1]}" if bind else "off"})
            with driver_errors("pruning"):
                job.execute(targets)
            finished = all(t.progress.done for t in targets) and not stop.is_set()
            status.set(state="DONE" if finished else "STOPPED", waiting_for=None)
            with driver_errors("saving the job's state"):
                if finished:
                    meta.set_state("done", status=status.snapshot(), finished=utc_now())
                else:
                    meta.set_extra(status=status.snapshot())
            print(job.summary())
            if not finished:
                log.info("prune stopped; run the same command to continue")
            return EXIT_OK
    finally:
        if http is not None:
            http.stop()
        if meta_client is not client:
            meta_client.close()
        client.close()
