"""HTTP status and control for a running sync (starlette + uvicorn, in a thread)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mongoferry.core.errors import UsageError
from mongoferry.state.prune_status import PruneStatus, prune_registry
from mongoferry.state.status import JobStatus, make_registry

log = logging.getLogger("mongoferry.http")


class Controlled(Protocol):
    state: str

    def set(self, **fields: Any) -> None: ...


def common_routes(status: Controlled, registry: CollectorRegistry) -> list[Route]:
    """What every job's API has: resume, health and metrics."""

    async def resume(request: Request) -> JSONResponse:
        status.set(paused=False)
        return JSONResponse({"success": True})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "state": status.state})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/api/v1/resume", resume, methods=["POST"]), Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]


def sync_app(status: JobStatus) -> Starlette:
    registry = make_registry(status)

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse(status.snapshot())

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
        *common_routes(status, registry),
    ])


def backup_app(status: JobStatus, describe: Callable[[], dict[str, Any]]) -> Starlette:
    """A backup's progress: its pipeline's status, and per source its snapshots, chunks and the
    times it can restore to."""
    registry = make_registry(status)

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse({**status.snapshot(), "backup": describe()})

    return Starlette(routes=[Route("/api/v1/progress", progress, methods=["GET"]),
                             *common_routes(status, registry)])


def prune_app(status: PruneStatus) -> Starlette:
    """Progress, the rate limit (read or changed while running), pause and resume of a prune."""
    registry = prune_registry(status)

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

    return Starlette(routes=[
        Route("/api/v1/progress", progress, methods=["GET"]),
        Route("/api/v1/rate", rate, methods=["GET", "POST"]),
        Route("/api/v1/pause", pause, methods=["POST"]),
        *common_routes(status, registry),
    ])


def parse_bind(text: str, flag: str = "--http") -> tuple[str, int] | None:
    """HOST:PORT, or 'off' for no server."""
    if text.lower() in ("off", "none", ""):
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{flag} {text!r} is not HOST:PORT", f"for example {flag} 127.0.0.1:27182, or {flag} off")
    return host, int(port)


class HttpServer:
    def __init__(self, app: Any, host: str, port: int, hint: str = "choose another address with --http HOST:PORT, "
                 "or --http off") -> None:
        self.hint = hint
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
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
