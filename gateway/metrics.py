"""The gateway's metrics (Prometheus), in a registry of its own, served on ``metrics_listen``.

Every HTTP request is counted by route, method and status, and timed by route and method (a
streaming request to its end); streams open are a gauge by route. The route is the path
template that served the request (``/v1/runs/{run_id}``), never the raw path, and any method
outside HTTP's usual ones is ``OTHER``, so the number of series stays bounded whatever clients
send. A request that no route takes is counted under the route ``unmatched``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
#: The status of a request whose client left before any answer was sent (nginx's convention).
CLIENT_GONE = 499


def route_of(scope: Scope) -> str:
    """The template of the route Starlette's router chose for a request, once it has served
    it (``unmatched`` when none did)."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    rule = getattr(route, "rule", None)
    if rule is not None:
        return rule.template
    return getattr(route, "path", None) or UNMATCHED


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request (a stream: to its end), by route template and method.",
            ["route", "method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.streams = Gauge(
            "gateway_streams_open",
            "Streaming responses open (NDJSON or Server-Sent Events), by route template.",
            ["route"],
            registry=self.registry,
        )
        # Children bound on first use (routes x methods x statuses seen: bounded).
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    async def serve(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, route: str | None, streaming: bool = False
    ) -> None:
        """Call ``app`` for an HTTP request, counting and timing it under ``route`` (None: the
        route Starlette's router picks, read from the scope once it is served)."""
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"]
        if method not in METHODS:
            method = "OTHER"
        if streaming:
            self.streams.labels(route).inc()
        start = time.perf_counter()
        try:
            await app(scope, receive, sending)
        except BaseException:
            status = status or 500  # the server answers 500 to what escapes the application
            raise
        finally:
            elapsed = time.perf_counter() - start
            if streaming:
                self.streams.labels(route).dec()
            self._count(route or route_of(scope), method, status or CLIENT_GONE, elapsed)

    def _count(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        timer = self._durations.get((route, method))
        if timer is None:
            timer = self._durations[(route, method)] = self.duration.labels(route, method)
        timer.observe(seconds)
