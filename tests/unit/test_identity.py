"""Which deployment a connection reaches: the rule that refuses copying a deployment onto itself."""

from __future__ import annotations

from bson import ObjectId

from mongoferry.core.identity import DeploymentIdentity, identity_from_hello, same_deployment

P1, P2 = ObjectId(), ObjectId()


def hello(process: ObjectId, **extra: object) -> dict[str, object]:
    return {"isWritablePrimary": True, "topologyVersion": {"processId": process, "counter": 0}, **extra}


def test_one_process_reached_under_two_spellings_is_one_deployment() -> None:
    assert same_deployment(identity_from_hello(hello(P1)), identity_from_hello(hello(P1)))


def test_two_standalone_processes_are_two_deployments() -> None:
    assert not same_deployment(identity_from_hello(hello(P1)), identity_from_hello(hello(P2)))


def test_two_members_of_one_replica_set_are_one_deployment() -> None:
    members = {"setName": "rs0", "hosts": ["a.example:27017", "B.example:27017"], "passives": ["c.example:27017"]}
    primary = identity_from_hello(hello(P1, **members))
    secondary = identity_from_hello(hello(P2, **members))
    assert same_deployment(primary, secondary)
    assert "rs0" in primary.describe() and "b.example:27017" in primary.describe()


def test_two_replica_sets_with_the_same_common_name_are_two_deployments() -> None:
    old = identity_from_hello(hello(P1, setName="rs0", hosts=["old-1:27017", "old-2:27017"]))
    new = identity_from_hello(hello(P2, setName="rs0", hosts=["new-1:27017", "new-2:27017"]))
    assert not same_deployment(old, new)


def test_a_replica_set_or_cluster_id_proves_one_deployment_without_hosts() -> None:
    rs_id = ObjectId()
    a = identity_from_hello(hello(P1, msg="isdbgrid"), deployment_id=rs_id)
    b = identity_from_hello(hello(P2, msg="isdbgrid"), deployment_id=rs_id)
    assert same_deployment(a, b)
    assert not same_deployment(a, identity_from_hello(hello(P2), deployment_id=ObjectId()))


def test_nothing_known_is_never_taken_for_the_same_deployment() -> None:
    assert not same_deployment(DeploymentIdentity(), DeploymentIdentity())
