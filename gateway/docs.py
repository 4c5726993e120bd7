"""API docs at ``/docs``: Swagger UI over ``/openapi.json``, served by the gateway itself.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package (Apache-2.0), read from its
installed copy: no CDN at run time. The page is the gateway's own (``gateway/pages/docs.html``
with ``gateway/static/docs.js`` as its initializer, since the page allows no inline script);
only the few files it needs are served from the bundle, under ``/docs/assets/``. ``/redoc``,
where people look too, redirects here. Without the package ``/docs`` answers 404 saying so.
"""

from __future__ import annotations

import pathlib

from google.rpc import code_pb2
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway import errors, web

#: Swagger UI styles its widgets with inline style attributes: allowed for styles only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def bundle_dir() -> pathlib.Path | None:
    """Where Swagger UI's files are installed, or None without the package."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    return pathlib.Path(str(swagger_ui_path))


def routes(bundle: pathlib.Path | None = None) -> list[Route]:
    bundle = bundle if bundle is not None else bundle_dir()

    async def docs(request: Request) -> Response:
        if bundle is None:
            return _missing()
        return FileResponse(
            web.PAGES / "docs.html", media_type="text/html; charset=utf-8", headers=web.page_headers(DOCS_CSP)
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if bundle is None or name not in ASSETS:
            return _missing()
        headers = {"Cache-Control": "public, max-age=86400", **web.SECURITY_HEADERS}
        return FileResponse(bundle / name, media_type=ASSETS[name], headers=headers)

    async def redoc(request: Request) -> Response:
        return RedirectResponse("/docs", status_code=308)

    return [
        Route("/docs", docs, methods=["GET", "HEAD"]),
        Route("/docs/assets/{name}", asset, methods=["GET", "HEAD"]),
        Route("/redoc", redoc, methods=["GET", "HEAD"]),
    ]


def _missing() -> Response:
    message = "API docs need the swagger-ui-bundle-v2 package; /openapi.json is served without it"
    return errors.response(errors.status(code_pb2.NOT_FOUND, message), 404)
