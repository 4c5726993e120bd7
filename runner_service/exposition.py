"""Serving a Prometheus registry over HTTP (``GET /metrics``), on a thread of its own.

Both services use it: the runner on ``RUNNER_METRICS_LISTEN``, the gateway on
``GATEWAY_METRICS_LISTEN``. A scrape is answered on the server's threads (one per request),
never on the event loop; what a scrape reads from the event loop's own state is handed to it
by the collectors (see ``runner_service.metrics``).
"""

from __future__ import annotations

import socket
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

#: How often the serving thread looks for a stop request: the longest a close() waits.
POLL_S = 0.05


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    """No access line on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _only_metrics(app: Callable) -> Callable:
    """The registry's WSGI app on ``/metrics``; 404 on any other path."""

    def serve(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"metrics are at /metrics\n"]
        return app(environ, start_response)

    return serve


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port). Raises ValueError.

    >>> split_listen("127.0.0.1:9464"), split_listen("[::1]:0")
    (('127.0.0.1', 9464), ('::1', 0))
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not host:port: {listen!r}")
    return host.strip("[]"), int(port)


class MetricsServer:
    """``/metrics`` of ``registry`` on ``listen`` (port 0: any free port, see ``port``), served by
    a daemon thread from construction until close(). Raises OSError when the address cannot be
    bound (in use, not local), ValueError when it is not ``host:port``."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, port = split_listen(listen)

        class Server(ThreadingWSGIServer):
            pass

        if ":" in host:
            Server.address_family = socket.AF_INET6
        self._httpd = wsgiref.simple_server.make_server(
            host, port, _only_metrics(make_wsgi_app(registry)), Server, handler_class=_QuietHandler
        )
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(POLL_S,), name="metrics-http", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; blocks up to POLL_S (call it off the event loop
        when that matters). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)
