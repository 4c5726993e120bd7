"""The operator web page: plain HTML, CSS and JavaScript served by the gateway (SPEC §11).

=====================  ===================================================================
path                   page
=====================  ===================================================================
``/``                  the runs, updated live, filtered by state and kind, keyset-paged;
                       GetSummary's counts at the top
``/runs/{run_id}``     one run: spec, live progress, log lines over SSE, result, Cancel
``/submit``            a form for the built-in kinds, with the schema's limits and the
                       server's field errors next to the fields
``/admin``             worker pool, churn policy, circuit; Restart Workers (bearer token)
``/static/…``          the pages' CSS and JavaScript (``gateway/static``)
=====================  ===================================================================

The pages hold no data: their scripts ask the gateway's own REST API and SSE streams, from the
same origin, so every rule of the API (content type, limits, tokens) applies to them as to any
client. Every page is sent with a strict Content-Security-Policy (scripts only from this
origin, no inline script or style, no framing); the scripts put values into the page as text,
never as markup.
"""

from __future__ import annotations

import pathlib

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

HERE = pathlib.Path(__file__).resolve().parent
PAGES = HERE / "pages"
STATIC = HERE / "static"

#: The operator pages' policy: everything from this origin, nothing inline, no framing.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def page_headers(csp: str = PAGE_CSP) -> dict[str, str]:
    """The headers of an HTML page: its policy, the security headers, no caching."""
    return {"Content-Security-Policy": csp, "Cache-Control": "no-cache", **SECURITY_HEADERS}


def _page(name: str):
    path = PAGES / name

    async def serve(request: Request) -> Response:
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=page_headers())

    return serve


class _Static:
    """Static files with the security headers and revalidation (no stale script after an
    upgrade: the ETag answers 304 when nothing changed)."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._files = StaticFiles(directory=directory)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self._files(scope, receive, send_with_headers)


def routes() -> list[Route | Mount]:
    """The operator pages and their assets."""
    return [
        Route("/", _page("runs.html"), methods=["GET", "HEAD"]),
        Route("/runs/{run_id}", _page("run.html"), methods=["GET", "HEAD"]),
        Route("/submit", _page("submit.html"), methods=["GET", "HEAD"]),
        Route("/admin", _page("admin.html"), methods=["GET", "HEAD"]),
        Mount("/static", app=_Static(STATIC), name="static"),
    ]
