"""Showing copy progress: a rich bar per namespace on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from mongoferry.core.pacing import eta_seconds

log = logging.getLogger("mongoferry.progress")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@dataclass
class NsProgress:
    src: str
    dst: str
    total_docs: int
    total_bytes: int
    docs: int = 0
    bytes: int = 0
    done: bool = False
    start_docs: int = 0  # copied before this run (a resumed copy): the rate counts this run's only
    moving_since: float | None = None  # monotonic time of its first advance (a queued namespace is not slow)


class Reporter(Protocol):
    def add(self, src: str, dst: str, total_docs: int, total_bytes: int, docs: int = 0, bytes_: int = 0) -> None: ...
    def advance(self, src: str, docs: int, bytes_: int) -> None: ...
    def finish(self, src: str) -> None: ...
    def close(self) -> None: ...


class _Base:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, NsProgress] = {}
        self.started = time.monotonic()

    def add(self, src: str, dst: str, total_docs: int, total_bytes: int, docs: int = 0, bytes_: int = 0) -> None:
        with self.lock:
            self.rows[src] = NsProgress(src, dst, total_docs, total_bytes, docs, bytes_, start_docs=docs)

    def advance(self, src: str, docs: int, bytes_: int) -> None:
        with self.lock:
            r = self.rows[src]
            r.docs += docs
            r.bytes += bytes_
            r.start_docs = min(r.start_docs, r.docs)  # a range read again from its start takes back its count
            if r.moving_since is None:
                r.moving_since = time.monotonic()

    def finish(self, src: str) -> None:
        with self.lock:
            self.rows[src].done = True

    def totals(self) -> tuple[int, int, int, int]:
        with self.lock:
            rows = list(self.rows.values())
        return (sum(r.docs for r in rows), sum(max(r.total_docs, r.docs) for r in rows),
                sum(r.bytes for r in rows), sum(max(r.total_bytes, r.bytes) for r in rows))


class JsonReporter(_Base):
    """Logs one `copy progress` line per namespace that moved, every `interval` seconds."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__()
        self.interval = interval
        self._stop = threading.Event()
        self._last: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def emit(self) -> None:
        with self.lock:
            rows = [NsProgress(**vars(r)) for r in self.rows.values()]
        elapsed = max(time.monotonic() - self.started, 1e-6)
        for r in rows:
            if self._last.get(r.src) == r.docs:
                continue
            self._last[r.src] = r.docs
            log.info("copy progress", extra={"ns": r.src, "dst": r.dst, "docs": r.docs, "totalDocs": r.total_docs,
                                             "bytes": r.bytes, "totalBytes": r.total_bytes, "done": r.done,
                                             "etaSeconds": 0.0 if r.done else None if r.moving_since is None
                                             else eta_seconds(r.docs - r.start_docs, r.total_docs - r.start_docs,
                                                              time.monotonic() - r.moving_since)})
        docs, total, _, _ = self.totals()
        with self.lock:
            resumed = sum(r.start_docs for r in self.rows.values())
        log.info("copy total", extra={"docs": docs, "totalDocs": total, "docsPerSec": round((docs - resumed) / elapsed),
                                      "etaSeconds": eta_seconds(docs - resumed, total - resumed, elapsed)})

    def finish(self, src: str) -> None:
        super().finish(src)
        r = self.rows[src]
        log.info("namespace copied", extra={"ns": src, "dst": r.dst, "docs": r.docs, "bytes": r.bytes})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class RichReporter(_Base):
    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(),
            TextColumn("{task.completed:>10,.0f}/{task.total:,.0f} docs"),
            TextColumn("{task.fields[size]:>9}"),
            TextColumn("{task.fields[rate]:>10}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.total: TaskID | None = None
        self.progress.start()

    def add(self, src: str, dst: str, total_docs: int, total_bytes: int, docs: int = 0, bytes_: int = 0) -> None:
        super().add(src, dst, total_docs, total_bytes, docs, bytes_)
        label = src if src == dst else f"{src} → {dst}"
        self.tasks[src] = self.progress.add_task(label, total=max(total_docs, 1), completed=docs,
                                                 size=human_bytes(bytes_), rate="")
        if len(self.tasks) == 2:  # more than one namespace: a total line, with the whole copy's ETA
            docs, total, _, _ = self.totals()  # started at the resumed count: that jump is not speed
            self.total = self.progress.add_task("all namespaces", total=max(total, docs, 1), completed=docs,
                                                size="", rate="")
        self._update_total()

    def _update_total(self) -> None:
        if self.total is None:
            return
        docs, total, nbytes, _ = self.totals()
        speed = self.progress.tasks[self.total].speed or 0.0
        self.progress.update(self.total, completed=docs, total=max(total, docs, 1), size=human_bytes(nbytes),
                             rate=f"{speed:,.0f}/s" if speed else "")

    def advance(self, src: str, docs: int, bytes_: int) -> None:
        super().advance(src, docs, bytes_)
        r = self.rows[src]
        task = self.progress.tasks[self.tasks[src]]
        speed = task.speed or 0.0
        self.progress.update(self.tasks[src], completed=r.docs, total=max(r.total_docs, r.docs, 1),
                             size=human_bytes(r.bytes), rate=f"{speed:,.0f}/s" if speed else "")
        self._update_total()

    def finish(self, src: str) -> None:
        super().finish(src)
        r = self.rows[src]
        self.progress.update(self.tasks[src], completed=r.docs, total=max(r.docs, 1))
        self._update_total()

    def close(self) -> None:
        self.progress.stop()


class QuietReporter(_Base):
    def close(self) -> None:
        pass


def make_reporter(fmt: str) -> Reporter:
    if fmt == "rich":
        return RichReporter()
    if fmt == "json":
        return JsonReporter()
    return QuietReporter()


def print_summary(rows: list[dict[str, Any]], fmt: str, title: str = "copy summary") -> None:
    """rows: {source, destination, sourceCount, destinationCount}."""
    if fmt == "json":
        for row in rows:
            log.info("summary", extra=row)
        return
    cells = [[row["source"], row["destination"], f"{row['sourceCount']:,}", f"{row['destinationCount']:,}",
              "ok" if row["sourceCount"] == row["destinationCount"] else "differs"] for row in rows]
    headers = ["source", "destination", "source count", "destination count", ""]
    if fmt == "text":  # plain columns, whole names, no box: for logs and pipes
        print(title)
        for line in plain_columns([headers, *cells], right=frozenset({2, 3})):
            print(line)
        return
    table = Table(title=title)
    for col in headers:
        table.add_column(col, justify="right" if "count" in col else "left", overflow="fold")
    for c in cells:
        table.add_row(*c[:4], "[green]ok[/]" if c[4] == "ok" else "[red]differs[/]")
    console = Console()
    if not console.is_terminal:  # no terminal width to respect: never cut a namespace name
        console = Console(width=max(80, sum(max(len(c[i]) for c in [headers, *cells]) + 3 for i in range(5)) + 1))
    console.print(table)


def plain_columns(rows: list[list[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as lines of aligned columns, two spaces apart; `right` columns align right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]
