"""The copier writes only through its copy sink: every document, namespace and index it writes
passes through the sink it is given (the seam an archive sink for backups plugs into)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bson.raw_bson import RawBSONDocument

from mongoferry.core.model import CollectionSpec
from mongoferry.dev.embedded import EmbeddedServer
from mongoferry.infra.config import CopySettings
from mongoferry.infra.progress import make_reporter
from mongoferry.pipeline.copier import Copier
from mongoferry.sinks.mongo import MongoWriter
from mongoferry.state.endpoints import open_endpoints
from tests.integration.conftest import raw_docs, user_namespaces


class RecordingSink:
    """A copy sink that records every call and passes it on to MongoDB."""

    def __init__(self, inner: MongoWriter) -> None:
        self.inner = inner
        self.docs: Counter[str] = Counter()
        self.created: list[str] = []
        self.indexed: dict[str, list[str]] = {}

    def create(self, dst_ns: str, spec: CollectionSpec, view_on: str | None = None) -> None:
        self.created.append(dst_ns)
        self.inner.create(dst_ns, spec, view_on)

    def drop(self, dst_ns: str) -> None:
        self.inner.drop(dst_ns)

    def insert_copied(self, dst_ns: str, docs: list[RawBSONDocument]) -> None:
        self.docs[dst_ns] += len(docs)
        self.inner.insert_copied(dst_ns, docs)

    def create_indexes(self, dst_ns: str, specs: Sequence[dict[str, Any]]) -> None:
        self.indexed[dst_ns] = [s["name"] for s in specs]
        self.inner.create_indexes(dst_ns, specs)


def test_every_write_of_a_copy_goes_through_its_sink(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        c.shop.users.insert_many([{"_id": i, "name": f"u{i}", "tags": ["a"] * (i % 3)} for i in range(2500)])
        c.shop.users.create_index("name", name="by_name")
        c.shop.orders.insert_many([{"_id": f"o{i}", "n": i} for i in range(300)])
        c.shop.create_collection("named", viewOn="users", pipeline=[{"$project": {"name": 1}}])
    settings = CopySettings.model_validate({"src": src.uri, "dst": dst.uri, "batch_size": 400, "workers": 2})
    ends = open_endpoints(settings, "copy")
    try:
        sink = RecordingSink(MongoWriter(ends.dst))
        copier = Copier(settings, ends.src, ends.dst, ends.meta, ends.nsmap, make_reporter("json"),
                        threading.Event(), sink=sink)
        copier.validate()
        copier.initialise()
        assert copier.copy()
    finally:
        ends.close()
    assert sink.docs == {"shop.users": 2500, "shop.orders": 300}
    assert set(sink.created) >= {"shop.users", "shop.orders", "shop.named"}
    assert sink.indexed["shop.users"] == ["by_name"]
    for ns in ("shop.users", "shop.orders"):
        assert raw_docs(dst, ns) == raw_docs(src, ns)
    assert {ns for ns in user_namespaces(dst) if not ns.startswith("mongoferry_meta.")} == user_namespaces(src)
