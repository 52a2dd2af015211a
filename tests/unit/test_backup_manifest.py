"""The manifest's arithmetic: which times a backup restores to, gaps, and the restore plan."""

from __future__ import annotations

import io
from pathlib import Path

import bson
import pytest
from bson import Timestamp

from mongoferry.core.errors import UsageError
from mongoferry.core.model import CollectionSpec
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.jobs.backup import harmful_renames, parse_sources
from mongoferry.jobs.backup_admin import backup_status, keep_from
from mongoferry.jobs.restore import after, parse_time
from mongoferry.sinks.archive.layout import (
    compress,
    decompress,
    dumps,
    iter_bson,
    loads,
    metadata_json,
    spec_from_metadata,
)
from mongoferry.sinks.archive.manifest import Chunk, Manifest, Snapshot


def T(t: int, i: int = 0) -> Timestamp:
    return Timestamp(t, i)


def chunk(after: int, until: int) -> Chunk:
    return Chunk(key=f"oplog/{after}_{until}.bson", after=T(after), until=T(until), first=T(after + 1),
                 last=T(until), entries=1, bytes=1, sha256="")


def manifest(*chunks: Chunk, snapshots: list[Snapshot] | None = None, start: int = 100) -> Manifest:
    m = Manifest(source={}, compression="none", start=T(start), covered=T(start))
    m.snapshots = snapshots or [Snapshot("s1", T(start), "complete", T(start + 5))]
    for c in chunks:
        m.add_chunk(c)
    return m


def test_a_snapshot_restores_from_its_end_to_the_end_of_contiguous_coverage() -> None:
    m = manifest(chunk(100, 110), chunk(110, 120))
    [r] = m.ranges()
    assert (r.start, r.end) == (T(105), T(120))
    assert [c.until for c in r.chunks] == [T(110), T(120)]


def test_a_gap_ends_the_range_and_is_reported_with_its_bounds() -> None:
    m = manifest(chunk(100, 110), chunk(115, 120))
    [gap] = m.gaps()
    assert (gap.after, gap.until) == (T(110), T(115))
    assert m.ranges()[0].end == T(110)
    with pytest.raises(ValueError, match="gap"):
        m.plan(T(118))
    with pytest.raises(ValueError, match="gap"):
        m.plan(None)  # the latest time is past the gap: not quietly an older one


def test_a_time_outside_every_range_names_the_range() -> None:
    m = manifest(chunk(100, 110))
    with pytest.raises(ValueError, match="outside the restorable range"):
        m.plan(T(104))
    with pytest.raises(ValueError, match="outside"):
        m.plan(T(111))
    assert m.plan(T(107)).snapshot.id == "s1"


def test_no_complete_snapshot_means_nothing_to_restore() -> None:
    m = manifest(chunk(100, 110), snapshots=[Snapshot("s1", T(100), "copying")])
    assert m.ranges() == []
    with pytest.raises(ValueError, match="no restorable snapshot"):
        m.plan(None)


def test_an_idle_source_stays_restorable_past_the_last_chunk() -> None:
    m = manifest(chunk(100, 110))
    m.covered = T(200)
    assert m.ranges()[0].end == T(200)
    later = Snapshot("s2", T(150), "complete", T(150))
    m.snapshots.append(later)
    assert m.plan(T(180)).snapshot.id == "s2"  # the newest snapshot: the least to replay


def test_the_newest_snapshot_holding_the_time_is_chosen() -> None:
    s1, s2 = Snapshot("s1", T(100), "complete", T(105)), Snapshot("s2", T(112), "complete", T(114))
    m = manifest(chunk(100, 110), chunk(110, 120), snapshots=[s1, s2])
    assert m.plan(T(113)).snapshot.id == "s1"  # s2 is not restorable before its end
    assert m.plan(T(115)).snapshot.id == "s2"
    assert m.plan(None).snapshot.id == "s2"


def test_retention_keeps_the_newest_snapshot_ended_before_the_window() -> None:
    s1, s2 = Snapshot("s1", T(100), "complete", T(105)), Snapshot("s2", T(112), "complete", T(114))
    m = manifest(chunk(100, 110), chunk(110, 120), snapshots=[s1, s2])
    assert keep_from(m, T(104)) is None
    assert keep_from(m, T(113)) is s1
    assert keep_from(m, T(119)) is s2


def test_the_manifest_round_trips_through_json() -> None:
    m = manifest(chunk(100, 110))
    again = Manifest.from_doc(loads(dumps(m.to_doc())))
    assert again.chunks == m.chunks and again.snapshots == m.snapshots and again.covered == m.covered


def test_times_are_iso_or_a_timestamp_and_inclusive() -> None:
    assert parse_time("1765000000:3") == T(1765000000, 3)
    assert parse_time("2026-12-07T10:15:00Z") == T(1796638500, 2**32 - 1)  # the whole second
    assert parse_time("2026-12-07T10:15:00") == parse_time("2026-12-07T10:15:00+00:00")
    assert after(T(5, 1)) == T(5, 2) and after(T(5, 2**32 - 1)) == T(6, 0)
    for bad in ("yesterday", "12:99999999999", "1765000000"):
        with pytest.raises(UsageError):
            parse_time(bad)


def test_sources_are_a_uri_or_named_shards() -> None:
    assert parse_sources(["mongodb://a/"]) == [("", "mongodb://a/")]
    assert parse_sources(["s0=mongodb://a/", "s1=mongodb://b/"]) == [("s0", "mongodb://a/"), ("s1", "mongodb://b/")]
    for bad in ([], ["mongodb://a/", "mongodb://b/"], ["s0=mongodb://a/", "s0=mongodb://b/"], ["a b=mongodb://x/"]):
        with pytest.raises(UsageError):
            parse_sources(bad)


def _rename(src: str, to: str, ts: Timestamp) -> bytes:
    return bson.encode({"ts": ts, "op": "c", "ns": "db.$cmd", "o": {"renameCollection": src, "to": to}})


def test_a_rename_before_its_collection_was_read_abandons_the_snapshot() -> None:
    sel = NamespaceMap.build()
    # a.x was read before the rename: the oplog replays it; a.y was still being read: it cannot.
    assert harmful_renames([_rename("a.x", "a.z", T(10))], sel, {"a.x": T(5)}) == []
    assert harmful_renames([_rename("a.y", "a.z", T(10))], sel, {"a.y": T(12)})
    assert harmful_renames([_rename("a.y", "a.z", T(10))], sel, {"a.y": None})
    # created after the listing: every document is in the oplog
    assert harmful_renames([_rename("a.new", "a.z", T(10))], sel, {}) == []
    # renamed into the selection from outside it: never read
    only_b = NamespaceMap.build(include=["b"])
    assert harmful_renames([_rename("a.x", "b.x", T(10))], only_b, {})


def test_compression_round_trips_and_bson_streams_detect_truncation() -> None:
    body = b"".join(bson.encode({"_id": i}) for i in range(100))
    for how in ("gzip", "zstd", "none"):
        assert decompress(compress(body, how), how) == body  # type: ignore[arg-type]
    assert len(list(iter_bson(io.BytesIO(body)))) == 100
    with pytest.raises(ValueError, match="truncated"):
        list(iter_bson(io.BytesIO(body[:-3])))


def test_metadata_json_is_mongodumps_canonical_form() -> None:
    spec = CollectionSpec(ns="db.c", kind="collection", options={"capped": True, "size": 4096},
                          indexes=[{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
    text = metadata_json(spec).decode()
    assert '"v":{"$numberInt":"2"}' in text and '"collectionName":"c"' in text and '"type":"collection"' in text
    again = spec_from_metadata("db.c", text.encode())
    assert again.options == spec.options and again.indexes == spec.indexes and again.kind == "collection"


def test_a_backups_status_says_running_stopped_or_silent_and_how_far_it_reaches() -> None:
    m = manifest(chunk(100, 110), chunk(110, 120))
    m.snapshots.append(Snapshot("s2", T(118)))  # being read
    m.heartbeat = 125.0
    running = backup_status("", m, now=130.0)
    assert running["state"] == "RUNNING" and running["secondsSinceUpdate"] == 5.0
    assert running["archiveLagSeconds"] == 10.0 and running["latestRestorable"].endswith("(120:0)")
    assert running["snapshots"] == {"complete": 1, "reading": ["s2"]}
    assert running["oplog"]["chunks"] == 2 and running["gaps"] == []
    assert backup_status("", m, now=125.0 + m.busy_for() + 1)["state"] == "NOT RUNNING"  # killed, or stuck
    m.heartbeat, m.stopped_at = None, 126.0
    assert backup_status("", m, now=130.0)["state"] == "STOPPED"
    assert backup_status("", manifest(snapshots=[Snapshot("s1", T(100))]), now=130.0)["latestRestorable"] is None


def test_a_busy_archive_saves_a_heartbeat_between_its_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries arriving all the time keep a chunk pending for --chunk (60 s); the manifest is still
    saved every COVER_EVERY_S, so a running backup never looks stopped to status or retention."""
    from mongoferry.core.events import Batch, Position
    from mongoferry.infra.storage import LocalStorage
    from mongoferry.sinks.archive import oplog as sink_module
    from mongoferry.sinks.archive.manifest import COVER_EVERY_S
    from mongoferry.sinks.archive.oplog import OplogArchiveSink

    clock = [1000.0]
    monkeypatch.setattr(sink_module.time, "monotonic", lambda: clock[0])
    storage = LocalStorage(tmp_path)
    m = Manifest(source={}, compression="none", start=T(100), covered=T(100))
    sink = OplogArchiveSink(storage, m, "none", chunk_s=60.0, chunk_bytes=1 << 30)
    beats = []
    for i in range(1, 60):  # one entry every half second for 30 s
        clock[0] += 0.5
        sink.apply(Batch(entries=[{"ts": T(100 + i), "op": "n", "o": {}}]))
        sink.applied(Position(T(100 + i)))
        beats.append(Manifest.load(storage).heartbeat if (tmp_path / "manifest.json").exists() else None)
    assert sink.chunks_written == 0 and sink.pending  # no chunk was due
    saved = [b for b in beats if b is not None]
    assert len(set(saved)) >= 30 / COVER_EVERY_S - 1  # saved about every COVER_EVERY_S
