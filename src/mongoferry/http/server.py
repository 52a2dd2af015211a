"""HTTP status and control of a running job (starlette + uvicorn, in a thread): progress, the
controls, health, metrics and the dashboard page (health and the shared metrics from state/health).

The controls (every POST) are as safe as the address: on a loopback address they are open, as
before; bound anywhere else they need the token given with --http-token (a job refuses to start
without one), sent as `Authorization: Bearer TOKEN` or `X-Mongoferry-Token: TOKEN`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mongoferry.core.errors import UsageError
from mongoferry.http.dashboard import dashboard_routes
from mongoferry.pipeline.throttle import Throttle
from mongoferry.state.health import Observed, job_registry
from mongoferry.state.prune_status import PruneCollector, PruneStatus
from mongoferry.state.status import JobStatus, StatusCollector

log = logging.getLogger("mongoferry.http")


class Controlled(Observed, Protocol):
    def set(self, **fields: Any) -> None: ...


def observed_routes(status: Observed, registry: CollectorRegistry, kind: str, controls: list[str]) -> list[Route]:
    """What every job's HTTP app serves, the verifier's too: health, metrics and the dashboard."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse(status.health().to_json())

    async def metrics(request: Request) -> Response:
        # in a worker thread: a collector may read a database (the verifier's)
        return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
            *dashboard_routes(kind, controls)]


def common_routes(status: Controlled, registry: CollectorRegistry, kind: str, controls: list[str]) -> list[Route]:
    """What every job with controls has: resume, and what every job serves."""

    async def resume(request: Request) -> JSONResponse:
        status.set(paused=False)
        return JSONResponse({"success": True})

    return [Route("/api/v1/resume", resume, methods=["POST"]), *observed_routes(status, registry, kind, controls)]


LIMIT_KEYS = ("maxDocsPerSecond", "maxBytesPerSecond", "maxSourceLatencyMs", "maxSourceLagSeconds")


def throttle_limits(body: Any) -> dict[str, float | None] | str:
    """The limits a POST /api/v1/throttle asks for (any of LIMIT_KEYS; 0 or null: no limit), only
    those it names, or what is wrong with it."""
    if not isinstance(body, dict) or not set(LIMIT_KEYS) & body.keys():
        return ('send any of ' + ", ".join(f'"{k}": N' for k in LIMIT_KEYS) + " (0 or null: no limit)")
    out: dict[str, float | None] = {}
    for key in LIMIT_KEYS:
        if key not in body:
            continue
        value = body[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 <= value <= 1e15 or not math.isfinite(value)):
            return f"{key} must be a number >= 0 (0 or null: no limit), not {json.dumps(value)}"
        out[key] = float(value) or None if value is not None else None
    return out


async def requested_limits(request: Request) -> dict[str, float | None] | JSONResponse:
    """The limits a POST /api/v1/throttle asks for, or the 400 answer saying why not."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    limits = throttle_limits(body)
    if isinstance(limits, str):
        return JSONResponse({"success": False, "error": limits}, 400)
    return limits


def throttle_route(throttle: Throttle) -> Route:
    """GET the job's limits and time spent throttled; POST new limits (they apply to the next batch)."""

    async def handle(request: Request) -> JSONResponse:
        if request.method == "POST":
            asked = await requested_limits(request)
            if isinstance(asked, JSONResponse):
                return asked
            throttle.set_limits(asked.get("maxDocsPerSecond", throttle.max_docs_per_s),
                                asked.get("maxBytesPerSecond", throttle.max_bytes_per_s))
            throttle.set_source_limits(asked.get("maxSourceLatencyMs", throttle.max_source_latency_ms),
                                       asked.get("maxSourceLagSeconds", throttle.max_source_lag_s))
            log.info("throttle changed", extra=throttle.describe())
            return JSONResponse({"success": True, **throttle.describe()})
        return JSONResponse(throttle.describe())

    return Route("/api/v1/throttle", handle, methods=["GET", "POST"])


class ThrottleCollector(Collector):
    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    def collect(self) -> Iterator[Any]:
        limit = GaugeMetricFamily("mongoferry_throttle_limit", "The current limit per second (0: none)",
                                  labels=["unit"])
        t = self.throttle
        limit.add_metric(["docs"], t.max_docs_per_s or 0.0)
        limit.add_metric(["bytes"], t.max_bytes_per_s or 0.0)
        limit.add_metric(["source_latency_ms"], t.max_source_latency_ms or 0.0)
        limit.add_metric(["source_lag_seconds"], t.max_source_lag_s or 0.0)
        yield limit
        waited = CounterMetricFamily("mongoferry_throttled_seconds", "Seconds spent waiting for the throttle, by "
                                     "reason (rate, source-latency, replication-lag)", labels=["reason"])
        for reason, seconds in t.waited_s.items():
            waited.add_metric([reason], seconds)
        yield waited
        health = t.health
        if health is not None and health.latency_ms is not None:
            yield GaugeMetricFamily("mongoferry_source_latency_ms", "The source's mean operation latency at the "
                                    "last sample (serverStatus opLatencies, or a ping's round trip)",
                                    value=health.latency_ms)


def sync_app(status: JobStatus, throttle: Throttle | None = None, kind: str = "sync") -> Starlette:
    throttle = throttle or Throttle()
    registry = job_registry(status, kind, StatusCollector(status), ThrottleCollector(throttle))

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse({**status.snapshot(), "throttle": throttle.describe()})

    async def pause(request: Request) -> JSONResponse:
        if status.state in ("COMMITTING", "COMMITTED"):
            return JSONResponse({"success": False, "error": f"cannot pause in state {status.state}"}, 409)
        status.set(paused=True)
        return JSONResponse({"success": True})

    async def commit(request: Request) -> JSONResponse:
        if not status.copy_done:
            return JSONResponse({"success": False, "error": "the copy has not finished yet"}, 409)
        if status.state in ("COMMITTING", "COMMITTED"):
            return JSONResponse({"success": True, "state": status.state})
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse({"success": False, "error": "the body must be JSON, e.g. {\"writeBlock\": false}"}, 400)
        write_block = body.get("writeBlock", True) if isinstance(body, dict) else True
        if not isinstance(write_block, bool):
            return JSONResponse({"success": False, "error": "writeBlock must be true or false"}, 400)
        status.set(commit_requested=True, commit_write_block=write_block, paused=False)
        return JSONResponse({"success": True, "state": "COMMITTING"})

    return Starlette(routes=[
        Route("/api/v1/progress", progress, methods=["GET"]),
        Route("/api/v1/pause", pause, methods=["POST"]),
        Route("/api/v1/commit", commit, methods=["POST"]),
        throttle_route(throttle),
        *common_routes(status, registry, kind, ["pause", "resume", "commit", "throttle"]),
    ])


def backup_app(status: JobStatus, describe: Callable[[], dict[str, Any]],
               throttle: Throttle | None = None) -> Starlette:
    """A backup's progress: its pipeline's status, and per source its snapshots, chunks and the
    times it can restore to; its throttle."""
    throttle = throttle or Throttle()
    registry = job_registry(status, "backup", StatusCollector(status), ThrottleCollector(throttle))

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse({**status.snapshot(), "throttle": throttle.describe(), "backup": describe()})

    return Starlette(routes=[Route("/api/v1/progress", progress, methods=["GET"]), throttle_route(throttle),
                             *common_routes(status, registry, "backup", ["throttle"])])


def prune_app(status: PruneStatus) -> Starlette:
    """Progress, the rate limit (read or changed while running), pause and resume of a prune."""
    registry = job_registry(status, "prune", PruneCollector(status))

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse(status.snapshot())

    async def rate(request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"docsPerSecond": status.rate})
        try:
            body = await request.json()
        except ValueError:
            body = None
        value = body.get("docsPerSecond", "missing") if isinstance(body, dict) else "missing"
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or value < 0):
            return JSONResponse({"success": False, "error": "send {\"docsPerSecond\": N} with N >= 0 "
                                 "(0 or null: no limit)"}, 400)
        status.set(rate=float(value) or None if value is not None else None)
        log.info("prune rate limit changed", extra={"docsPerSecond": status.rate})
        return JSONResponse({"success": True, "docsPerSecond": status.rate})

    async def pause(request: Request) -> JSONResponse:
        status.set(paused=True)
        return JSONResponse({"success": True})

    async def throttle(request: Request) -> JSONResponse:
        """The common throttle API; a prune limits documents only (it deletes, it moves no bytes)."""
        if request.method == "GET":
            return JSONResponse({"maxDocsPerSecond": status.rate, "maxBytesPerSecond": None})
        asked = await requested_limits(request)
        if isinstance(asked, JSONResponse):
            return asked
        if any(v is not None for k, v in asked.items() if k != "maxDocsPerSecond"):
            return JSONResponse({"success": False, "error": "a prune limits documents per second only (its own "
                                 "latency guard and --max-lag watch the server): send {\"maxDocsPerSecond\": N}"}, 400)
        if "maxDocsPerSecond" in asked:
            status.set(rate=asked["maxDocsPerSecond"])
            log.info("prune rate limit changed", extra={"docsPerSecond": status.rate})
        return JSONResponse({"success": True, "maxDocsPerSecond": status.rate, "maxBytesPerSecond": None})

    return Starlette(routes=[
        Route("/api/v1/progress", progress, methods=["GET"]),
        Route("/api/v1/rate", rate, methods=["GET", "POST"]),
        Route("/api/v1/throttle", throttle, methods=["GET", "POST"]),
        Route("/api/v1/pause", pause, methods=["POST"]),
        *common_routes(status, registry, "prune", ["pause", "resume", "throttle"]),
    ])


def parse_bind(text: str, flag: str = "--http") -> tuple[str, int] | None:
    """HOST:PORT, or 'off' for no server."""
    if text.lower() in ("off", "none", ""):
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{flag} {text!r} is not HOST:PORT", f"for example {flag} 127.0.0.1:27182, or {flag} off")
    return host, int(port)


def secret(value: Any) -> str | None:
    """The token's text from a settings field (a pydantic SecretStr, kept out of logs and reprs)."""
    return value.get_secret_value() if value is not None else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


Scope = MutableMapping[str, Any]


class TokenGuard:
    """ASGI middleware: every request other than GET/HEAD needs the token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD") and not self._allowed(scope):
            body = json.dumps({"success": False, "error": "this control needs the job's token: send "
                               "Authorization: Bearer TOKEN (the value of --http-token)"}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-mongoferry-token", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, self.token)


class HttpServer:
    """The API in a thread. `token`: the controls need it (see the module's docstring); `guarded`:
    the app has controls, so a non-loopback address without a token is refused."""

    def __init__(self, app: Any, host: str, port: int, hint: str = "choose another address with --http HOST:PORT, "
                 "or --http off", token: str | None = None, guarded: bool = False) -> None:
        self.hint = hint
        if guarded and token is None and not is_loopback(host):
            raise UsageError(f"--http {host}:{port} would open pause/commit/throttle to the network without a token",
                             "give --http-token TOKEN (or MONGOFERRY_HTTP_TOKEN), or bind 127.0.0.1")
        if token is not None and hasattr(app, "state"):
            app.state.token_required = True
        served = TokenGuard(app, token) if token is not None else app
        config = uvicorn.Config(served, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self) -> HttpServer:
        self.probe()
        self.thread.start()
        return self

    def probe(self) -> None:
        """Fail with a UsageError now if the address cannot be listened on."""
        import socket

        host, port = self.server.config.host, self.server.config.port
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", self.hint) from None

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.ident is not None:  # never started when the address was taken
            self.thread.join(timeout=5)
