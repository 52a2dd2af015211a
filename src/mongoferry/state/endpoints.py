"""What a job connects to: the source, the destination, and the metadata store of its progress."""

from __future__ import annotations

from dataclasses import dataclass

from mongoferry.core.errors import UsageError
from mongoferry.core.identity import DeploymentIdentity, same_deployment
from mongoferry.core.namespaces import NamespaceMap
from mongoferry.infra.clients import Client, connect, deployment_identity, driver_errors, validate_uri
from mongoferry.infra.config import ConnectionSettings
from mongoferry.state.meta import MetaStore


@dataclass
class Endpoints:
    src: Client
    dst: Client
    meta_client: Client
    meta: MetaStore
    nsmap: NamespaceMap
    # Set when --src and --dst reach one deployment, whatever their spelling.
    same_as_source: DeploymentIdentity | None = None

    def refuse_same_deployment(self, command: str) -> None:
        """Every command that writes to --dst calls this before its first write."""
        if self.same_as_source is not None:
            raise UsageError(
                f"--src and --dst are the same deployment ({self.same_as_source.describe()}): {command} would "
                "write onto its own source",
                "give --dst another deployment; nothing was written")

    def close(self) -> None:
        for c in {id(x): x for x in (self.src, self.dst, self.meta_client)}.values():
            c.close()


def open_endpoints(s: ConnectionSettings, kind: str = "job") -> Endpoints:
    """Validate everything that can be validated without writing, then connect."""
    src_uri = validate_uri(s.src, "--src")
    dst_uri = validate_uri(s.dst, "--dst")
    meta_uri = validate_uri(s.meta, "--meta") if s.meta else dst_uri
    connect_timeout = s.connect_timeout
    nsmap = NamespaceMap.build(s.include, s.exclude, s.rename, meta_db=s.meta_db, filters=s.filter)
    src = connect(src_uri, "source", connect_timeout)
    try:
        dst = connect(dst_uri, "destination", connect_timeout)
    except Exception:
        src.close()
        raise
    try:
        meta_client = dst if meta_uri == dst_uri else connect(meta_uri, "metadata server", connect_timeout)
        with driver_errors("asking the servers who they are"):
            src_id, dst_id = deployment_identity(src), deployment_identity(dst)
    except Exception:
        src.close()
        dst.close()
        raise
    ends = Endpoints(src, dst, meta_client, MetaStore(meta_client, s.meta_db, s.job or kind), nsmap)
    ends.same_as_source = src_id if same_deployment(src_id, dst_id) else None
    return ends
