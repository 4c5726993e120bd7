"""The resilience picture: circuit, database, worker churn, load, and what an
operator should do about it (observe, throttle or recover).

`recommend` is pure; `Diagnostics.snapshot()` gathers the parts (cheap reads, no
database call) and memoizes the answer for `ttl_s` so that probes and dashboards
polling it cost nothing. It carries thresholds and states, never a secret.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from runner_service import breaker, watchdog
from runner_service.store import StoreStatus

OBSERVE = "observe"
THROTTLE = "throttle"
RECOVER = "recover"
# The queue is "nearly full" past this share of max_queued.
QUEUE_PRESSURE = 0.8


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    queued: int
    running: int
    max_queued: int
    workers_alive: int
    workers_size: int
    draining: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    circuit: breaker.BreakerStatus
    store: StoreStatus
    churn: watchdog.Policy
    load: Load
    recommendation: str
    reasons: tuple[str, ...]
    observed_at: float  # seconds since the epoch


def recommend(
    circuit: breaker.BreakerStatus, store: StoreStatus, churn: watchdog.Policy, load: Load
) -> tuple[str, tuple[str, ...]]:
    """What to do now, and why. `recover` when something is broken and needs
    attention; `throttle` when the service is near a limit and callers should
    slow down; `observe` otherwise."""
    broken = []
    if circuit.state == breaker.OPEN:
        broken.append(f"database circuit open ({circuit.last_error or 'repeated failures'})")
    if store.writes_failing:
        broken.append(f"database writes failing, {store.held_writes} held ({store.last_write_error})")
    if churn.state == watchdog.BLOCKED:
        broken.append(f"worker churn blocked: {churn.restarts_in_window} crashes in the window")
    if load.workers_alive == 0:
        broken.append("no worker process alive")
    if broken:
        return RECOVER, tuple(broken)
    pressed = []
    if circuit.state == breaker.HALF_OPEN:
        pressed.append("database circuit half-open (probing)")
    if churn.state == watchdog.COOLING_DOWN:
        pressed.append(f"worker replacements cooling down for {churn.cooldown_remaining_s:.1f} s")
    if load.max_queued and load.queued >= QUEUE_PRESSURE * load.max_queued:
        pressed.append(f"queue at {load.queued} of {load.max_queued}")
    if store.slow_reads_waiting:
        pressed.append(f"{store.slow_reads_waiting} slow reads waiting")
    if load.draining:
        pressed.append("draining for shutdown")
    if pressed:
        return THROTTLE, tuple(pressed)
    return OBSERVE, ()


class Diagnostics:
    def __init__(
        self,
        circuit: Callable[[], breaker.BreakerStatus],
        store: Callable[[], StoreStatus],
        churn: Callable[[], watchdog.Policy],
        load: Callable[[], Load],
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._circuit = circuit
        self._store = store
        self._churn = churn
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._cached: tuple[float, Snapshot] | None = None

    def snapshot(self) -> Snapshot:
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < self._ttl_s:
            return self._cached[1]
        circuit, store, churn, load = self._circuit(), self._store(), self._churn(), self._load()
        action, reasons = recommend(circuit, store, churn, load)
        snap = Snapshot(circuit, store, churn, load, action, reasons, time.time())
        self._cached = (now, snap)
        return snap
