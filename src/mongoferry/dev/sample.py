"""A realistic sample data set for the demo and the benchmarks."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId
from pymongo import ASCENDING, DESCENDING, GEOSPHERE

from mongoferry.infra.clients import RAW, Client

CITIES = ["Lisbon", "Oslo", "Lagos", "Lima", "Pune", "Osaka", "Quito", "Perth", "Graz", "Cork"]
TAGS = ["new", "vip", "churn-risk", "beta", "mobile", "web", "b2b", "trial"]


def _customer(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "name": f"customer-{i}",
        "email": f"c{i}@example.com",
        "tier": rng.choice(["free", "pro", "enterprise"]),
        "address": {"city": rng.choice(CITIES), "zip": f"{rng.randint(1000, 99999)}",
                    "geo": {"type": "Point", "coordinates": [rng.uniform(-170, 170), rng.uniform(-80, 80)]}},
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "balance": Decimal128(f"{rng.randint(0, 10**6) / 100:.2f}"),
        "created": dt.datetime(2020, 1, 1) + dt.timedelta(minutes=i),
        "logins": [{"at": dt.datetime(2024, 1, 1) + dt.timedelta(hours=k), "ok": k % 5 != 0}
                   for k in range(rng.randint(0, 4))],
    }


def _order(i: int, rng: random.Random) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [
        {"sku": f"SKU-{rng.randint(1, 500):04d}", "qty": rng.randint(1, 5), "price": rng.randint(100, 9999)}
        for _ in range(rng.randint(1, 4))
    ]
    return {"_id": Int64(10**12 + i), "customer": f"customer-{rng.randint(0, 10**5)}", "lines": lines,
            "total": sum(line["qty"] * line["price"] for line in lines), "status": rng.choice(["new", "paid", "sent"]),
            "at": dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i * 7)}


def _mixed_id(i: int) -> Any:
    kinds: list[Any] = [lambda: i, lambda: Int64(i), lambda: float(i) + 0.5, lambda: f"key-{i}",
             lambda: Binary(uuid.UUID(int=i).bytes, 4), lambda: {"region": i % 7, "n": i}]
    return kinds[i % len(kinds)]()


def generate(kind: str, n: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(n):
        if kind == "customers":
            yield _customer(i, rng)
        elif kind == "orders":
            yield _order(i, rng)
        elif kind == "products":
            yield {"_id": f"SKU-{i:04d}", "title": f"Product {i}", "price": rng.randint(100, 9999),
                   "stock": rng.randint(0, 500), "attrs": {"color": rng.choice(["red", "blue", "green"])}}
        elif kind == "devices":
            yield {"_id": _mixed_id(i), "model": rng.choice(["a1", "b2", "c3"]), "fw": [1, rng.randint(0, 9)]}
        elif kind == "events":
            yield {"_id": ObjectId(), "kind": rng.choice(["click", "view", "buy"]), "n": i}


def _insert(client: Client, ns: str, docs: Iterator[dict[str, Any]], loaded: Callable[[int], None],
            batch: int = 2000) -> int:
    db, _, coll = ns.partition(".")
    buf: list[dict[str, Any]] = []
    n = 0
    for d in docs:
        buf.append(d)
        if len(buf) >= batch:
            client[db][coll].insert_many(buf, ordered=False)
            n += len(buf)
            loaded(len(buf))
            buf = []
    if buf:
        client[db][coll].insert_many(buf, ordered=False)
        n += len(buf)
        loaded(len(buf))
    return n


def sample_size(total_docs: int) -> int:
    """How many documents load_sample inserts for `total_docs`."""
    return sum(max(10, int(total_docs * frac)) for frac in SHARE.values())


SHARE = {"shop.customers": 0.35, "shop.orders": 0.45, "shop.products": 0.02, "iot.devices": 0.13,
         "iot.events": 0.05}


def load_sample(client: Client, total_docs: int = 200_000,
                loaded: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Several databases: nested docs, arrays, mixed _id types, indexes, a view, a capped collection.
    `loaded(n)` is told after every batch, for a progress display."""
    shop, iot = client["shop"], client["iot"]
    iot.create_collection("events", capped=True, size=8 * 1024 * 1024, max=20_000)
    shop.create_collection("products", validator={"$jsonSchema": {"bsonType": "object",
                                                                   "required": ["title", "price"]}})
    counts: dict[str, int] = {}
    for ns, frac in SHARE.items():
        kind = ns.partition(".")[2]
        counts[ns] = _insert(client, ns, generate(kind, max(10, int(total_docs * frac))), loaded)
    shop.customers.create_index([("email", ASCENDING)], unique=True, name="email_unique")
    shop.customers.create_index([("address.city", ASCENDING), ("created", DESCENDING)])
    shop.customers.create_index([("address.geo", GEOSPHERE)])
    shop.customers.create_index("tags", sparse=True)
    shop.orders.create_index([("customer", ASCENDING), ("at", DESCENDING)],
                             partialFilterExpression={"status": {"$in": ["new", "paid"]}})
    shop.orders.create_index("at", expireAfterSeconds=10 * 365 * 86400)
    shop.products.create_index("title", collation={"locale": "en", "strength": 2})
    shop.create_collection("big_spenders", viewOn="customers",
                           pipeline=[{"$match": {"tier": "enterprise"}}, {"$project": {"name": 1, "email": 1}}])
    return counts


def digest(client: Client, ns: str) -> tuple[int, str]:
    """Count and a digest of every document's bytes, in _id order: equal digests = identical data."""
    db, _, coll = ns.partition(".")
    h = hashlib.sha256()
    n = 0
    for d in client[db].get_collection(coll, codec_options=RAW).find().sort("_id", 1):
        h.update(d.raw)  # type: ignore[attr-defined]
        n += 1
    return n, h.hexdigest()[:16]
