"""Unit tests for mongoferry.core.namespaces: selection, renames and their validation (pure)."""

from __future__ import annotations

import pytest

from mongoferry.core.errors import EXIT_USAGE, UsageError
from mongoferry.core.namespaces import SYSTEM_DATABASES, NamespaceMap, split_ns

SOURCE = ["shop.orders", "shop.users", "crm.leads", "crm.notes", "logs.events"]


def usage_error(excinfo: pytest.ExceptionInfo[UsageError], *needles: str) -> str:
    """Check the common contract of a usage error and return its message."""
    err = excinfo.value
    assert err.exit_code == EXIT_USAGE == 2
    assert err.hint, "every usage error carries a hint"
    for needle in needles:
        assert needle in err.message, f"{needle!r} not named in {err.message!r}"
    return err.message


# ---------------------------------------------------------------- split_ns


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        ("db.coll", ("db", "coll")),
        ("db.a.b", ("db", "a.b")),
        ("db.a.b.c", ("db", "a.b.c")),
        ("db.system.views", ("db", "system.views")),
        ("db", ("db", "")),
    ],
)
def test_split_ns_splits_at_first_dot(ns: str, expected: tuple[str, str]) -> None:
    assert split_ns(ns) == expected


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("db", sorted(SYSTEM_DATABASES))
def test_system_databases_are_never_selected(db: str) -> None:
    assert {"admin", "config", "local"} == SYSTEM_DATABASES
    everything = NamespaceMap.build()
    included = NamespaceMap.build(include=[db, f"{db}.coll"])
    for m in (everything, included):
        assert m.is_system(f"{db}.coll")
        assert not m.selected(f"{db}.coll")
        assert m.map(f"{db}.coll") is None
        assert not m.db_selected(db)


def test_meta_db_is_never_selected() -> None:
    m = NamespaceMap.build(include=["mongoferry_meta"])
    assert not m.selected("mongoferry_meta.jobs")
    assert not m.db_selected("mongoferry_meta")


def test_custom_meta_db_is_never_selected_and_default_one_is_ordinary() -> None:
    m = NamespaceMap.build(meta_db="ferry_jobs")
    assert m.meta_db == "ferry_jobs"
    assert not m.selected("ferry_jobs.partitions")
    assert m.is_system("ferry_jobs.partitions")
    assert m.selected("mongoferry_meta.jobs")


@pytest.mark.parametrize("coll", ["system.views", "system.profile", "system.buckets.metrics", "system.js"])
def test_system_collections_are_never_selected(coll: str) -> None:
    m = NamespaceMap.build(include=["shop", f"shop.{coll}"])
    assert not m.selected(f"shop.{coll}")
    assert m.map(f"shop.{coll}") is None


def test_collection_merely_starting_with_system_is_selected() -> None:
    m = NamespaceMap.build()
    assert m.selected("shop.systems")
    assert m.selected("shop.systemx.a")
    assert m.selected("system.coll"), "a database named 'system' is an ordinary database"


def test_no_include_selects_everything_but_system() -> None:
    m = NamespaceMap.build()
    assert all(m.selected(ns) for ns in SOURCE)
    assert m.resolve([*SOURCE, "admin.users", "local.oplog.rs", "shop.system.views"]) == {ns: ns for ns in SOURCE}


def test_include_database_selects_all_its_collections() -> None:
    m = NamespaceMap.build(include=["shop"])
    assert m.selected("shop.orders")
    assert m.selected("shop.a.b")
    assert not m.selected("crm.leads")
    assert not m.selected("shopping.carts"), "a database include is not a prefix match"
    assert m.resolve(SOURCE) == {"shop.orders": "shop.orders", "shop.users": "shop.users"}


def test_include_exact_namespace_selects_only_that_collection() -> None:
    m = NamespaceMap.build(include=["shop.orders"])
    assert m.selected("shop.orders")
    assert not m.selected("shop.users")
    assert not m.selected("shop.orders.archive"), "an exact include does not select dotted children"
    assert m.resolve(SOURCE) == {"shop.orders": "shop.orders"}


def test_include_mixes_databases_and_namespaces() -> None:
    m = NamespaceMap.build(include=["crm", "shop.users"])
    assert m.resolve(SOURCE) == {"crm.leads": "crm.leads", "crm.notes": "crm.notes", "shop.users": "shop.users"}
    assert m.db_selected("crm")
    assert m.db_selected("shop")
    assert not m.db_selected("logs")


def test_include_dotted_collection_name() -> None:
    m = NamespaceMap.build(include=["shop.a.b"])
    assert m.resolve(["shop.a", "shop.a.b", "shop.a.b.c"]) == {"shop.a.b": "shop.a.b"}


def test_exclude_database() -> None:
    m = NamespaceMap.build(exclude=["logs"])
    assert not m.selected("logs.events")
    assert not m.db_selected("logs")
    assert m.resolve(SOURCE) == {ns: ns for ns in SOURCE if not ns.startswith("logs.")}


def test_exclude_namespace() -> None:
    m = NamespaceMap.build(exclude=["shop.users"])
    assert not m.selected("shop.users")
    assert m.selected("shop.orders")
    assert m.db_selected("shop")
    assert "shop.users" not in m.resolve(SOURCE)


def test_exclude_database_wins_over_included_namespace() -> None:
    m = NamespaceMap.build(include=["shop.orders", "crm"], exclude=["shop"])
    assert not m.selected("shop.orders")
    assert m.map("shop.orders") is None
    assert not m.db_selected("shop")


def test_exclude_namespace_wins_over_included_database() -> None:
    m = NamespaceMap.build(include=["shop"], exclude=["shop.users"])
    assert m.resolve(SOURCE) == {"shop.orders": "shop.orders"}


def test_exclude_namespace_wins_over_same_included_namespace() -> None:
    m = NamespaceMap.build(include=["shop.orders", "shop.users"], exclude=["shop.orders"])
    assert not m.selected("shop.orders")
    assert m.selected("shop.users")


def test_db_selected_without_include() -> None:
    m = NamespaceMap.build()
    assert m.db_selected("anything")
    assert not m.db_selected("mongoferry_meta")


# ---------------------------------------------------------------- renames


def test_database_rename() -> None:
    m = NamespaceMap.build(rename=["shop=store"])
    assert m.db_renames == {"shop": "store"}
    assert m.target("shop.orders") == "store.orders"
    assert m.map("shop.a.b") == "store.a.b"
    assert m.map("crm.leads") == "crm.leads"
    assert m.map_db("shop") == "store"
    assert m.map_db("crm") == "crm"


def test_collection_rename() -> None:
    m = NamespaceMap.build(rename=["shop.orders=archive.orders_2024"])
    assert m.coll_renames == {"shop.orders": "archive.orders_2024"}
    assert m.map("shop.orders") == "archive.orders_2024"
    assert m.map("shop.users") == "shop.users"
    assert m.map_db("shop") == "shop", "a collection rename does not rename its database"


def test_collection_rename_wins_over_database_rename() -> None:
    m = NamespaceMap.build(rename=["shop=store", "shop.orders=legacy.orders"])
    assert m.map("shop.orders") == "legacy.orders"
    assert m.map("shop.users") == "store.users"
    assert m.resolve(SOURCE) == {
        "shop.orders": "legacy.orders",
        "shop.users": "store.users",
        "crm.leads": "crm.leads",
        "crm.notes": "crm.notes",
        "logs.events": "logs.events",
    }


def test_collection_rename_of_dotted_collection() -> None:
    m = NamespaceMap.build(rename=["shop.a.b=shop.a_b"])
    assert m.map("shop.a.b") == "shop.a_b"
    assert m.map("shop.a") == "shop.a"


def test_rename_strips_whitespace() -> None:
    m = NamespaceMap.build(rename=[" shop = store "])
    assert m.db_renames == {"shop": "store"}


def test_same_rename_given_twice_is_accepted() -> None:
    m = NamespaceMap.build(rename=["shop=store", "shop=store"])
    assert m.db_renames == {"shop": "store"}


def test_target_applies_renames_even_when_not_selected() -> None:
    m = NamespaceMap.build(include=["crm"], rename=["shop=store"])
    assert m.target("shop.orders") == "store.orders"
    assert m.map("shop.orders") is None


def test_rename_with_exclude_and_include_together() -> None:
    m = NamespaceMap.build(include=["shop", "crm"], exclude=["crm.notes"], rename=["crm=sales"])
    assert m.resolve(SOURCE) == {
        "shop.orders": "shop.orders",
        "shop.users": "shop.users",
        "crm.leads": "sales.leads",
    }


# ---------------------------------------------------------------- resolve errors


def test_resolve_include_database_matching_nothing() -> None:
    m = NamespaceMap.build(include=["shop", "nosuchdb"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "--include", "'nosuchdb'", "matches no namespace")


def test_resolve_include_namespace_matching_nothing() -> None:
    m = NamespaceMap.build(include=["shop.nosuch"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "'shop.nosuch'")


def test_resolve_include_entirely_excluded_matches_nothing() -> None:
    m = NamespaceMap.build(include=["logs"], exclude=["logs.events"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "'logs'")


def test_resolve_include_of_system_database_matches_nothing() -> None:
    m = NamespaceMap.build(include=["admin"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve([*SOURCE, "admin.users"])
    usage_error(excinfo, "'admin'")


def test_resolve_rename_of_collection_missing_on_source() -> None:
    m = NamespaceMap.build(rename=["shop.nosuch=shop.other"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "--rename", "'shop.nosuch'", "not copied")


def test_resolve_rename_of_excluded_collection() -> None:
    m = NamespaceMap.build(exclude=["shop.orders"], rename=["shop.orders=shop.old_orders"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "'shop.orders'", "not copied")


def test_resolve_rename_of_collection_outside_include() -> None:
    m = NamespaceMap.build(include=["crm"], rename=["shop.orders=crm.orders"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "'shop.orders'")


def test_resolve_database_rename_onto_existing_database_collides() -> None:
    m = NamespaceMap.build(rename=["shop=crm"])
    source = ["shop.leads", "shop.orders", "crm.leads"]
    with pytest.raises(UsageError) as excinfo:
        m.resolve(source)
    message = usage_error(excinfo, "'crm.leads'", "'shop.leads'", "two sources")
    assert "both become 'crm.leads'" in message


def test_resolve_database_rename_onto_existing_database_without_overlap_is_fine() -> None:
    m = NamespaceMap.build(rename=["shop=crm"])
    assert m.resolve(["shop.orders", "crm.leads"]) == {"shop.orders": "crm.orders", "crm.leads": "crm.leads"}


def test_resolve_collection_rename_onto_existing_collection_collides() -> None:
    m = NamespaceMap.build(rename=["shop.orders=shop.users"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "'shop.orders'", "'shop.users'", "both become")


def test_resolve_collection_rename_onto_database_renamed_target_collides() -> None:
    m = NamespaceMap.build(rename=["crm=sales", "logs.events=sales.leads"])
    with pytest.raises(UsageError) as excinfo:
        m.resolve(SOURCE)
    usage_error(excinfo, "'crm.leads'", "'logs.events'", "'sales.leads'")


def test_resolve_collision_ignores_unselected_sources() -> None:
    m = NamespaceMap.build(exclude=["crm.leads"], rename=["shop=crm"])
    assert m.resolve(["shop.leads", "crm.leads"]) == {"shop.leads": "crm.leads"}


def test_resolve_swap_of_two_collections_is_allowed() -> None:
    m = NamespaceMap.build(rename=["shop.orders=shop.users", "shop.users=shop.orders"])
    assert m.resolve(["shop.orders", "shop.users"]) == {"shop.orders": "shop.users", "shop.users": "shop.orders"}


# ---------------------------------------------------------------- build errors


def build_pattern(flag: str, value: str) -> NamespaceMap:
    return NamespaceMap.build(include=[value]) if flag == "include" else NamespaceMap.build(exclude=[value])


@pytest.mark.parametrize("item", ["shop", "shop->store", "=store", "shop=", " = ", "shop.orders=", "=a.b"])
def test_build_malformed_rename(item: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=[item])
    usage_error(excinfo, "--rename", repr(item), "malformed")


@pytest.mark.parametrize("item", ["shop=store.orders", "shop.orders=store"])
def test_build_rename_mixing_database_and_collection(item: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=[item])
    usage_error(excinfo, repr(item), "mixes a database and a collection")


@pytest.mark.parametrize("flag", ["include", "exclude"])
@pytest.mark.parametrize(
    ("value", "bad_db"),
    [
        ("my db", "my db"),
        ("my db.coll", "my db"),
        ("a/b", "a/b"),
        ("a\\b", "a\\b"),
        ('a"b', 'a"b'),
        ("a$b", "a$b"),
        ("a\x00b", "a\x00b"),
        ("x" * 64, "x" * 64),
        ("", ""),
        (".coll", ""),
    ],
)
def test_build_invalid_database_name_in_pattern(flag: str, value: str, bad_db: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        build_pattern(flag, value)
    usage_error(excinfo, f"--{flag}", repr(value), repr(bad_db), "not a valid database name")


def test_build_longest_valid_database_name() -> None:
    name = "x" * 63
    assert NamespaceMap.build(include=[name]).selected(f"{name}.c")


@pytest.mark.parametrize("flag", ["include", "exclude"])
def test_build_empty_collection_name_in_pattern(flag: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        build_pattern(flag, "shop.")
    usage_error(excinfo, f"--{flag}", "'shop.'", "empty collection name")


@pytest.mark.parametrize(
    ("item", "bad"),
    [
        ("my shop=store", "my shop"),
        ("shop=my store", "my store"),
        ("shop=st$re", "st$re"),
        ("shop.orders=a/b.orders", "a/b"),
    ],
)
def test_build_invalid_database_name_in_rename(item: str, bad: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=[item])
    usage_error(excinfo, "--rename", repr(bad), "not a valid database name")


def test_build_rename_to_empty_collection() -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=["shop.orders=store."])
    usage_error(excinfo, "--rename", "'store.'", "empty collection name")


@pytest.mark.parametrize(
    ("renames", "src"),
    [
        (["shop=store", "shop=archive"], "shop"),
        (["shop.orders=a.b", "shop.orders=a.c"], "shop.orders"),
    ],
)
def test_build_same_source_renamed_twice_differently(renames: list[str], src: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=renames)
    usage_error(excinfo, repr(src), "twice")


def test_build_two_databases_renamed_onto_one() -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=["shop=merged", "crm=merged"])
    usage_error(excinfo, "database", "'shop'", "'crm'", "'merged'")


def test_build_two_collections_renamed_onto_one() -> None:
    with pytest.raises(UsageError) as excinfo:
        NamespaceMap.build(rename=["shop.orders=all.things", "crm.leads=all.things"])
    usage_error(excinfo, "collection", "'shop.orders'", "'crm.leads'", "'all.things'")


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_contents() -> None:
    m = NamespaceMap.build(include=["shop", "crm"], exclude=["crm.notes"], rename=["shop=store", "crm.leads=x.y"])
    assert m.fingerprint() == {
        "include": ["crm", "shop"],
        "exclude": ["crm.notes"],
        "rename": ["crm.leads=x.y", "shop=store"],
    }


def test_fingerprint_is_order_insensitive() -> None:
    a = NamespaceMap.build(
        include=["shop", "crm", "logs.events"],
        exclude=["crm.notes", "shop.users"],
        rename=["shop=store", "crm.leads=x.y", "logs=archive"],
    )
    b = NamespaceMap.build(
        include=["logs.events", "crm", "shop"],
        exclude=["shop.users", "crm.notes"],
        rename=["logs=archive", "crm.leads=x.y", "shop=store"],
    )
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_changes_with_selection() -> None:
    base = NamespaceMap.build(include=["shop"]).fingerprint()
    assert NamespaceMap.build(include=["crm"]).fingerprint() != base
    assert NamespaceMap.build(include=["shop"], exclude=["shop.users"]).fingerprint() != base
    assert NamespaceMap.build(include=["shop"], rename=["shop=store"]).fingerprint() != base
