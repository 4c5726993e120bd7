"""HTTP health probes (Kubernetes ``httpGet``, Docker, load balancers) → gRPC health.

- ``/health/live``: 200 at once. The gateway process answers; the runner is not asked, so a
  runner outage never gets the gateway restarted.
- ``/health/ready``: the runner's ``grpc.health.v1`` Check for the service ``readiness``, with a
  short deadline: 200 when SERVING, 503 otherwise (NOT_SERVING, unreachable, too slow).
- ``/health``: both, as JSON; 200 only when ready.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.settings import Settings
from gateway.upstream import Upstream

READINESS_SERVICE = "readiness"


class Probes:
    def __init__(self, upstream: Upstream, settings: Settings) -> None:
        self._upstream = upstream
        self._timeout_s = settings.health_timeout_s

    def routes(self) -> list[Route]:
        return [
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/health", self.both, methods=["GET"]),
        ]

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "SERVING"})

    async def ready(self, request: Request) -> JSONResponse:
        report = await self.readiness()
        return JSONResponse(report, status_code=200 if report["status"] == "SERVING" else 503)

    async def both(self, request: Request) -> JSONResponse:
        ready = await self.readiness()
        ok = ready["status"] == "SERVING"
        body = {"status": "SERVING" if ok else "NOT_SERVING", "live": {"status": "SERVING"}, "ready": ready}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def readiness(self) -> dict:
        """``{"status": "SERVING" | "NOT_SERVING" | "UNKNOWN" | "UNAVAILABLE", "detail": ...}``;
        never raises for an upstream failure."""
        stub = self._upstream.health
        if stub is None:
            return {"status": "UNAVAILABLE", "detail": "the gateway is not connected to the runner"}
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=READINESS_SERVICE),
                timeout=self._timeout_s,
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError as err:
            return {
                "status": "UNAVAILABLE",
                "detail": f"{err.code().name}: {err.details()}",
                "upstream": self._upstream.target,
            }
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return {"status": name, "upstream": self._upstream.target}
