"""grpc.health.v1 wiring: overall, per-service, liveness and readiness statuses.

`liveness` is SERVING while the process and its event loop answer. `readiness`
(and "" and runner.v1.RunnerService) is SERVING while the database answers and
takes writes (its circuit closed), the worker pool is alive and can take the runs
that wait, and the server is not draining.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

RUNNER_SERVICE = "runner.v1.RunnerService"
LIVENESS = "liveness"
READINESS = "readiness"
READY_NAMES = ("", RUNNER_SERVICE, READINESS)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self, store, scheduler, interval_s: float = 1.0) -> None:
        self.servicer = health.aio.HealthServicer()
        self._store = store
        self._scheduler = scheduler
        self._interval_s = interval_s
        self._ready: bool | None = None
        self._task: asyncio.Task | None = None
        self._shutdown = False

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        await self._probe()
        self._task = asyncio.get_running_loop().create_task(self._probe_forever(), name="readiness-probe")

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._probe()

    async def _probe(self) -> None:
        if self._shutdown:
            return
        reasons = []
        status = self._scheduler.status()
        if status.draining:
            reasons.append("draining")
        if status.dead_tasks:
            reasons.append(f"background task died: {', '.join(status.dead_tasks)}")
        if not status.workers_alive:
            reasons.append("no worker process alive")
        elif status.queued and not status.workers_ready:
            reasons.append("runs are waiting and no worker can take them")
        try:
            await asyncio.wait_for(self._store.ping(), timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            reasons.append(f"database unreachable: {exc.__class__.__name__}")
        writes = self._store.status()
        if writes.writes_failing:
            reasons.append(f"database writes failing ({writes.held_writes} held): {writes.last_write_error}")
        ready = not reasons
        if ready != self._ready:
            if not ready:
                log.warning("not ready", extra={"reasons": reasons})
            self._ready = ready
            for name in READY_NAMES:
                await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def shutdown(self) -> None:
        """Every service NOT_SERVING for good (idempotent)."""
        self._shutdown = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.servicer.enter_graceful_shutdown()
