"""Real servers as processes: SecantusDB (MongoDB wire protocol) and mongoferry itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import httpx
import pytest
from bson.raw_bson import RawBSONDocument

from mongoferry.dev.embedded import EmbeddedServer, child_env

RAW = bson.CodecOptions(document_class=RawBSONDocument)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """A fresh source and destination; --sync-on-commit so a SIGKILLed server keeps acknowledged writes."""
    src = EmbeddedServer(tmp_path / "src", extra_args=["--sync-on-commit"]).start()
    dst = EmbeddedServer(tmp_path / "dst", extra_args=["--sync-on-commit"]).start()
    yield src, dst
    src.stop()
    dst.stop()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server that requires SCRAM authentication: user `admin`, password `s3cret-Pw!`."""
    s = EmbeddedServer(tmp_path / "auth").start()
    with s.client() as c:
        c.admin.command("createUser", "admin", pwd=PASSWORD, roles=["root"])
    s.extra_args = ["--auth"]
    s.restart(hard=False)
    yield s
    s.stop()


PASSWORD = "s3cret-Pw!"


def auth_uri(server: EmbeddedServer, password: str = PASSWORD) -> str:
    return f"mongodb://admin:{password}@127.0.0.1:{server.port}/?directConnection=true&authSource=admin"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.err.splitlines() if line.startswith("{")]


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "mongoferry", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None) -> Result:
    full_env = child_env()
    full_env.update(env or {})
    p = subprocess.run(cli_args(*args), capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)
    return Result(p.returncode, p.stdout, p.stderr)


def start_cli(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    full_env = child_env()
    full_env.update(env or {})
    if log is None:
        return subprocess.Popen(cli_args(*args), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=full_env)
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cli_args(*args), stdout=out, stderr=subprocess.STDOUT, env=full_env)


def raw_docs(server: EmbeddedServer, ns: str) -> dict[bytes, bytes]:
    """Every document of `ns` as raw bytes, keyed by the raw bytes of its _id element."""
    db, _, coll = ns.partition(".")
    with server.client() as c:
        out: dict[bytes, bytes] = {}
        for doc in c[db].get_collection(coll, codec_options=RAW).find():
            out[bson.encode({"_id": doc["_id"]})] = doc.raw
        return out


def user_namespaces(server: EmbeddedServer) -> set[str]:
    with server.client() as c:
        return {f"{db}.{name}" for db in c.list_database_names() if db not in ("admin", "local", "config")
                for name in c[db].list_collection_names()}


def job_progress(port: int) -> dict[str, Any]:
    """A running job's GET /api/v1/progress, or {} while its HTTP server is not up (yet, or any more)."""
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/api/v1/progress", timeout=5).json())
    except httpx.HTTPError:
        return {}


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def base_env() -> dict[str, str]:
    return {"PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "")}


S3S_FS = os.environ.get("MONGOFERRY_S3S_FS") or str(Path.home() / ".cache/mongoferry/s3s-fs-0.14.1/bin/s3s-fs")
S3_KEY, S3_SECRET = "mongoferry-test", "s3-Secret-Key!"


@dataclass
class S3Server:
    """s3s-fs, a real S3-compatible server (signatures checked, data on disk), as a process."""

    endpoint: str
    proc: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_REGION": "us-east-1"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name="us-east-1")


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    from mongoferry.dev.embedded import free_port

    if not Path(S3S_FS).is_file():
        raise RuntimeError(f"{S3S_FS} is missing: `make s3` builds it (make test does)")
    root = tmp_path / "s3"
    root.mkdir()
    port = free_port()
    with (tmp_path / "s3.log").open("ab") as log:
        proc = subprocess.Popen([S3S_FS, "--host", "127.0.0.1", "--port", str(port), "--access-key", S3_KEY,
                                 "--secret-key", S3_SECRET, str(root)], stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)  # for in-process storage code; the CLI gets server.env()
    deadline = time.monotonic() + 30
    while True:
        try:
            server.client().create_bucket(Bucket="backups")
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    yield server
    proc.terminate()
    proc.wait(timeout=10)
