"""Unit tests for the pure parts of partition planning: mongoferry.source.partition and mongoferry.pipeline.copier."""

from __future__ import annotations

import itertools
import math

import pytest
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId

from mongoferry.core.model import Partition
from mongoferry.pipeline.copier import MIN_PARTITION_DOCS, partition_target, source_identity
from mongoferry.source.partition import every_nth, natural, ranges

# ---------------------------------------------------------------- every_nth


def test_every_nth_yields_ids_n_2n_3n() -> None:
    assert list(every_nth(range(10), 3)) == [3, 6, 9]
    assert list(every_nth(range(9), 3)) == [3, 6]


def test_every_nth_with_exact_multiple_does_not_leave_an_empty_last_range() -> None:
    # 6 ids cut every 3 ids: one boundary at index 3, two ranges of 3 ids each
    assert list(every_nth(range(6), 3)) == [3]


def test_every_nth_fewer_or_equal_ids_than_n_gives_no_boundary() -> None:
    assert list(every_nth(range(5), 5)) == []
    assert list(every_nth(range(3), 5)) == []
    assert list(every_nth([], 5)) == []


def test_every_nth_one_cuts_after_every_id() -> None:
    assert list(every_nth("abcd", 1)) == ["b", "c", "d"]


def test_every_nth_is_lazy_and_accepts_any_iterable() -> None:
    ids = (ObjectId() for _ in range(7))
    out = every_nth(ids, 2)
    assert iter(out) is out
    assert len(list(out)) == 3


def test_every_nth_ranges_hold_n_ids_each() -> None:
    ids = list(range(0, 1000, 7))
    n = 25
    bounds = list(every_nth(ids, n))
    edges = [None, *bounds, None]
    sizes = [
        sum(1 for i in ids if (lo is None or i >= lo) and (hi is None or i < hi))
        for lo, hi in itertools.pairwise(edges)
    ]
    assert sum(sizes) == len(ids)
    assert all(s == n for s in sizes[:-1])
    assert 0 < sizes[-1] <= n


# ---------------------------------------------------------------- ranges


def test_ranges_without_boundaries_is_one_unbounded_partition() -> None:
    parts = ranges("shop.orders", [])
    assert parts == [Partition(id="shop.orders#000000", ns="shop.orders", index=0)]
    (p,) = parts
    assert not p.has_lower and not p.has_upper
    assert p.lower is None and p.upper is None
    assert not p.natural


def test_ranges_cover_the_key_space() -> None:
    bounds = [10, 20, 30]
    parts = ranges("db.c", bounds)
    assert len(parts) == len(bounds) + 1
    first, last = parts[0], parts[-1]
    assert (first.has_lower, first.has_upper, first.upper) == (False, True, 10)
    assert (last.has_lower, last.lower, last.has_upper) == (True, 30, False)
    assert all(p.has_lower and p.has_upper for p in parts[1:-1])
    # consecutive ranges meet exactly: each upper bound is the next lower bound
    for a, b in itertools.pairwise(parts):
        assert a.has_upper and b.has_lower
        assert a.upper == b.lower
    assert [(p.lower, p.upper) for p in parts] == [(None, 10), (10, 20), (20, 30), (30, None)]


def test_ranges_ids_and_indexes_in_order() -> None:
    parts = ranges("db.c.with.dots", list(range(1, 12)))
    assert [p.index for p in parts] == list(range(12))
    assert [p.id for p in parts] == [f"db.c.with.dots#{i:06d}" for i in range(12)]
    assert [p.id for p in parts] == sorted(p.id for p in parts)
    assert {p.ns for p in parts} == {"db.c.with.dots"}
    assert len({p.id for p in parts}) == 12


def test_ranges_every_id_falls_in_exactly_one_partition() -> None:
    ids = list(range(-5, 50))
    parts = ranges("db.c", list(every_nth(ids, 10)))

    def contains(p: Partition, v: int) -> bool:
        return (not p.has_lower or v >= p.lower) and (not p.has_upper or v < p.upper)

    for v in [-(10**9), *ids, 10**9]:
        assert sum(contains(p, v) for p in parts) == 1, v


def test_ranges_keep_falsy_and_special_bounds() -> None:
    # 0, "" and None-like values are real bounds: has_lower/has_upper, not the value, say if a bound exists
    parts = ranges("db.c", [0, ""])
    assert parts[0].has_upper and parts[0].upper == 0
    assert parts[1].has_lower and parts[1].lower == 0
    assert parts[1].has_upper and parts[1].upper == ""
    assert parts[2].has_lower and parts[2].lower == ""
    special = ranges("db.c", [MinKey(), MaxKey()])
    assert special[1].lower == MinKey() and special[1].upper == MaxKey()


def test_ranges_partitions_start_empty() -> None:
    for p in ranges("db.c", [1, 2]):
        assert (p.docs, p.bytes, p.done, p.has_last, p.natural) == (0, 0, False, False, False)


# ---------------------------------------------------------------- natural


def test_natural_is_one_unbounded_natural_partition() -> None:
    parts = natural("db.capped")
    assert len(parts) == 1
    (p,) = parts
    assert p.natural is True
    assert (p.id, p.ns, p.index) == ("db.capped#000000", "db.capped", 0)
    assert not p.has_lower and not p.has_upper
    assert p.id == ranges("db.capped", [])[0].id, "same id as the single range partition"


# ---------------------------------------------------------------- partition_target


def test_min_partition_docs() -> None:
    assert MIN_PARTITION_DOCS == 10_000


@pytest.mark.parametrize("count", [0, 1, 100, 9_999, 10_000, 79_999])
def test_partition_target_small_counts_use_the_minimum(count: int) -> None:
    # with 4 workers, up to 8 * MIN documents still give partitions of the minimum size
    assert partition_target(count, workers=4, configured=50_000) == MIN_PARTITION_DOCS


@pytest.mark.parametrize("count", [80_001, 100_000, 250_000, 399_999, 400_000])
def test_partition_target_medium_counts_give_two_partitions_per_worker(count: int) -> None:
    target = partition_target(count, workers=4, configured=50_000)
    assert target == math.ceil(count / 8)
    assert MIN_PARTITION_DOCS < target <= 50_000
    assert math.ceil(count / target) == 8


@pytest.mark.parametrize("count", [400_001, 1_000_000, 10**9])
def test_partition_target_large_counts_use_configured_size(count: int) -> None:
    assert partition_target(count, workers=4, configured=50_000) == 50_000


def test_partition_target_is_monotonic_and_continuous_at_the_threshold() -> None:
    workers, configured = 3, 20_000
    threshold = configured * workers * 2
    assert partition_target(threshold, workers, configured) == configured
    assert partition_target(threshold + 1, workers, configured) == configured
    values = [partition_target(c, workers, configured) for c in range(0, threshold * 2, 997)]
    assert values == sorted(values)


def test_partition_target_small_counts_give_fewer_bigger_partitions() -> None:
    configured, workers = 50_000, 8
    count = 30_000
    small = partition_target(count, workers, configured)
    assert small < configured, "smaller than configured, so more than one worker gets a range"
    assert small >= MIN_PARTITION_DOCS, "but never below the minimum"
    # two ranges per worker would be 16 tiny ranges of 1,875 documents; the minimum keeps it to 3
    assert math.ceil(count / small) == 3 < workers * 2


def test_partition_target_one_worker() -> None:
    assert partition_target(50_000, workers=1, configured=50_000) == 25_000
    assert partition_target(100_000, workers=1, configured=50_000) == 50_000
    assert partition_target(100_001, workers=1, configured=50_000) == 50_000


# ---------------------------------------------------------------- source_identity


def test_source_identity_sorts_hosts_and_adds_default_port() -> None:
    assert source_identity("mongodb://db2.example.net:27018,db1.example.net/app") == [
        "db1.example.net:27017",
        "db2.example.net:27018",
    ]


def test_source_identity_ignores_password_user_database_and_options() -> None:
    a = source_identity("mongodb://alice:first-password@h1:27017,h2:27017/app?replicaSet=rs0&authSource=admin")
    b = source_identity("mongodb://bob:other%40pw@h2:27017,h1:27017/other?readPreference=secondary")
    c = source_identity("mongodb://h1,h2")
    assert a == b == c == ["h1:27017", "h2:27017"]
    assert not any("password" in h or "pw" in h for h in a)


def test_source_identity_distinguishes_deployments() -> None:
    assert source_identity("mongodb://h1:27017") != source_identity("mongodb://h1:27018")
    assert source_identity("mongodb://h1") != source_identity("mongodb://h1,h2")


def test_source_identity_hostnames_are_case_insensitive() -> None:
    assert source_identity("mongodb://DB1.Example.NET:27017") == source_identity("mongodb://db1.example.net")
