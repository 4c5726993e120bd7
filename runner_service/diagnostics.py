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

from protos.runner.v1 import runner_pb2 as pb
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


_CIRCUIT_STATES = {
    breaker.CLOSED: pb.CIRCUIT_CLOSED,
    breaker.OPEN: pb.CIRCUIT_OPEN,
    breaker.HALF_OPEN: pb.CIRCUIT_HALF_OPEN,
}
POLICY_STATES = {
    watchdog.ALLOWED: pb.ALLOWED,
    watchdog.COOLING_DOWN: pb.COOLING_DOWN,
    watchdog.BLOCKED: pb.BLOCKED,
}


def _duration(target, seconds: float) -> None:
    target.FromNanoseconds(int(seconds * 1e9))


def fill_watchdog(target: pb.WatchdogStatus, dog: watchdog.Watchdog, policy: watchdog.Policy) -> None:
    target.policy_state = POLICY_STATES[policy.state]
    target.restarts_in_window = policy.restarts_in_window
    _duration(target.window, dog.window_s)
    _duration(target.cooldown_remaining, policy.cooldown_remaining_s)
    target.cooldown_threshold = dog.cooldown_threshold
    target.block_threshold = dog.block_threshold
    target.recommended_action = policy.recommended_action


def to_proto(snap: Snapshot, settings, dog: watchdog.Watchdog) -> pb.Resilience:
    """The snapshot as the runner.v1.Resilience message, with the thresholds in force."""
    out = pb.Resilience(recommendation=snap.recommendation, reasons=list(snap.reasons))
    circuit = out.circuit
    circuit.state = _CIRCUIT_STATES[snap.circuit.state]
    circuit.consecutive_failures = snap.circuit.consecutive_failures
    circuit.failure_threshold = snap.circuit.failure_threshold
    _duration(circuit.reset_timeout, snap.circuit.reset_timeout_s)
    _duration(circuit.retry_after, snap.circuit.retry_after_s)
    circuit.opened_total = snap.circuit.opened_total
    circuit.last_error = snap.circuit.last_error
    database = out.database
    database.writes_failing = snap.store.writes_failing
    database.held_writes = snap.store.held_writes
    database.last_write_error = snap.store.last_write_error
    database.reads_in_flight = snap.store.reads_in_flight
    database.slow_reads_waiting = snap.store.slow_reads_waiting
    database.pool = snap.store.pool
    database.pool_size = settings.db_pool_size
    database.pool_max_overflow = settings.db_max_overflow
    database.read_queue_max = settings.db_read_queue_max
    database.slow_query_concurrency = settings.slow_query_concurrency
    _duration(database.query_timeout, settings.db_query_timeout_s)
    fill_watchdog(out.watchdog, dog, snap.churn)
    load = snap.load
    out.queued, out.running, out.max_queued = load.queued, load.running, load.max_queued
    out.workers_alive, out.workers_size, out.draining = load.workers_alive, load.workers_size, load.draining
    out.observe_time.FromNanoseconds(int(snap.observed_at * 1e9))
    return out
