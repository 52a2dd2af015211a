"""SecantusDB servers as child processes, for the demo and the test suite.

SecantusDB speaks the MongoDB wire protocol (with oplog, change streams and
transactions) over WiredTiger. It is GPL-2.0, so it is only an optional
dependency (`mongoferry[demo]` / `[test]`) and is imported by nobody: we run it
as `python -m secantus` in its own process, which is also what lets tests
SIGKILL and restart it on the same data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from pymongo import MongoClient
from pymongo.errors import PyMongoError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """One SecantusDB process bound to 127.0.0.1 with its own storage directory."""

    def __init__(self, storage: Path, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.storage = storage
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = storage.parent / f"{storage.name}.log"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 30.0) -> EmbeddedServer:
        self.storage.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
               "--storage-path", str(self.storage), "--log-level", "WARNING", *self.extra_args]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"SecantusDB exited with {self.proc.returncode}; see {self.log_path}")
            try:
                c: MongoClient[dict[str, object]]
                with MongoClient(self.uri, serverSelectionTimeoutMS=500) as c:
                    c.admin.command("ping")
                return
            except PyMongoError:
                time.sleep(0.1)
        raise RuntimeError(f"SecantusDB on port {self.port} did not answer within {timeout}s")

    def client(self, **kwargs: object) -> MongoClient[dict[str, object]]:
        return MongoClient(self.uri, **kwargs)  # type: ignore[arg-type]

    def _signal(self, sig: signal.Signals, wait: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies with no chance to flush."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def restart(self, hard: bool = True) -> EmbeddedServer:
        self.kill() if hard else self.terminate()
        return self.start()

    def stop(self) -> None:
        self.terminate()

    def __enter__(self) -> EmbeddedServer:
        return self.start() if self.proc is None else self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_pair(root: Path, extra_args: list[str] | None = None):  # type: ignore[no-untyped-def]
    """Start a source and a destination server under `root`; stop both on exit."""
    src = EmbeddedServer(root / "source", extra_args=extra_args)
    dst = EmbeddedServer(root / "destination", extra_args=extra_args)
    try:
        src.start()
        dst.start()
        yield src, dst
    finally:
        for s in (src, dst):
            with contextlib.suppress(Exception):
                s.stop()


def child_env() -> dict[str, str]:
    """Environment for child processes: unbuffered output, no inherited MONGOFERRY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGOFERRY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
