"""Throttling: the rate a throttled copy achieves against the one asked for, and what a concurrent
reader on the source feels, all measured in the same run.

(a) ceiling: `mongoferry copy` with no limit (its steady rate, measured like the others);
(b) `--max-docs-per-s` at a quarter and at half of (a), and at a fixed 1,000/s: the achieved rate
    over the middle of the copy (destination counts sampled after the first 10 % of the time and
    before the last; batches of 200, so a count's step is small), as a ratio to the one requested
    (target: within 10 %);
(c) a reader on the source (`find_one` by a random `_id`, one at a time) alone, under the
    unthrottled copy, under the quarter-rate copy and under `--max-source-latency` set to three
    times the idle latency: median and 99th percentile.
Not a test: `python bench/throttle.py`.
"""

from __future__ import annotations

import sys

# bench/copy.py would shadow the standard library's `copy`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from mongoferry.dev.embedded import EmbeddedServer, child_env

Client = MongoClient[dict[str, Any]]


def seed(uri: str, n: int) -> None:
    with Client(uri) as c:
        c.bench.docs.drop()
        for start in range(0, n, 2000):
            c.bench.docs.insert_many([{"_id": i, "user": f"user-{i % 5000}", "pad": "x" * 900}
                                      for i in range(start, min(n, start + 2000))])


@dataclass
class Reader:
    """find_one by a random _id, one at a time, latencies in ms."""

    uri: str
    n: int
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, seconds: float) -> tuple[float, float]:
        self.latencies, self.stop = [], threading.Event()
        thread = threading.Thread(target=self._loop)
        thread.start()
        time.sleep(seconds)
        self.stop.set()
        thread.join()
        return summary(self.latencies)

    def _loop(self) -> None:
        rng = random.Random(7)
        with Client(self.uri) as c:
            coll = c.bench.docs
            while not self.stop.is_set():
                started = time.perf_counter()
                coll.find_one({"_id": rng.randrange(self.n)})
                self.latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.005)  # an application's pace, not a second load generator


def summary(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def throttled_copy(src: str, dst: str, options: list[str], seconds: float,
                   reader: Reader | None = None) -> tuple[float, tuple[float, float] | None]:
    """Run a copy for `seconds` (or until done); its steady rate, and the reader's latencies meanwhile."""
    with Client(dst) as d:
        d.drop_database("bench_copy")
        d.drop_database("mongoferry_meta")
        proc = subprocess.Popen([sys.executable, "-m", "mongoferry", "copy", "--src", src, "--dst", dst,
                                 "--include", "bench", "--rename", "bench=bench_copy", "--batch-size", "200",
                                 *options,
                                 "--log-format", "text", "--log-level", "error"],
                                env=child_env(), stdout=subprocess.DEVNULL)
        coll = d.bench_copy.docs
        while coll.estimated_document_count() == 0 and proc.poll() is None:
            time.sleep(0.05)  # the copy has begun writing: from here on it is the steady rate
        started = time.monotonic()
        latencies = None
        measured: list[tuple[float, float]] = []
        reading = threading.Thread(target=lambda: measured.append(reader.run(seconds * 0.8))) if reader else None
        if reading is not None:
            reading.start()  # alongside the copy, while its rate is measured
        samples: list[tuple[float, int]] = []
        while time.monotonic() - started < seconds and proc.poll() is None:
            samples.append((time.monotonic(), coll.estimated_document_count()))
            time.sleep(0.25)
        if reading is not None:
            reading.join()
            latencies = measured[0] if measured else None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    window = samples[len(samples) // 10: len(samples) - len(samples) // 10 or None]
    (t0, c0), (t1, c1) = window[0], window[-1]
    return (c1 - c0) / (t1 - t0), latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mongoferry-bench-"))
    src = EmbeddedServer(root / "src").start()
    dst = EmbeddedServer(root / "dst").start()
    try:
        seed(src.uri, args.docs)
        reader = Reader(src.uri, args.docs)
        idle = reader.run(5.0)
        ceiling, under_full = throttled_copy(src.uri, dst.uri, [], args.seconds, Reader(src.uri, args.docs))
        print(f"{args.docs:,} documents of ~1 KB; each run {args.seconds:.0f} s")
        print(f"(a) unthrottled copy                 {ceiling:>9,.0f} docs/s  1.00")
        quarter_latency = None
        for asked in (round(ceiling / 4), round(ceiling / 2), 1000):
            got, lat = throttled_copy(src.uri, dst.uri, ["--max-docs-per-s", str(asked)], args.seconds,
                                      Reader(src.uri, args.docs) if asked == round(ceiling / 4) else None)
            quarter_latency = lat or quarter_latency
            print(f"(b) --max-docs-per-s {asked:<6}          {got:>9,.0f} docs/s  {got / asked:.2f} of requested")
        guard_ms = 3 * idle[0]
        guarded, under_guard = throttled_copy(src.uri, dst.uri, ["--max-source-latency", f"{guard_ms:.3f}"],
                                              args.seconds, Reader(src.uri, args.docs))
        print(f"(b) --max-source-latency {guard_ms:.2f} ms    {guarded:>9,.0f} docs/s  {guarded / ceiling:.2f} of (a)")
        print("(c) a reader's find_one latency, median / p99 (ms):")
        for name, lat in (("alone", idle), ("unthrottled copy", under_full),
                          (f"copy at {round(ceiling / 4)}/s", quarter_latency),
                          (f"copy under --max-source-latency {guard_ms:.2f}", under_guard)):
            if lat is not None:
                print(f"    {name:<42} {lat[0]:6.2f} / {lat[1]:6.2f}")
    finally:
        src.stop()
        dst.stop()


if __name__ == "__main__":
    main()
