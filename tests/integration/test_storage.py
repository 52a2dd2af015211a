"""One contract for every backup storage: a local directory and a real S3-compatible server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mongoferry.core.errors import AuthError, ConnectError, UsageError
from mongoferry.infra.storage import Prefixed, Storage, open_storage
from tests.integration.conftest import S3Server


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "backup"), "--to", create=True)
    request.getfixturevalue("s3")
    return open_storage("s3://backups/team/prod", "--to")


def test_put_get_list_delete(storage: Storage) -> None:
    assert storage.get("manifest.json") is None
    assert storage.list() == []
    storage.put("b/2.bson", b"two")
    storage.put("a/1.bson", b"one")
    storage.put("a/sub/3.bson", b"three")
    assert storage.get("a/1.bson") == b"one"
    assert storage.list() == ["a/1.bson", "a/sub/3.bson", "b/2.bson"]
    assert storage.list("a/") == ["a/1.bson", "a/sub/3.bson"]
    storage.put("a/1.bson", b"replaced")
    assert storage.get("a/1.bson") == b"replaced"
    storage.delete("a/1.bson")
    storage.delete("a/1.bson")  # deleting what is gone is not an error
    assert storage.get("a/1.bson") is None
    assert storage.list() == ["a/sub/3.bson", "b/2.bson"]


def test_files_go_in_and_out_whole_and_the_spool_is_never_listed(storage: Storage, tmp_path: Path) -> None:
    big = storage.spool() / "big.part"
    data = bytes(range(256)) * 40_000  # 10 MB: a multipart upload on S3
    big.write_bytes(data)
    storage.put_file("snapshots/x/db/c.bson", big)
    assert not big.exists()  # consumed
    assert storage.list() == ["snapshots/x/db/c.bson"]
    out = tmp_path / "out.bson"
    storage.get_file("snapshots/x/db/c.bson", out)
    assert out.read_bytes() == data


def test_a_reader_sees_a_whole_object_or_none(storage: Storage) -> None:
    """Atomic puts: while one writer replaces an object again and again, every read is one whole version."""
    versions = [bytes([i]) * 300_000 for i in range(5)]
    storage.put("manifest.json", versions[0])
    done = threading.Event()
    seen: list[bytes | None] = []

    def read() -> None:
        while not done.is_set():
            seen.append(storage.get("manifest.json"))

    reader = threading.Thread(target=read)
    reader.start()
    for v in versions * 3:
        storage.put("manifest.json", v)
    done.set()
    reader.join()
    assert seen and all(s in versions for s in seen)


def test_a_prefix_is_a_storage_of_its_own(storage: Storage) -> None:
    shard = Prefixed(storage, "shard0")
    shard.put("manifest.json", b"{}")
    storage.put("shard1/manifest.json", b"[]")
    assert shard.list() == ["manifest.json"]
    assert shard.get("manifest.json") == b"{}"
    assert storage.list() == ["shard0/manifest.json", "shard1/manifest.json"]


def test_s3_problems_are_one_clear_error(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="bucket 'nope' does not exist"):
        open_storage("s3://nope/x", "--to")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(AuthError, match="refused"):
        open_storage("s3://backups/x", "--to")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(ConnectError, match="cannot reach the S3 endpoint"):
        open_storage("s3://backups/x", "--to")
    with pytest.raises(UsageError, match="names no bucket"):
        open_storage("s3://", "--to")
