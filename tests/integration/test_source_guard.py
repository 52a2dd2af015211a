"""--max-source-latency against a real sync started through the CLI: the copy and the events wait
while the source is slower than asked, progress and metrics say why, and a new limit posted while
running lets them go on, with nothing lost."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx

from mongoferry.dev.embedded import EmbeddedServer, free_port
from tests.integration.conftest import job_progress, start_cli, wait_for


def _holding(port: int) -> str | None:
    throttle = job_progress(port).get("throttle") or {}
    reason: str | None = throttle.get("holdingFor")
    return reason


def test_a_sync_holds_while_the_source_is_too_slow_and_goes_on_under_a_new_limit(
        servers: tuple[EmbeddedServer, EmbeddedServer], tmp_path: Path) -> None:
    src, dst = servers
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "n": i} for i in range(3000)])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # 1 µs: no server answers that fast (SecantusDB reports no opLatencies, so a ping's round trip counts)
    proc = start_cli("sync", "--src", src.uri, "--dst", dst.uri, "--http", f"127.0.0.1:{port}",
                     "--max-source-latency", "0.001", "--log-format", "json", log=tmp_path / "sync.log")
    try:
        wait_for(lambda: _holding(port) == "source-latency", timeout=120)
        time.sleep(2.0)
        throttle = job_progress(port)["throttle"]
        assert throttle["maxSourceLatencyMs"] == 0.001
        assert throttle["sourceLatencyMs"] > 0.001
        assert throttle["throttledSecondsBy"]["source-latency"] > 0
        with dst.client() as c:
            assert c.app.users.count_documents({}) == 0  # held before the first write
        metrics = httpx.get(url + "/metrics", timeout=5).text
        held = re.search(r'mongoferry_throttled_seconds_total\{reason="source-latency"\} ([0-9.e+]+)', metrics)
        assert held is not None and float(held.group(1)) > 0
        assert 'mongoferry_throttle_limit{unit="source_latency_ms"} 0.001' in metrics
        assert "mongoferry_source_latency_ms " in metrics

        reply = httpx.post(url + "/api/v1/throttle", json={"maxSourceLatencyMs": 1000}, timeout=5).json()
        assert reply["success"] and reply["maxSourceLatencyMs"] == 1000
        with src.client() as c:
            c.app.users.insert_one({"_id": "during", "n": -1})
        with dst.client() as c:
            wait_for(lambda: c.app.users.count_documents({}) == 3001, timeout=120)
        assert _holding(port) is None
        assert job_progress(port)["state"] == "RUNNING"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
