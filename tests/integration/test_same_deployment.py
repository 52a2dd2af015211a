"""A destination that is the source deployment, whatever its spelling, is refused before any write."""

from __future__ import annotations

import pytest

from mongoferry.dev.embedded import EmbeddedServer
from tests.integration.conftest import run_cli, user_namespaces


def spellings(server: EmbeddedServer) -> list[str]:
    return [server.uri, f"mongodb://localhost:{server.port}/?directConnection=true&appname=other"]


@pytest.mark.parametrize("command", [["copy", "--drop-dst"], ["copy"], ["sync", "--drop-dst", "--http", "off"]])
def test_writing_onto_the_source_is_refused_and_the_source_is_untouched(
        servers: tuple[EmbeddedServer, EmbeddedServer], command: list[str]) -> None:
    src, _ = servers
    with src.client() as c:
        c.t.c.insert_many([{"_id": i} for i in range(100)])
    before = user_namespaces(src)
    for dst_uri in spellings(src):
        r = run_cli(command[0], "--src", src.uri, "--dst", dst_uri, *command[1:], "--connect-timeout", "5")
        assert r.code == 2, r.text
        assert "are the same deployment" in r.err and "nothing was written" in r.err
        assert "--drop-dst" not in r.err  # never suggests the flag that would destroy the source
        assert len([line for line in r.err.splitlines() if line.startswith("error:")]) == 1
    with src.client() as c:
        assert c.t.c.count_documents({}) == 100
        assert "mongoferry_meta" not in c.list_database_names()
    assert user_namespaces(src) == before


def test_verify_of_a_deployment_against_itself_says_so(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, _ = servers
    with src.client() as c:
        c.t.c.insert_many([{"_id": i} for i in range(10)])
        c.t.copy.insert_many([{"_id": i} for i in range(10)])
    r = run_cli("verify", "--check-only", "--src", src.uri, "--dst", spellings(src)[1])
    assert r.code == 2, r.text
    assert "same deployment" in r.err and "compared with itself" in r.err
    # Two namespaces of one deployment can still be compared.
    r = run_cli("verify", "--check-only", "--src", src.uri, "--dst", spellings(src)[1],
                "--src-namespace", "t.c", "--dst-namespace", "t.copy")
    assert r.code == 0, r.text
    assert "IDENTICAL" in r.out


def test_two_servers_are_not_taken_for_one(servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    src, dst = servers
    with src.client() as c:
        c.t.c.insert_one({"_id": 1})
    r = run_cli("copy", "--src", src.uri, "--dst", f"mongodb://localhost:{dst.port}/?directConnection=true")
    assert r.code == 0, r.text
