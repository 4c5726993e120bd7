"""The database circuit breaker and the resilience recommendation (pure, fake clock)."""

from __future__ import annotations

import logging

import pytest

from runner_service import breaker, diagnostics, watchdog
from runner_service.store import StoreStatus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_fails_fast_then_one_probe_closes_it():
    clock = Clock()
    cb = breaker.CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    for _ in range(2):
        assert cb.before_call() is False
        cb.record_failure("OperationalError: gone")
    cb.record_success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        cb.before_call()
        cb.record_failure("OperationalError: gone")
    assert cb.status().state == breaker.OPEN
    with pytest.raises(breaker.CircuitOpen) as refused:
        cb.before_call()
    assert refused.value.retry_after_s == pytest.approx(5.0)
    clock.now += 2.0
    assert cb.status().retry_after_s == pytest.approx(3.0)
    clock.now += 3.0
    assert cb.before_call() is True  # the probe
    with pytest.raises(breaker.CircuitOpen):  # only one probe at a time
        cb.before_call()
    cb.record_success()
    assert cb.status().state == breaker.CLOSED and cb.status().opened_total == 1


def tripped(clock: Clock, reset_timeout_s: float) -> breaker.CircuitBreaker:
    """A breaker opened by one failure."""
    cb = breaker.CircuitBreaker(failure_threshold=1, reset_timeout_s=reset_timeout_s, clock=clock)
    cb.before_call()
    cb.record_failure("x")
    return cb


def test_a_failed_probe_opens_it_again_for_a_full_reset_timeout():
    clock = Clock()
    cb = tripped(clock, 2.0)
    clock.now += 2.0
    assert cb.before_call() is True
    cb.record_failure("still down")
    status = cb.status()
    assert status.state == breaker.OPEN and status.retry_after_s == pytest.approx(2.0)
    assert status.last_error == "still down" and status.opened_total == 2


def test_a_cancelled_probe_lets_the_next_call_probe():
    clock = Clock()
    cb = tripped(clock, 1.0)
    clock.now += 1.0
    assert cb.before_call() is True
    cb.release_probe()
    assert cb.before_call() is True


def test_transitions_are_logged_outside_the_lock(caplog):
    cb = breaker.CircuitBreaker(failure_threshold=1, reset_timeout_s=0.0)

    held: list[bool] = []

    class LockChecker(logging.Handler):
        def emit(self, record):
            held.append(cb._lock.locked())

    handler = LockChecker()
    logging.getLogger("runner_service.breaker").addHandler(handler)
    try:
        cb.record_failure("x")
        cb.before_call()
        cb.record_success()
    finally:
        logging.getLogger("runner_service.breaker").removeHandler(handler)
    assert held == [False, False]


def _store(**kw) -> StoreStatus:
    values = dict(
        writes_failing=False, held_writes=0, last_write_error="", reads_in_flight=0, slow_reads_waiting=0, pool=""
    )
    values.update(kw)
    return StoreStatus(**values)


def _circuit(state=breaker.CLOSED) -> breaker.BreakerStatus:
    return breaker.BreakerStatus(state, 0, 5, 5.0, 0.0, 0, "")


def _load(**kw) -> diagnostics.Load:
    values = dict(queued=0, running=0, max_queued=20, workers_alive=2, workers_size=2, draining=False)
    values.update(kw)
    return diagnostics.Load(**values)


ALLOWED = watchdog.Policy(watchdog.ALLOWED, 0, 0.0, "observe")


@pytest.mark.parametrize(
    ("circuit", "store", "churn", "load", "expected"),
    [
        (_circuit(), _store(), ALLOWED, _load(), diagnostics.OBSERVE),
        (_circuit(breaker.OPEN), _store(), ALLOWED, _load(), diagnostics.RECOVER),
        (_circuit(), _store(writes_failing=True, held_writes=3), ALLOWED, _load(), diagnostics.RECOVER),
        (_circuit(), _store(), watchdog.Policy(watchdog.BLOCKED, 6, 1.0, ""), _load(), diagnostics.RECOVER),
        (_circuit(), _store(), ALLOWED, _load(workers_alive=0), diagnostics.RECOVER),
        (_circuit(breaker.HALF_OPEN), _store(), ALLOWED, _load(), diagnostics.THROTTLE),
        (_circuit(), _store(), watchdog.Policy(watchdog.COOLING_DOWN, 3, 2.0, ""), _load(), diagnostics.THROTTLE),
        (_circuit(), _store(), ALLOWED, _load(queued=16), diagnostics.THROTTLE),
        (_circuit(), _store(slow_reads_waiting=2), ALLOWED, _load(), diagnostics.THROTTLE),
    ],
)
def test_recommendation(circuit, store, churn, load, expected):
    action, reasons = diagnostics.recommend(circuit, store, churn, load)
    assert action == expected
    assert bool(reasons) == (expected != diagnostics.OBSERVE)


def test_the_snapshot_is_memoized_for_its_ttl():
    clock = Clock()
    calls = []

    def load():
        calls.append(1)
        return _load()

    diag = diagnostics.Diagnostics(_circuit, _store, lambda: ALLOWED, load, ttl_s=5.0, clock=clock)
    first = diag.snapshot()
    clock.now += 4.9
    assert diag.snapshot() is first and len(calls) == 1
    clock.now += 0.2
    assert diag.snapshot() is not first and len(calls) == 2
