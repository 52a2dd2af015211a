"""The demos' live view: poll a job's progress, render it, and commit once it has run a while."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from rich.console import Console, RenderableType
from rich.live import Live

RUN_BEFORE_COMMIT_S = 10


class Writer(Protocol):
    stop: threading.Event

    def join(self, timeout: float | None = None) -> None: ...


def follow_and_commit(console: Console, proc: subprocess.Popen[bytes], port: int, writer: Writer,
                      render: Callable[[dict[str, Any]], RenderableType], note: str) -> int:
    """Show the job's progress until it exits; 10 s after it reaches RUNNING, stop the writer and
    ask it to commit (as an operator would at the cutover). The job's exit code."""
    api = f"http://127.0.0.1:{port}/api/v1"
    running_since: float | None = None
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while proc.poll() is None:
                time.sleep(0.5)
                try:
                    p = httpx.get(f"{api}/progress", timeout=2).json()
                except httpx.HTTPError:
                    continue
                live.update(render(p))
                if p["state"] == "RUNNING":
                    running_since = running_since or time.monotonic()
                    if time.monotonic() - running_since > RUN_BEFORE_COMMIT_S and not writer.stop.is_set():
                        writer.stop.set()
                        writer.join()
                        console.print(note)
                        httpx.post(f"{api}/commit", timeout=5)
        return proc.wait()
    finally:
        writer.stop.set()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
