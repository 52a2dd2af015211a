"""What a job connects to: the source, the destination, and the metadata store of its progress."""

from __future__ import annotations

from dataclasses import dataclass

from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import Client, connect, validate_uri
from mongoferry.infra.config import ConnectionSettings
from mongoferry.state.meta import MetaStore


@dataclass
class Endpoints:
    src: Client
    dst: Client
    meta_client: Client
    meta: MetaStore
    nsmap: NamespaceMap

    def close(self) -> None:
        for c in {id(x): x for x in (self.src, self.dst, self.meta_client)}.values():
            c.close()


def open_endpoints(s: ConnectionSettings) -> Endpoints:
    """Validate everything that can be validated without writing, then connect."""
    src_uri = validate_uri(s.src, "--src")
    dst_uri = validate_uri(s.dst, "--dst")
    meta_uri = validate_uri(s.meta, "--meta") if s.meta else dst_uri
    connect_timeout = s.connect_timeout
    nsmap = NamespaceMap.build(s.include, s.exclude, s.rename, meta_db=s.meta_db)
    src = connect(src_uri, "source", connect_timeout)
    try:
        dst = connect(dst_uri, "destination", connect_timeout)
    except Exception:
        src.close()
        raise
    meta_client = dst if meta_uri == dst_uri else connect(meta_uri, "metadata server", connect_timeout)
    return Endpoints(src, dst, meta_client, MetaStore(meta_client, s.meta_db), nsmap)
