"""`--filter DB.COLL=QUERY` end to end: copy, sync (SIGKILLs, DDL in every phase, documents moving in and
out of the filter), verify on the same subset, split, and bad filters refused before any write."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import bson
from bson import json_util

from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.conftest import RAW, raw_docs, run_cli, user_namespaces
from tests.integration.test_split import split_process
from tests.integration.test_sync import (
    Harness,
    copied_docs,
    data_namespaces,
    harness,  # noqa: F401  (the fixture)
    index_names,
    seed_app,
    seed_big,
    wait_for,
)

# Documents move in and out of these: the writer cycles users' `t` through int → string → document and
# replaces users with t: 0; its transactions add to orders' amounts; the test moves big.docs' k.n.
USERS = {"$or": [{"t": {"$type": "int"}}, {"reborn": True}]}
ORDERS = {"amount": {"$gte": 20}}
BIG = {"k.n": {"$mod": [3, 0]}}
FILTERS = {"app.users": USERS, "app.orders": ORDERS, "big.docs": BIG}


def filter_args(filters: dict[str, dict[str, Any]]) -> list[str]:
    return [a for ns, q in filters.items() for a in ("--filter", f"{ns}={json_util.dumps(q)}")]


def matching_docs(server: EmbeddedServer, ns: str, query: dict[str, Any]) -> dict[bytes, bytes]:
    db, _, coll = ns.partition(".")
    with server.client() as c:
        return {bson.encode({"_id": d["_id"]}): d.raw
                for d in c[db].get_collection(coll, codec_options=RAW).find(query)}


def assert_filtered_copy(src: EmbeddedServer, dst: EmbeddedServer, filters: dict[str, dict[str, Any]],
                         expect: set[str]) -> None:
    """Every namespace there; filtered ones hold exactly the source's matching documents, byte for byte."""
    names = data_namespaces(src)
    assert expect <= names
    assert data_namespaces(dst) == names
    for ns in sorted(names):
        want = matching_docs(src, ns, filters[ns]) if ns in filters else raw_docs(src, ns)
        got = raw_docs(dst, ns)
        assert got.keys() == want.keys(), (f"{ns}: {len(want.keys() - got.keys())} missing, "
                                           f"{len(got.keys() - want.keys())} extra")
        assert got == want, ns
        assert index_names(src, ns) == index_names(dst, ns), ns


def test_a_filtered_sync_killed_in_every_phase_with_ddl_converges_to_the_matching_documents(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:  # noqa: F811
    src, dst = servers
    seed_big(src, 12_000)
    seed_app(src, users=400, orders=40)
    writer = harness.writer(src, seed=5).start()
    sync = harness.sync(src, dst, "--no-write-block", "--batch-size", "50", "--workers", "1",
                        "--max-batch", "20", "--max-docs-per-s", "800", *filter_args(FILTERS))

    # 1. DDL during the copy, then a SIGKILL during it
    wait_for(lambda: copied_docs(dst) >= 600, timeout=180, what=sync.log_tail)
    assert sync.progress()["state"] == "COPYING"
    with src.client() as c:
        c.app.users.create_index("t", name="t_1")
        c.app.notes.insert_many([{"_id": i, "note": "n"} for i in range(30)])  # created mid-copy
        c.app.scratch.insert_one({"_id": 1})
        c.app.scratch.drop()
    sync.kill()
    assert copied_docs(dst) < 4_000, "the copy finished before the kill: make it slower"
    with src.client() as c:  # while it is down: a third of big.docs leaves the filter, another third joins
        c.big.docs.update_many({"_id": {"$lt": 2_000}}, {"$inc": {"k.n": 1}})

    # 2. resumed, through the catch-up into steady state; more changes and DDL, killed again
    sync.start()
    sync.wait_state("RUNNING", timeout=300)
    with src.client() as c:
        c.big.docs.update_many({"_id": {"$gte": 10_000}}, {"$inc": {"k.n": 2}})
        c.big.docs.insert_many([{"_id": 100_000 + i, "v": "new", "k": {"n": i}} for i in range(30)])
        c.big.docs.delete_many({"_id": {"$in": list(range(3_000, 3_030))}})
        c.big.docs.update_many({"_id": {"$lt": 200}}, {"$set": {"v": "renamed field untouched"}})  # filter-blind
        c.app.users.drop_index("t_1")
        c.app.orders.create_index("amount", name="amount_1")
    time.sleep(1.5)
    sync.kill()

    # 3. resumed; the writer stops; commit verifies the filtered subsets and succeeds
    sync.start()
    sync.wait_state("RUNNING", timeout=300)
    time.sleep(1)
    writer.stop()
    assert writer.errors == 0, writer.last_error
    assert writer.counts["type_change"] > 0 and writer.counts["txn"] > 0
    progress = sync.progress()
    rows = {r["source"]: r for r in progress["namespaces"]}
    sync.commit_via_http()
    assert sync.wait_exit(120) == 0, sync.log_tail()
    assert_filtered_copy(src, dst, FILTERS, expect={"big.docs", "app.users", "app.orders", "app.notes"})
    with src.client() as c:  # the documents that left the filter are gone from the destination
        assert c.big.docs.count_documents({}) > c.big.docs.count_documents(BIG) > 0
    assert set(rows) >= set(FILTERS)  # counts in progress name every filtered namespace


def test_copy_and_verify_compare_the_same_subset_and_bad_filters_write_nothing(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path) -> None:
    src, dst = servers
    seed_app(src, users=300, orders=60)
    args = ["--src", src.uri, "--dst", dst.uri]

    # refused before anything is written: the server's own parser, a bad JSON, a namespace not copied
    for bad, says in ((['app.users={"t": {"$bogus": 1}}'], "refused by the server"),
                      (["app.users={t: 1}"], "not valid extended JSON"),
                      (['app.nothing={"t": 1}'], "not a selected collection")):
        r = run_cli("copy", *args, "--filter", bad[0])
        assert r.code == 2, r.text
        assert says in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert not {ns for ns in user_namespaces(dst)}, "a refused filter wrote something"

    filters = {"app.users": {"n": {"$lt": 100}}, "app.orders": ORDERS}
    r = run_cli("copy", *args, *filter_args(filters), "--log-format", "json")
    assert r.code == 0, r.text
    assert_filtered_copy(src, dst, filters, expect={"app.users", "app.orders"})
    summary = [line for line in r.json_lines() if line.get("msg") == "copy complete"]
    assert summary and summary[0]["documents"] == 100 + 40

    check = ["verify", *args, "--check-only", "--port", "0", *filter_args(filters)]
    r = run_cli(*check)
    assert r.code == 0, r.text
    r = run_cli("verify", *args, "--check-only", "--port", "0")  # without the filter, the rest is missing
    assert r.code == 4, r.text

    with dst.client() as c:  # a destination document that should not be there is a finding
        c.app.users.insert_one({"_id": 5000, "n": 5000, "t": 1})
    r = run_cli(*check)
    assert r.code == 4, r.text
    assert "5000" in r.text


def test_renaming_a_filtered_collection_stops_the_sync_with_a_clear_error(
        servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:  # noqa: F811
    src, dst = servers
    seed_app(src, users=50, orders=5)
    sync = harness.sync(src, dst, "--no-write-block", *filter_args({"app.users": USERS}))
    sync.wait_state("RUNNING", timeout=120)
    with src.client() as c:
        c.admin.command("renameCollection", "app.users", to="app.people")
    assert sync.wait_exit(120) == 4, sync.log_tail()
    text = sync.log_text()
    assert "renamed to app.people" in text and "--filter" in text
    with dst.client() as c:
        assert "users" in c.app.list_collection_names() and "people" not in c.app.list_collection_names()


def test_a_filtered_split_gives_each_part_its_share_of_the_matching_documents_and_prune_keeps_the_rest(
        tmp_path: Path, servers: tuple[EmbeddedServer, EmbeddedServer], harness: Harness) -> None:  # noqa: F811
    src, dst0 = servers
    dst1 = EmbeddedServer(tmp_path / "dst1").start()
    harness.on_cleanup(dst1.stop)
    seed_app(src, users=300, orders=10)
    query = {"n": {"$gte": 50}}
    args = ["--key", "n", "--by", "mod", "--include", "app.users", "--filter", f"app.users={json.dumps(query)}"]
    r = run_cli("split", "--src", src.uri, "--dst", dst0.uri, "--dst", dst1.uri, *args, "--explain")
    assert r.code == 0, r.text
    assert "125" in r.text  # 250 matching documents, half to each part
    assert not user_namespaces(dst0) and not user_namespaces(dst1)

    split = split_process(harness, src, [dst0, dst1], *args, "--no-write-block")
    split.wait_state("RUNNING", timeout=180)
    with src.client() as c:
        c.app.users.update_one({"_id": 10}, {"$set": {"n": 60}})  # joins the filter, part 0
        c.app.users.update_one({"_id": 61}, {"$set": {"n": 1}})  # leaves it
        c.app.users.update_one({"_id": 63}, {"$inc": {"n": 2}})  # moves from part 1 to part 0
    split.commit_via_http()
    assert split.wait_exit(120) == 0, split.log_tail()

    def share(part: int) -> dict[bytes, bytes]:
        return {k: v for k, v in matching_docs(src, "app.users", query).items() if bson.decode(v)["n"] % 2 == part}

    assert raw_docs(dst0, "app.users") == share(0) and raw_docs(dst1, "app.users") == share(1)
    assert len(share(0)) + len(share(1)) == 250
    part1 = share(1)

    # The source keeps part 0: prune deletes part 1's share, never a document the filter left out.
    r = run_cli("prune", "--uri", src.uri, "--meta", dst1.uri, "--from-split", "split", "--keep", "0",
                "--include", "app.users", "--rate", "0", "--execute", "--http", "off")
    assert r.code == 0, r.text
    with src.client() as c:
        left = {d["_id"]: d["n"] for d in c.app.users.find()}
    assert len(left) == 300 - len(part1) and not {bson.decode(k)["_id"] for k in part1} & set(left)
    assert all(n < 50 or n % 2 == 0 for n in left.values())
    r = run_cli("prune", "--uri", src.uri, "--meta", dst1.uri, "--from-split", "split", "--keep", "0",
                "--include", "app.users", "--filter", 'app.users={"n": 1}')
    assert r.code == 2 and "--filter" in r.err, r.text
    typo = run_cli("prune", "--uri", src.uri, "--key", "n", "--parts", "2", "--keep", "0", "--include", "app",
                   "--filter", 'app.user={"n": 1}', "--rate", "0", "--execute", "--http", "off")
    assert typo.code == 2 and "app.user" in typo.err, typo.text
    with src.client() as c:
        assert c.app.users.count_documents({}) == len(left), "a refused prune deleted something"


def test_restore_filter_gives_the_matching_documents_at_each_time_and_backup_filter_is_refused(
        tmp_path: Path) -> None:
    from tests.integration.test_backup import backup, complete_snapshots, covered, newest, restore, seed, stop

    with EmbeddedServer(tmp_path / "src").start() as src, EmbeddedServer(tmp_path / "dst").start() as dst:
        seed(src, docs=400)
        folder = tmp_path / "backup"
        refused = run_cli("backup", "--src", src.uri, "--to", str(folder), "--once",
                          "--filter", 'shop.orders={"flag": true}')
        assert refused.code == 2 and "restore --filter" in refused.err, refused.text
        assert len(refused.err.strip().splitlines()) == 1 and not folder.exists()

        proc = backup(src, folder)
        wait_for(lambda: complete_snapshots(folder) == 1, timeout=60)
        query = {"flag": True}
        marks = []
        with src.client() as c:
            c.shop.orders.update_many({"user": 3}, {"$set": {"flag": True}})  # join after the snapshot
            marks.append((newest(c), matching_docs(src, "shop.orders", query)))
            c.shop.orders.update_many({"user": 4}, {"$set": {"flag": True}})
            c.shop.orders.update_many({"user": 3, "_id": {"$lt": 200}}, {"$unset": {"flag": ""}})  # leave
            c.shop.orders.insert_one({"_id": 9999, "flag": True})
            marks.append((newest(c), matching_docs(src, "shop.orders", query)))
            people = raw_docs(src, "crm.people")
            c.admin.command("renameCollection", "shop.orders", to="shop.archived")
            renamed = newest(c)
        wait_for(lambda: covered(folder) >= renamed, timeout=60)
        stop(proc)

        entry = f"shop.orders={json.dumps(query)}"
        for bad, says in (('shop.nothing={"a": 1}', "not a collection this restore writes"),
                          ('shop.orders={"a": {"$bogus": 1}}', "refused by the server"),
                          ('shop.orders={"flag": true}', "renames shop.orders to shop.archived")):
            r = run_cli("restore", "--from", str(folder), "--dst", dst.uri, "--filter", bad)
            assert r.code == 2 and says in r.err, r.text
            assert not user_namespaces(dst), "a refused restore wrote something"
        for at, want in marks:
            restore(folder, dst, "--to-time", f"{at.time}:{at.inc}", "--drop", "--filter", entry)
            got = raw_docs(dst, "shop.orders")
            assert got == want and len(want) >= 8, f"at {at}: {len(got)} restored, {len(want)} matching"
            assert raw_docs(dst, "crm.people") == people  # not filtered: whole
