"""Which failures are retried, how long to wait, and when to stop (pure logic).

Why the client retries itself instead of relying on gRPC's service-config
`retryPolicy` / `retryThrottling` (gRFC A6):

- A6's policy decides by status code alone. The runner's RESOURCE_EXHAUSTED means
  "try again later" only with ErrorInfo reason `QUEUE_FULL`; the same code with
  `WATCHER_TOO_SLOW` means "resume your watch", and other causes are not
  retryable. Only the rich status details tell them apart.
- A6's server pushback is the `grpc-retry-pushback-ms` trailer; it cannot read the
  `google.rpc.RetryInfo.retry_delay` the runner sends in `grpc-status-details-bin`
  (the hint SPEC §3 asks clients to honour, and the one the gateway turns into
  `Retry-After`).
- A6 never retries a stream once response headers arrived (the call is
  "committed"); a watch that loses its connection mid-stream has to be resumed
  with `after_seq`, which only the client knows.
- A6 caps `maxAttempts` at 5 by default and has no total deadline apart from the
  call's own.

So the client implements the same ideas in the open, for every call: jittered
exponential backoff, a bounded number of attempts, a total deadline, and A6's
token-bucket throttle (`maxTokens` / `tokenRatio`), with the server's RetryInfo
as the lower bound of the wait.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable

import grpc

from runner_client.errors import RunnerError

#: ErrorInfo reasons of RESOURCE_EXHAUSTED that a later attempt can get past.
RETRYABLE_EXHAUSTED_REASONS = frozenset({"QUEUE_FULL"})
#: RESOURCE_EXHAUSTED reasons after which a stream resumes (with after_seq).
RESUMABLE_EXHAUSTED_REASONS = RETRYABLE_EXHAUSTED_REASONS | {"WATCHER_TOO_SLOW"}


def retryable(error: RunnerError) -> bool:
    """What SPEC §3 marks retryable: UNAVAILABLE (the runner unreachable, DRAINING,
    DB_UNAVAILABLE, DB_POOL_EXHAUSTED, CIRCUIT_OPEN) and RESOURCE_EXHAUSTED with
    QUEUE_FULL. Nothing else: not INVALID_ARGUMENT, NOT_FOUND, REQUEST_ID_REUSED,
    DEADLINE_EXCEEDED, the auth errors, INTERNAL."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason in RETRYABLE_EXHAUSTED_REASONS


def resumable(error: RunnerError) -> bool:
    """Whether a watch that delivered events may go on with after_seq after `error`:
    what is retryable, and a watcher ended for falling behind (WATCHER_TOO_SLOW)."""
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.reason in RESUMABLE_EXHAUSTED_REASONS
    return retryable(error)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How one call is retried.

    The n-th retry waits a delay drawn from `[(1 - jitter) * b, b]` where
    `b = min(max_backoff_s, initial_backoff_s * backoff_multiplier ** (n - 1))`,
    or, when the runner sent RetryInfo, at least its `retry_delay` (up to
    `1 + hint_jitter` times it, so that clients told the same delay do not come
    back together). At most `max_attempts` attempts in all; no wait ends and no
    attempt starts more than `deadline_s` after the first attempt (a wait that
    would end past it is not started: the error is raised at once).

    A stream that delivered an event starts a fresh budget: the attempts and the
    deadline count from the last event, so a long watch survives several restarts.
    """

    max_attempts: int = 8
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5
    hint_jitter: float = 0.2
    deadline_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0 or self.hint_jitter < 0.0:
            raise ValueError("jitter must be within [0, 1] and hint_jitter at least 0")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s or self.backoff_multiplier < 1:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s and backoff_multiplier >= 1")

    def backoff_bounds_s(self, retry: int) -> tuple[float, float]:
        """(low, high) of the delay before the `retry`-th retry (1-based) without a hint."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.backoff_multiplier ** max(0, retry - 1))
        return (1.0 - self.jitter) * base, base

    def delay_s(self, retry: int, hint_s: float | None, rng: random.Random) -> float:
        """The wait before the `retry`-th retry, honouring the server's hint."""
        low, high = self.backoff_bounds_s(retry)
        delay = rng.uniform(low, high)
        if hint_s is not None and hint_s > 0:
            delay = max(delay, hint_s * rng.uniform(1.0, 1.0 + self.hint_jitter))
        return delay


#: One attempt, no retry.
NO_RETRY = RetryPolicy(max_attempts=1)


class RetryThrottle:
    """gRPC's retryThrottling (gRFC A6), shared by every call of a client:
    `tokens` starts at `max_tokens`; a call failing with a retryable error takes
    one token, a successful call gives back `token_ratio`. While `tokens` is at or
    below half of `max_tokens`, failed calls are not retried (their error is
    raised at once), so a client never adds a retry storm to a runner in trouble.
    Thread-safe; never blocks."""

    def __init__(self, max_tokens: float = 20.0, token_ratio: float = 0.1) -> None:
        if max_tokens <= 0 or token_ratio <= 0:
            raise ValueError("max_tokens and token_ratio must be positive")
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self._tokens = self.max_tokens
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def record_success(self) -> None:
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def record_failure(self) -> None:
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1.0)

    def allows_retry(self) -> bool:
        with self._lock:
            return self._tokens > self.max_tokens / 2


@dataclasses.dataclass(frozen=True)
class RetryNotice:
    """What a client tells its `on_retry` callback before waiting to retry."""

    method: str
    attempt: int  # the attempt that failed (1-based)
    error: RunnerError
    delay_s: float
    resuming: bool  # a stream going on after the events it delivered


class Attempts:
    """The retry state of one call (or one stream with its resumptions).

    Use: `timeout_s()` before each attempt, `succeeded()` after a good answer,
    `progressed()` for each event a stream delivers, `failed(error)` after a
    failure: it returns the delay to wait before the next attempt, or None when
    the error must be raised (with `error.attempts` and `error.gave_up` set).
    """

    def __init__(
        self,
        method: str,
        policy: RetryPolicy,
        throttle: RetryThrottle,
        *,
        call_timeout_s: float | None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.method = method
        self.policy = policy
        self.throttle = throttle
        self.call_timeout_s = call_timeout_s
        self.on_retry = on_retry
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.count = 0  # attempts made since the start or the last progress
        self.total = 0  # attempts made in all
        self.started = clock()
        self._delivered = False  # the current attempt delivered something

    def begin(self) -> float | None:
        """Count an attempt; returns its timeout: the call timeout, cut to what is
        left of the retry deadline once this is a retry."""
        self.count += 1
        self.total += 1
        self._delivered = False
        if self.count == 1:
            return self.call_timeout_s
        left = max(0.001, self.started + self.policy.deadline_s - self.clock())
        return left if self.call_timeout_s is None else min(self.call_timeout_s, left)

    def succeeded(self) -> None:
        self.throttle.record_success()

    def progressed(self) -> None:
        """A stream delivered an event: what failed before is behind it. The
        current attempt becomes the first of a fresh budget, counted from now."""
        if not self._delivered:
            self._delivered = True
            self.throttle.record_success()
        self.count = 1
        self.started = self.clock()

    def failed(self, error: RunnerError, *, resuming: bool = False) -> float | None:
        error.attempts = self.total
        ok = resumable(error) if resuming else retryable(error)
        if not ok:
            return None
        self.throttle.record_failure()
        attempt = max(1, self.count)
        if attempt >= self.policy.max_attempts:
            error.gave_up = "attempts" if self.policy.max_attempts > 1 else None
            return None
        if not self.throttle.allows_retry():
            error.gave_up = "throttled"
            return None
        delay = self.policy.delay_s(attempt, error.retry_after_s, self.rng)
        if self.clock() + delay > self.started + self.policy.deadline_s:
            error.gave_up = "deadline"
            return None
        if self.on_retry is not None:
            self.on_retry(RetryNotice(self.method, attempt, error, delay, resuming))
        return delay
