"""`mongoferry demo`: embedded servers, a realistic sample, a copy with progress, a summary."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from mongoferry.config import CopySettings
from mongoferry.copy_job import run_copy
from mongoferry.embedded import embedded_pair
from mongoferry.errors import EXIT_OK
from mongoferry.sample import load_sample


def run_demo(docs: int = 200_000, workers: int = 4, keep: bool = False, log_format: str = "auto") -> int:
    console = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="mongoferry-demo-"))
    try:
        with embedded_pair(root) as (src, dst):
            console.print(f"[bold]source[/] {src.uri}   [bold]destination[/] {dst.uri}")
            started = time.monotonic()
            with src.client() as c:
                counts = load_sample(c, docs)
            console.print(f"loaded {sum(counts.values()):,} documents into the source "
                          f"in {time.monotonic() - started:.1f}s: "
                          + ", ".join(f"{ns} {n:,}" for ns, n in counts.items()))
            console.print(f"[bold]$ mongoferry copy --src {src.uri} --dst {dst.uri} --workers {workers}[/]")
            settings = CopySettings.model_validate({"src": src.uri, "dst": dst.uri, "workers": workers,
                                                     "log_format": log_format})
            started = time.monotonic()
            code = run_copy(settings)
            elapsed = time.monotonic() - started
            console.print(f"copy finished with exit code {code} in {elapsed:.1f}s "
                          f"({sum(counts.values()) / elapsed:,.0f} docs/s)")
            return code if code != EXIT_OK else EXIT_OK
    finally:
        if keep:
            console.print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
