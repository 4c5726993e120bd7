"""Gateway fixtures: the real gateway served by uvicorn on a loopback port, in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket

import httpx
import pytest
import uvicorn

from gateway import server as gateway_server
from gateway import settings as gateway_settings
from gateway.app import Gateway, create_app


@dataclasses.dataclass
class RunningGateway:
    url: str
    client: httpx.AsyncClient
    server: uvicorn.Server
    app: Gateway | None = None


@pytest.fixture
def start_gateway():
    """An async context manager serving the gateway in front of ``upstream`` (a gRPC address);
    it yields the base URL and an httpx client, and stops the server on exit. Its metrics are
    served on a free port (``app.metrics_server.port``)."""

    @contextlib.asynccontextmanager
    async def start(upstream: str, **overrides):
        overrides.setdefault("metrics_listen", "127.0.0.1:0")
        settings = gateway_settings.from_env({}, listen="127.0.0.1:0", upstream=upstream, **overrides)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        # Listening before uvicorn starts: early requests wait in the backlog until the
        # lifespan has opened the channel and uvicorn accepts, so no start-up polling.
        sock.listen(128)
        port = sock.getsockname()[1]
        app = create_app(settings)
        config = gateway_server.config(
            app,
            settings,
            lifespan="on",
            log_config=None,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20.0) as client:
                yield RunningGateway(url, client, server, app)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            sock.close()

    return start


@pytest.fixture
async def stack(start_runner, start_gateway):
    """A runner and a gateway in front of it: (runner, gateway)."""
    async with start_runner() as runner, start_gateway(runner.address) as gateway:
        yield runner, gateway
