"""A circuit breaker for the database.

Closed: calls go through; `failure_threshold` consecutive failures open it.
Open: calls fail at once (the caller answers UNAVAILABLE / CIRCUIT_OPEN with the
time until half-open) for `reset_timeout_s`. Half-open: one call at a time goes
through as a probe; its success closes the breaker, its failure opens it again.

Used from the event loop and from the store's threads, so its state sits behind a
lock; nothing is logged while the lock is held (transitions are logged after).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The breaker is open: the call was not attempted."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the database circuit is open; retry in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStatus:
    state: str
    consecutive_failures: int
    failure_threshold: int
    reset_timeout_s: float
    retry_after_s: float  # until half-open; 0 unless open
    opened_total: int
    last_error: str


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 5.0, clock=time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._opened_total = 0
        self._last_error = ""

    def before_call(self) -> bool:
        """Raise CircuitOpen when the call must not be attempted. Returns True
        when the call is the half-open probe (its outcome decides the state)."""
        with self._lock:
            if self._state == CLOSED:
                return False
            left = self._opened_at + self.reset_timeout_s - self._clock()
            if self._state == OPEN and left > 0:
                raise CircuitOpen(left)
            if self._probing:  # one probe at a time
                raise CircuitOpen(max(left, 0.1))
            self._state = HALF_OPEN
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            previous = self._state
            self._failures = 0
            self._probing = False
            self._state = CLOSED
        if previous != CLOSED:
            log.warning("database circuit closed", extra={"was": previous})

    def record_failure(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"[:300]
        opened = False
        with self._lock:
            self._failures += 1
            self._last_error = text
            self._probing = False
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.failure_threshold):
                opened = True
                self._state = OPEN
                self._opened_at = self._clock()
                self._opened_total += 1
            elif self._state == OPEN:
                self._opened_at = self._clock()
        if opened:
            log.error(
                "database circuit opened",
                extra={"failures": self._failures, "reset_timeout_s": self.reset_timeout_s, "error": text},
            )

    def release_probe(self) -> None:
        """The probe ended without telling anything about the database (cancelled)."""
        with self._lock:
            self._probing = False

    def status(self) -> BreakerStatus:
        with self._lock:
            left = 0.0
            if self._state == OPEN:
                left = max(0.0, self._opened_at + self.reset_timeout_s - self._clock())
            return BreakerStatus(
                self._state,
                self._failures,
                self.failure_threshold,
                self.reset_timeout_s,
                left,
                self._opened_total,
                self._last_error,
            )

    @property
    def is_closed(self) -> bool:
        with self._lock:
            return self._state == CLOSED
