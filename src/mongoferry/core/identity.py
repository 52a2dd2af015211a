"""Which deployment a connection reaches, told from what the servers say about themselves.

Two URIs can name one deployment in many spellings (`localhost` and `127.0.0.1`, another member
of the same replica set, a mongos of the same cluster), so the text of a URI proves nothing. The
servers' own answers do: a process id (`hello.topologyVersion.processId`, one per server process),
a replica set's id (`replSetGetConfig.settings.replicaSetId`) or a sharded cluster's id
(`config.version.clusterId`), and a replica set's name together with its member list as the
members themselves report it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeploymentIdentity:
    process_id: str | None = None  # this server process
    deployment_id: str | None = None  # replica set or sharded cluster id, where readable
    set_name: str | None = None
    hosts: frozenset[str] = field(default_factory=frozenset)  # members as the set reports them

    def describe(self) -> str:
        if self.set_name and self.hosts:
            return f"replica set {self.set_name} ({', '.join(sorted(self.hosts))})"
        if self.deployment_id:
            return f"deployment {self.deployment_id}"
        return f"server process {self.process_id}" if self.process_id else "an unidentified server"


def identity_from_hello(hello: Mapping[str, Any], deployment_id: Any = None) -> DeploymentIdentity:
    topology = hello.get("topologyVersion")
    process = topology.get("processId") if isinstance(topology, Mapping) else None
    members = [*hello.get("hosts", []), *hello.get("passives", []), *hello.get("arbiters", [])]
    return DeploymentIdentity(
        process_id=str(process) if process is not None else None,
        deployment_id=str(deployment_id) if deployment_id is not None else None,
        set_name=str(hello["setName"]) if hello.get("setName") else None,
        hosts=frozenset(str(h).lower() for h in members),
    )


def same_deployment(a: DeploymentIdentity, b: DeploymentIdentity) -> bool:
    """True when both identities certainly name one deployment (any one proof is enough)."""
    if a.process_id is not None and a.process_id == b.process_id:
        return True
    if a.deployment_id is not None and a.deployment_id == b.deployment_id:
        return True
    # One replica set: same name, and its members (as the members list them) overlap.
    return a.set_name is not None and a.set_name == b.set_name and bool(a.hosts & b.hosts)
