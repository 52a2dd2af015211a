"""The verifier's HTTP API, compatible with mongodb-labs/migration-verifier's
(``/api/v1/check``, ``writesOff``, ``progress``, ``summary``, ``docMismatches``,
``nsMismatches``) plus ``/api/v1/mismatches`` (every finding with its field-level diff), and what
every job serves: ``/healthz``, ``/metrics`` and the dashboard."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Protocol

from bson import json_util
from pymongo.errors import OperationFailure, PyMongoError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mongoferry import __version__
from mongoferry.core.errors import MongoferryError
from mongoferry.http.server import observed_routes
from mongoferry.infra.config import VerifySettings
from mongoferry.infra.redact import redact
from mongoferry.state.endpoints import Endpoints
from mongoferry.state.health import Health, job_registry
from mongoferry.verify.findings import Pair, id_type, tolerated
from mongoferry.verify.keys import id_value, to_json_value
from mongoferry.verify.metadata import resolve_pairs
from mongoferry.verify.metrics import VerifyCollector
from mongoferry.verify.spec_compare import INDEX_SPEC_TOLERANCES

log = logging.getLogger("mongoferry.verify")


def mismatch_to_json(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"category": m["category"], "type": m["type"], "namespace": m["namespace"],
                           "dstNamespace": m.get("dstNamespace"), "generation": m["generation"]}
    if m["category"] == "document":
        out["_id"] = to_json_value(id_value(bytes(m["key"])))
        out["idType"] = id_type(bytes(m["key"]))
        diffs = json.loads(m.get("diffs") or "[]")
        if diffs:
            out["diffs"] = diffs
    else:
        out["aspect"] = m.get("aspect")
        if m.get("component") is not None:
            out["component"] = m["component"]
        if m.get("detail") is not None:
            out["detail"] = m["detail"]
    out["durationSecs"] = round(int(m.get("durationMS") or 0) / 1000, 3)
    return out


def doc_mismatch_lines(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reference's DocMismatchInfo objects (one per differing top-level field)."""
    base = {"type": m["type"], "namespace": m["namespace"], "_id": to_json_value(id_value(bytes(m["key"])))}
    duration = round(int(m.get("durationMS") or 0) / 1000, 3)
    if m["type"] != "content":
        return [{**base, "durationSecs": duration}]
    lines = []
    seen: set[str] = set()
    for d in json.loads(m.get("diffs") or "[]"):
        field = d.get("field") or ""
        if field in seen:
            continue
        seen.add(field)
        line = dict(base)
        if d.get("kind") != "order":
            line["field"] = field
        line["detail"] = d.get("detail")
        line["durationSecs"] = duration
        lines.append(line)
    return lines or [{**base, "detail": "Mismatch", "durationSecs": duration}]


MAX_UINT32: Final = 2**32 - 1


class BadParameter(ValueError):
    """A query parameter the client got wrong: answered 400 ``{"error": …}``."""


def parse_min_duration(value: str | None) -> int:
    """``?minDurationSecs=``: a uint32 (absent or empty: 0)."""
    if value is None or value == "":
        return 0
    if not value.isdigit() or int(value) > MAX_UINT32:
        raise BadParameter(f"invalid `minDurationSecs`: {value!r} is not a whole number of seconds "
                         f"from 0 to {MAX_UINT32}")
    return int(value)


def parse_index_spec_ignore(values: Iterable[str]) -> frozenset[str]:
    """``?indexSpecIgnore=a,b`` (or repeated): names from :data:`INDEX_SPEC_TOLERANCES` only."""
    names = [n.strip() for item in values for n in item.split(",") if n.strip()]
    bad = [n for n in names if n not in INDEX_SPEC_TOLERANCES]
    if bad:
        raise BadParameter("invalid `indexSpecIgnore`: [" + ", ".join(f"`{b}`" for b in bad) + "] (allowed: "
                         + ", ".join(sorted(INDEX_SPEC_TOLERANCES)) + ")")
    return frozenset(names)


def ns_mismatch_info(m: Mapping[str, Any]) -> dict[str, Any]:
    """The reference's NSMismatchInfo object of a stored namespace finding."""
    row: dict[str, Any] = {"type": m["type"], "namespace": m["namespace"], "aspect": m.get("aspect")}
    if m.get("component") is not None:
        row["component"] = m["component"]
    if m.get("detail") is not None and m["type"] == "content":
        row["detail"] = m["detail"]
    return row


# ======================================================================================
# HTTP
# ======================================================================================

class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        trace = str(uuid.uuid4())
        log.debug("request", extra={"method": request.method, "path": request.url.path, "traceId": trace})
        response = await call_next(request)
        response.headers["Server"] = f"migration-verifier/mongoferry-{__version__}"
        response.headers["Trace-Id"] = trace
        return response


async def _json_body(request: Request) -> tuple[dict[str, Any] | None, str | None]:
    body = (await request.body()).strip()
    if not body:
        return {}, None
    try:
        parsed = json_util.loads(body.decode("utf-8"), json_options=json_util.RELAXED_JSON_OPTIONS)
    except Exception as exc:  # bad JSON, or bad extended JSON ({"$oid": "zz"}): the client's mistake
        return None, f"invalid JSON body: {exc}"
    if not isinstance(parsed, dict):
        return None, "the body must be a JSON object"
    return parsed, None


class VerifierView(Protocol):
    """What the HTTP API reads and asks of the verifier (the server module implements it)."""

    s: VerifySettings
    ends: Endpoints
    pairs: list[Pair]

    def progress(self) -> dict[str, Any]: ...
    def health(self) -> Health: ...
    def start_check(self, filt: dict[str, Any] | None) -> None: ...
    def writes_off(self) -> str | None: ...
    def summary(self, min_duration_s: int = 0) -> dict[str, Any]: ...
    def doc_mismatch_lines(self, min_duration_s: int = 0) -> Iterator[dict[str, Any]]: ...
    def ns_mismatches(self) -> Iterator[dict[str, Any]]: ...
    def mismatch_items(self, generation: int | None = None) -> list[dict[str, Any]]: ...


def verifier_app(v: VerifierView) -> Starlette:
    async def check(request: Request) -> JSONResponse:
        body, error = await _json_body(request)
        if body is None:
            return JSONResponse({"error": error}, 400)
        filt = body.get("filter")
        if filt is not None and not isinstance(filt, dict):
            return JSONResponse({"error": "`filter` must be a query document"}, 400)
        try:
            if filt:
                await run_in_threadpool(_validate_filter, v, filt)
            await run_in_threadpool(v.start_check, filt or None)
        except OperationFailure as exc:
            return JSONResponse({"error": f"invalid filter: {redact(str((exc.details or {}).get('errmsg', exc)))}"},
                                400)
        except MongoferryError as exc:  # a selection that matches nothing, a lost server, ...
            return JSONResponse({"error": redact(exc.one_line())}, 400)
        except PyMongoError as exc:
            return JSONResponse({"error": redact(str(exc))})
        return JSONResponse({"success": True})

    async def writes_off(request: Request) -> JSONResponse:
        body, error = await _json_body(request)
        if body is None:
            return JSONResponse({"error": error}, 400)
        try:
            failure = await run_in_threadpool(v.writes_off)
        except PyMongoError as exc:
            failure = f"cannot read the servers' cluster time: {redact(str(exc))}"
        if failure:
            return JSONResponse({"error": failure})
        return JSONResponse({"success": True})

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(v.progress))

    def _generation(request: Request) -> int | None:
        value = request.query_params.get("generation")
        if value is None:
            return None
        if not value.isdigit():
            raise BadParameter("invalid `generation`")
        return int(value)

    async def mismatches(request: Request) -> JSONResponse:
        generation = _generation(request)
        return JSONResponse(await run_in_threadpool(v.mismatch_items, generation))

    def _ndjson(rows: Callable[[], Iterable[dict[str, Any]]]) -> StreamingResponse:
        trace = str(uuid.uuid4())

        def lines() -> Iterator[str]:
            try:
                for row in rows():
                    yield json.dumps(row, ensure_ascii=False) + "\n"
            except PyMongoError:
                log.exception("mismatch listing failed", extra={"traceId": trace})
                yield json.dumps({"error": f"internal error (ref #: {trace})"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})

    async def doc_mismatches(request: Request) -> Response:
        min_s = parse_min_duration(request.query_params.get("minDurationSecs"))
        return _ndjson(lambda: v.doc_mismatch_lines(min_s))

    async def ns_mismatches(request: Request) -> Response:
        tolerances = parse_index_spec_ignore(request.query_params.getlist("indexSpecIgnore"))
        return _ndjson(lambda: (ns_mismatch_info(m) for m in v.ns_mismatches() if not tolerated(m, tolerances)))

    async def summary(request: Request) -> JSONResponse:
        min_s = parse_min_duration(request.query_params.get("minDurationSecs"))
        return JSONResponse(await run_in_threadpool(v.summary, min_s))

    async def bad_parameter(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, 400)

    async def server_error(request: Request, exc: Exception) -> Response:
        # as migration-verifier: 200 with the error (a script polling /progress sees it)
        return JSONResponse({"error": redact(str(exc))})

    app = Starlette(routes=[
        Route("/api/v1/check", check, methods=["POST"]),
        Route("/api/v1/writesOff", writes_off, methods=["POST"]),
        Route("/api/v1/progress", progress, methods=["GET"]),
        Route("/api/v1/mismatches", mismatches, methods=["GET"]),
        Route("/api/v1/summary", summary, methods=["GET"]),
        Route("/api/v1/docMismatches", doc_mismatches, methods=["GET"]),
        Route("/api/v1/nsMismatches", ns_mismatches, methods=["GET"]),
        # health, metrics and the dashboard as every job's; check/writesOff stay migration-verifier's
        *observed_routes(v, job_registry(v, "verify", VerifyCollector(v)), "verify", []),
    ], exception_handlers={BadParameter: bad_parameter, PyMongoError: server_error})
    app.add_middleware(_Headers)
    return app


def _validate_filter(v: VerifierView, filt: dict[str, Any]) -> None:
    """Let the server reject a bad query before the check starts."""
    pairs = v.pairs or resolve_pairs(v.s, v.ends.src, v.ends.dst, v.ends.nsmap)
    if pairs:
        pairs[0].src_coll(v.ends.src).find_one(filt)


