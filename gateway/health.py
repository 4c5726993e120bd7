"""HTTP health probes (Kubernetes ``httpGet``, Docker, load balancers) → gRPC health.

- ``/health/live``: 200 at once. The gateway process answers; the runner is not asked, so a
  runner outage never gets the gateway restarted.
- ``/health/ready``: the runner's ``grpc.health.v1`` Check for the service ``readiness``, with a
  short deadline: 200 when SERVING, 503 otherwise (NOT_SERVING, unreachable, too slow).
- ``/health``: both, as JSON; 200 only when ready.
- ``/health/deep``: the runner's resilience picture (``GetResilience``: circuit state,
  database, worker churn policy and cooldown, load, thresholds, a recommendation: observe /
  throttle / recover), memoized for ``deep_health_ttl_s``; 200 unless the recommendation is
  ``recover`` or the runner cannot be asked (503). No secrets: the runner's answer carries
  thresholds and states only.
"""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import protojson
from gateway.settings import Settings
from gateway.upstream import Upstream
from protos.runner.v1 import runner_pb2

READINESS_SERVICE = "readiness"


class Probes:
    def __init__(self, upstream: Upstream, settings: Settings) -> None:
        self._upstream = upstream
        self._timeout_s = settings.health_timeout_s
        self._deep_ttl_s = settings.deep_health_ttl_s
        self._deep: tuple[float, int, dict] | None = None  # (monotonic time, status, body)

    def routes(self) -> list[Route]:
        return [
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/health", self.both, methods=["GET"]),
            Route("/health/deep", self.deep, methods=["GET"]),
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

    async def deep(self, request: Request) -> JSONResponse:
        now = time.monotonic()
        cached = self._deep
        if cached is None or now - cached[0] >= self._deep_ttl_s:
            status_code, body = await self._resilience()
            cached = self._deep = (now, status_code, body)
        return JSONResponse(cached[2], status_code=cached[1])

    async def _resilience(self) -> tuple[int, dict]:
        stub = self._upstream.runner
        if stub is None:
            return 503, {"recommendation": "recover", "reasons": ["the gateway is not connected to the runner"]}
        try:
            reply = await stub.GetResilience(
                runner_pb2.GetResilienceRequest(), timeout=self._timeout_s, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as err:
            reason = f"the runner did not answer: {err.code().name}"
            return 503, {"recommendation": "recover", "reasons": [reason], "upstream": self._upstream.target}
        body = protojson.to_json(reply)
        body["upstream"] = self._upstream.target
        return (503 if reply.recommendation == "recover" else 200), body

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
