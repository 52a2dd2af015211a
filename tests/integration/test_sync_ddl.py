"""DDL while `mongoferry sync` copies: before a namespace is copied, while it is, and after, with SIGKILLs.

One reader (`--workers 1`) and a rate limit make the copy order and pace known: collections are
copied largest first, so each DDL can be aimed at a collection that is not copied yet, being
copied, or already copied. The commit's own verification, and a byte comparison, prove the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.test_sync import Harness, SyncProcess, assert_identical, wait_for


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    h = Harness(tmp_path)
    yield h
    h.cleanup()


Client = MongoClient[dict[str, Any]]


def rename(c: Client, src: str, to: str, drop_target: bool = False) -> None:
    c.admin.command({"renameCollection": src, "to": to, "dropTarget": drop_target})


# Each DDL, on its own collection. Sizes decide the copy order (largest first): clock, then these, then tail.
DDL: dict[str, Callable[[Client], None]] = {
    "ren": lambda c: rename(c, "live.ren", "live.ren_new"),
    "rdt": lambda c: rename(c, "live.rdt", "live.rdt_target", drop_target=True),
    "drp": lambda c: c.live.drp.drop(),
    "rec": lambda c: (c.live.rec.drop(), c.live.rec.insert_many([{"_id": f"new-{i}", "n": i} for i in range(30)])),
    "idx": lambda c: c.live.idx.create_index([("n", -1)], name="n_desc"),
    "mod": lambda c: c.live.command({"collMod": "mod", "validator": {"n": {"$exists": True}}}),
    "into": lambda c: rename(c, "outside.into", "live.into"),  # renamed into the selection
    "dbx": lambda c: (c.drop_database("dbx"),
                      c.dbx.again.insert_one({"_id": "after-drop"})),
    "view": lambda c: c.live.create_collection("view_of", viewOn="view", pipeline=[{"$match": {"n": {"$gt": 5}}}]),
}
ORDER = list(DDL)
SIZES = {name: 1400 - 40 * i for i, name in enumerate(ORDER)}
NS_OF = {name: ("dbx.c" if name == "dbx" else f"live.{name}") for name in ORDER}
CLOCK, TAIL = 3000, 600


def seed(src: EmbeddedServer) -> None:
    with src.client() as c:
        c.live.clock.insert_many([{"_id": i, "pad": "c" * 50} for i in range(CLOCK)])
        for name in ORDER:
            db, _, coll = NS_OF[name].partition(".")
            target = c["outside"]["into"] if name == "into" else c[db][coll]
            target.insert_many([{"_id": i, "n": i, "sub": {"k": i}} for i in range(SIZES[name])])
        c.live.rdt_target.insert_many([{"_id": i, "old": True} for i in range(20)])
        c.live.tail.insert_many([{"_id": i} for i in range(TAIL)])


def dst_count(dst: EmbeddedServer, ns: str) -> int:
    db, _, coll = ns.partition(".")
    with dst.client() as c:
        return int(c[db][coll].estimated_document_count())


def after_the_ddl(c: Client) -> None:
    """Changes that land after the DDL, on the collections it changed: replayed onto what was copied again."""
    c.live.ren_new.update_many({"n": {"$lt": 50}}, {"$set": {"touched": True}})
    c.live.ren_new.insert_one({"_id": "late"})
    c.live.rdt_target.delete_many({"n": {"$gte": 1000}})
    c.live.into.update_one({"_id": 3}, {"$inc": {"n": 100}})
    c.live.idx.insert_one({"_id": "late", "n": -1})


def start_sync(harness: Harness, src: EmbeddedServer, dst: EmbeddedServer, rate: int = 1500) -> SyncProcess:
    return harness.sync(src, dst, "--no-write-block", "--workers", "1", "--batch-size", "100",
                        "--max-docs-per-s", str(rate), "--exclude", "outside")


@pytest.mark.parametrize("phase", ["before", "during", "after"])
def test_ddl_in_every_phase_of_the_copy_converges(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                  harness: Harness, phase: str) -> None:
    src, dst = servers
    seed(src)
    # "during" aims each DDL at a collection being copied: slower, so that a DDL that waits on the
    # server (a drop of the collection copied just before) cannot let the next one be copied whole
    sync = start_sync(harness, src, dst, rate=700 if phase == "during" else 1500)
    sync.wait_state("COPYING", timeout=60)
    with src.client() as c:
        if phase == "before":  # while the first (largest) collection is copied: none of these is yet
            wait_for(lambda: dst_count(dst, "live.clock") > 0, timeout=60)
            for name in ORDER:
                DDL[name](c)
        else:
            for i, name in enumerate(ORDER):
                ns = "outside.into" if name == "into" else NS_OF[name]
                if name == "into":  # not selected, so never copied: its phase is the copy's
                    DDL[name](c)
                    continue
                if phase == "during":
                    wait_for(lambda ns=ns: dst_count(dst, ns) > 0, timeout=60, interval=0.01)
                    assert dst_count(dst, ns) < SIZES[name], f"{ns} was copied before its DDL ran"
                else:  # after: once the next collection's copy has begun, this one is done
                    nxt = next((NS_OF[n] for n in ORDER[i + 1:] if n != "into"), "live.tail")
                    wait_for(lambda nxt=nxt: dst_count(dst, nxt) > 0, timeout=60, interval=0.01)
                DDL[name](c)
        assert sync.progress()["state"] == "COPYING", "the copy ended before every DDL ran"
        sync.kill()  # SIGKILL right after the DDL: the restart resumes the copy, then the replay
        sync.start()
        after_the_ddl(c)
    sync.wait_state("CATCHING_UP", "RUNNING", timeout=120)
    sync.kill()  # and once more while the replay copies the renamed collections again
    sync.start()
    sync.wait_state("RUNNING", timeout=180)
    progress = sync.progress()
    if phase != "after":
        assert {"live.ren_new", "live.rdt_target", "live.into"} <= set(progress["recopied"]), progress
    else:
        assert "live.into" in progress["recopied"], progress  # the renames after the copy needed none
    sync.commit_via_http()  # the commit verifies every document and index, and refuses a difference
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_identical(src, dst, expect={"live.ren_new", "live.rdt_target", "live.rec", "live.into", "dbx.again"})
    with dst.client() as c:
        assert c.live.ren_new.count_documents({}) == SIZES["ren"] + 1
        assert "n_desc" in c.live.idx.index_information()
        assert c.live.command("listCollections", filter={"name": "mod"})["cursor"]["firstBatch"][0][
            "options"].get("validator") == {"n": {"$exists": True}}
        view = c.live.command("listCollections", filter={"name": "view_of"})["cursor"]["firstBatch"][0]
        assert view["type"] == "view" and view["options"]["viewOn"] == "view", view
        assert view["options"]["pipeline"] == [{"$match": {"n": {"$gt": 5}}}], view


def options_of(server: EmbeddedServer, ns: str) -> dict[str, dict[str, Any]]:
    db, _, coll = ns.partition(".")
    with server.client() as c:
        return {ix["name"]: {k: v for k, v in ix.items() if k not in ("v", "ns")}
                for ix in c[db][coll].list_indexes()}


def test_index_options_survive_a_rename_and_a_replayed_build(servers: tuple[EmbeddedServer, EmbeddedServer],
                                                            harness: Harness) -> None:
    """While the sync is down: an index build with options (unique, TTL), then the collection renamed.
    Replayed, the build no longer finds its collection on the source, and a change event may not
    carry the options (SecantusDB's do not): the destination must still end with the source's
    options, and a build meeting the index it made before (the kill came before its checkpoint)
    is no reason to stop."""
    import datetime as dt

    src, dst = servers
    with src.client() as c:
        c.ix.base.insert_many([{"_id": i} for i in range(100)])
    sync = harness.sync(src, dst, "--no-write-block")
    sync.wait_state("RUNNING", timeout=120)
    sync.kill()
    with src.client() as c:
        c.ix.n.insert_many([{"_id": i, "k": i, "at": dt.datetime(2026, 1, 1)} for i in range(50)])
        c.ix.n.create_index("k", unique=True, name="k_u")
        c.ix.n.create_index("at", expireAfterSeconds=3600, name="at_ttl")
        rename(c, "ix.n", "ix.n2")
    with dst.client() as c:  # what the run that was killed had built already
        c.ix.n.create_index("k", unique=True, name="k_u")
    sync.start()
    sync.wait_state("RUNNING", timeout=120)
    wait_for(lambda: set(options_of(dst, "ix.n2")) == {"_id_", "k_u", "at_ttl"}
             and options_of(dst, "ix.n2") == options_of(src, "ix.n2"), timeout=60,
             what=lambda: f"{options_of(dst, 'ix.n2')} != {options_of(src, 'ix.n2')}\n{sync.log_tail()}")
    sync.commit_via_http()  # the commit's own check compares every index's options
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_identical(src, dst, expect={"ix.base", "ix.n2"})
    assert options_of(dst, "ix.n2")["at_ttl"]["expireAfterSeconds"] == 3600
    assert options_of(dst, "ix.n2")["k_u"]["unique"] is True
