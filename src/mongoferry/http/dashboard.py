"""The dashboard: one static page (HTML, CSS and plain JavaScript shipped in the package, no CDN)
that polls the job's own JSON API and draws it, and the small description it starts from."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}


def asset(name: str) -> bytes:
    return resources.files("mongoferry.http").joinpath("static", name).read_bytes()


def dashboard_routes(kind: str, controls: list[str], progress: str = "/api/v1/progress") -> list[Route]:
    """`GET /` and its files, and `GET /api/v1/ui`: the job's kind, where its progress is, which
    buttons apply and whether they need a token (HttpServer sets `app.state.token_required`)."""

    def page(path: str) -> Route:
        name, media = ASSETS[path]

        async def serve(request: Request) -> Response:
            return Response(asset(name), media_type=media, headers={"Cache-Control": "no-cache"})

        return Route(path, serve, methods=["GET"])

    async def ui(request: Request) -> JSONResponse:
        needs = bool(getattr(request.app.state, "token_required", False))
        return JSONResponse({"kind": kind, "progress": progress, "controls": controls, "tokenRequired": needs})

    return [*(page(p) for p in ASSETS), Route("/api/v1/ui", ui, methods=["GET"])]
