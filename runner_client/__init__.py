"""The Python client of the runner, and the `runner` command line (runner_client.cli).

- RunnerClient (blocking) and AsyncRunnerClient (asyncio): every RPC of
  RunnerService and AdminService, retrying what SPEC §3 marks retryable,
  resuming lost watches with after_seq.
- specs: run specs and submissions from plain values.
- errors: RunnerError and its subclasses, one per gRPC code.
- retry: RetryPolicy, RetryThrottle, and why the client retries itself.
"""

from runner_client.async_client import AsyncRunnerClient
from runner_client.connection import DEFAULT_TARGET, TARGET_ENV, TlsFiles
from runner_client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RunnerError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from runner_client.events import TERMINAL_STATES, EventCursor, state_name, terminal_state
from runner_client.retry import NO_RETRY, RetryNotice, RetryPolicy, RetryThrottle
from runner_client.sync_client import RunnerClient

__all__ = [
    "DEFAULT_TARGET",
    "NO_RETRY",
    "TARGET_ENV",
    "TERMINAL_STATES",
    "AlreadyExists",
    "AsyncRunnerClient",
    "Cancelled",
    "DeadlineExceeded",
    "EventCursor",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryNotice",
    "RetryPolicy",
    "RetryThrottle",
    "RunnerClient",
    "RunnerError",
    "TlsFiles",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "state_name",
    "terminal_state",
]
