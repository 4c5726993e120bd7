"""The gateway application: routes from the schema, health probes, OpenAPI, one channel.

``create_app(settings)`` wires the parts; nothing connects before the lifespan starts, which
opens the one ``grpc.aio`` channel all requests share and closes it on shutdown, and serves the
gateway's metrics (``metrics_listen``) meanwhile.

A request that a schema rule takes as it is (its verb and path match) is served by that rule
directly, without Starlette's middleware stack and router, which cost more than the rest of the
gateway's own work on a small unary call; everything else (health, OpenAPI, 404, 405, lifespan)
goes through Starlette as usual. An exception a rule's handler does not expect propagates to
the server, which answers 500 and logs it, as Starlette's ServerErrorMiddleware would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from google.protobuf.descriptor import FileDescriptor
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import docs, errors, openapi, routing, rules, web
from gateway.health import Probes
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.upstream import Upstream
from protos.runner.v1 import runner_pb2
from runner_service.exposition import MetricsServer

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    upstream: Upstream | None = None,
    files: Iterable[FileDescriptor] = (runner_pb2.DESCRIPTOR,),
) -> Starlette:
    """The ASGI application for ``settings``. ``files`` are the schema files whose annotated
    services become routes; ``upstream`` defaults to a channel to ``settings.upstream``. Its
    ``metrics`` are None when ``settings.metrics_listen`` is empty; once the lifespan has
    started, ``metrics_server.port`` is where they are served."""
    upstream = upstream if upstream is not None else Upstream(settings)
    metrics = GatewayMetrics() if settings.metrics_listen else None
    http_rules = rules.load(files)
    document = openapi.document(http_rules, comments=openapi.load_comments())
    probes = Probes(upstream, settings)

    async def openapi_json(request: Request):
        return openapi.response(document)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if metrics is not None:
            try:
                app.metrics_server = MetricsServer(settings.metrics_listen, metrics.registry)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot serve metrics on GATEWAY_METRICS_LISTEN={settings.metrics_listen}: {exc}"
                ) from exc
            log.info("metrics served", extra={"url": app.metrics_server.url})
        await upstream.open()
        try:
            yield
        finally:
            await upstream.close()
            server, app.metrics_server = app.metrics_server, None
            if server is not None:
                await asyncio.to_thread(server.close)

    own_routes = [
        *probes.routes(),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *docs.routes(),  # /docs: Swagger UI
        *web.routes(),  # /: the operator pages
    ]
    rpc_routes = routing.build_routes(http_rules, upstream, settings)
    return Gateway(
        routing.Dispatcher(rpc_routes, reserved=[route.path for route in own_routes]),
        metrics,
        routes=[*own_routes, *rpc_routes],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )


class Gateway(Starlette):
    """Starlette, with a fast way in for requests that a schema rule takes as they are, and
    every HTTP request counted in ``metrics`` (when given)."""

    def __init__(self, dispatcher: routing.Dispatcher, metrics: GatewayMetrics | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._dispatch = dispatcher
        self.metrics = metrics
        self.metrics_server: MetricsServer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self._dispatch(scope)
            if found is not None:
                scope["app"] = self
                route, path_params = found
                if self.metrics is None:
                    await route.serve(scope, receive, send, path_params)
                    return
                rule = route.rule

                async def serve(scope: Scope, receive: Receive, send: Send) -> None:
                    await route.serve(scope, receive, send, path_params)

                await self.metrics.serve(serve, scope, receive, send, rule.template, rule.server_streaming)
                return
            if self.metrics is not None:
                await self.metrics.serve(super().__call__, scope, receive, send, None)
                return
        await super().__call__(scope, receive, send)


async def _http_exception(request: Request, exc: HTTPException):
    """Starlette's own 404/405 as google.rpc.Status JSON, like every other error."""
    code = {404: code_pb2.NOT_FOUND, 405: code_pb2.UNIMPLEMENTED}.get(exc.status_code, code_pb2.UNKNOWN)
    message = f"no route for {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
    return errors.response(errors.status(code, message), exc.status_code, dict(exc.headers or {}))
