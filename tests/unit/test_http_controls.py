"""The throttle API's input, the ETA, the token guard and the dashboard's files (no server)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from mongoferry.core.errors import UsageError
from mongoferry.core.pacing import eta_seconds
from mongoferry.http.server import HttpServer, sync_app, throttle_limits
from mongoferry.pipeline.throttle import Throttle
from mongoferry.state.status import JobStatus


@pytest.mark.parametrize(("body", "expected"), [
    ({"maxDocsPerSecond": 500}, {"maxDocsPerSecond": 500.0}),
    ({"maxDocsPerSecond": 0, "maxBytesPerSecond": 1e6}, {"maxDocsPerSecond": None, "maxBytesPerSecond": 1e6}),
    ({"maxBytesPerSecond": None}, {"maxBytesPerSecond": None}),
    ({"maxSourceLatencyMs": 20, "maxSourceLagSeconds": 0}, {"maxSourceLatencyMs": 20.0, "maxSourceLagSeconds": None}),
])
def test_throttle_limits_accepted(body: dict[str, object], expected: dict[str, float | None]) -> None:
    assert throttle_limits(body) == expected


@pytest.mark.parametrize("body", [None, {}, {"other": 1}, {"maxDocsPerSecond": -1}, {"maxDocsPerSecond": True},
                                  {"maxDocsPerSecond": "fast"}, {"maxBytesPerSecond": float("inf")},
                                  {"maxDocsPerSecond": 10**400}, {"maxSourceLatencyMs": float("nan")}])
def test_throttle_limits_refused_with_a_reason(body: object) -> None:
    assert isinstance(throttle_limits(body), str)


def test_eta_from_the_rate_so_far() -> None:
    assert eta_seconds(250, 1000, 10.0) == 30.0
    assert eta_seconds(0, 1000, 10.0) is None
    assert eta_seconds(1000, 1000, 10.0) == 0.0
    assert eta_seconds(0, 0, 10.0) is None


def test_the_guard_needs_the_token_for_controls_only() -> None:
    throttle = Throttle()
    server = HttpServer(sync_app(JobStatus(), throttle), "127.0.0.1", 0, token="t0k")

    async def talk() -> list[httpx.Response]:
        app: Any = server.server.config.app
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = [await client.get(p) for p in ("/api/v1/progress", "/", "/dashboard.js", "/api/v1/ui")]
            out.append(await client.post("/api/v1/throttle", json={"maxDocsPerSecond": 9}))
            out.append(await client.post("/api/v1/throttle", json={"maxDocsPerSecond": 9},
                                         headers={"Authorization": "Bearer t0k"}))
            return out

    progress, page, script, ui, denied, ok = asyncio.run(talk())
    assert progress.status_code == 200 and script.status_code == 200
    assert page.headers["content-type"].startswith("text/html") and "dashboard.js" in page.text
    expected: dict[str, Any] = {"kind": "sync", "progress": "/api/v1/progress",
                                "controls": ["pause", "resume", "commit", "throttle"], "tokenRequired": True}
    assert ui.json() == expected
    assert denied.status_code == 401
    assert ok.status_code == 200 and throttle.max_docs_per_s == 9


def test_a_public_address_without_a_token_is_refused() -> None:
    with pytest.raises(UsageError, match="without a token"):
        HttpServer(sync_app(JobStatus()), "0.0.0.0", 0, guarded=True)
    HttpServer(sync_app(JobStatus()), "0.0.0.0", 0, token="x", guarded=True)
    HttpServer(sync_app(JobStatus()), "::1", 0, guarded=True)


def test_a_prune_takes_a_documents_limit_only() -> None:
    from mongoferry.http.server import prune_app
    from mongoferry.state.prune_status import PruneStatus

    status = PruneStatus(rate=100.0)

    async def talk() -> list[httpx.Response]:
        app: Any = prune_app(status)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return [await client.post("/api/v1/throttle", json={"maxBytesPerSecond": 5}),
                    await client.post("/api/v1/throttle", json={"maxDocsPerSecond": 40})]

    refused, accepted = asyncio.run(talk())
    assert refused.status_code == 400 and "documents per second only" in refused.json()["error"]
    assert accepted.status_code == 200 and status.rate == 40


def test_every_job_reports_health_and_state_in_one_model() -> None:
    from mongoferry.http.server import prune_app
    from mongoferry.state.prune_status import PruneStatus

    job = JobStatus()
    job.set(state="RUNNING", source_unreachable=True, lag_growing_since=None, last_error="source gone")
    prune = PruneStatus(state="WAITING")

    async def talk(app: Any) -> tuple[dict[str, Any], str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return (await client.get("/healthz")).json(), (await client.get("/metrics")).text

    (job_health, job_metrics), (prune_health, prune_metrics) = (asyncio.run(talk(sync_app(job, kind="split"))),
                                                                asyncio.run(talk(prune_app(prune))))
    assert job_health.keys() == prune_health.keys() == {"ok", "state", "lastError", "uptimeSeconds"}
    assert (job_health["ok"], job_health["state"], job_health["lastError"]) == (False, "SOURCE_UNREACHABLE",
                                                                                 "source gone")
    assert 'mongoferry_state{state="SOURCE_UNREACHABLE"} 1.0' in job_metrics
    assert 'mongoferry_state{state="RUNNING"} 0.0' in job_metrics and "mongoferry_healthy 0.0" in job_metrics
    assert 'mongoferry_job_info{kind="split"' in job_metrics
    assert (prune_health["ok"], prune_health["state"]) == (True, "WAITING")
    assert 'mongoferry_state{state="WAITING"} 1.0' in prune_metrics and "mongoferry_healthy 1.0" in prune_metrics
    assert 'mongoferry_job_info{kind="prune"' in prune_metrics and "mongoferry_prune_rate_limit" in prune_metrics
    job.set(source_unreachable=False)
    assert asyncio.run(talk(sync_app(job)))[0]["ok"] is True
