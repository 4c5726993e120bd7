"""Typed errors of the client: one base class, read once from a gRPC status.

The runner puts its rich error in the call's trailers as a `google.rpc.Status`
(`grpc-status-details-bin`): an `ErrorInfo` with a stable `reason`, a `RetryInfo`
where a retry can succeed, a `BadRequest` with field violations. `from_rpc_error`
reads all three, so a caller never parses trailers or message text:

    try:
        client.submit_run(spec)
    except runner_client.InvalidArgument as exc:
        for violation in exc.field_violations:
            print(violation.field, violation.description)
    except runner_client.RunnerError as exc:
        print(exc.code.name, exc.reason, exc.retry_after_s)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailer that carries the serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One field of a request that broke a limit of the schema."""

    field: str
    description: str


class RunnerError(Exception):
    """Base of every error the client raises for a failed call.

    - `code`: the gRPC status code (`grpc.StatusCode`).
    - `reason`: `ErrorInfo.reason` when the runner gave one (`QUEUE_FULL`,
      `DRAINING`, `CIRCUIT_OPEN`, `REQUEST_ID_REUSED`, ...), else None.
    - `message`: the status message, safe to show to a person.
    - `retry_after_s`: `RetryInfo.retry_delay` in seconds when the runner sent one.
    - `field_violations`: `BadRequest` field violations (INVALID_ARGUMENT).
    - `metadata`: `ErrorInfo.metadata` (e.g. `pending` for QUEUE_FULL).
    - `attempts`: how many attempts the client made before giving up (1: no retry).
    - `gave_up`: why the client stopped retrying a retryable error: "attempts",
      "deadline" or "throttled"; None when the error is not retryable or was
      the only attempt allowed.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        retry_after_s: float | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code  # type: ignore[misc]  # an instance may narrow the class's default
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.field_violations = tuple(field_violations)
        self.metadata = dict(metadata or {})
        self.attempts = 1
        self.gave_up: str | None = None

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        for violation in self.field_violations:
            if f"{violation.field}: {violation.description}" not in self.message:
                text += f"\n  {violation.field}: {violation.description}"
        if self.gave_up is not None:
            text += f" (gave up after {self.attempts} attempt{'s' if self.attempts != 1 else ''}: {self.gave_up})"
        return text


class InvalidArgument(RunnerError):
    """The request breaks a limit of the schema; `field_violations` say where. Never retried."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RunnerError):
    """No such run or scenario. Never retried."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RunnerError):
    """`REQUEST_ID_REUSED`: the request_id names a run submitted with another request."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(RunnerError):
    """`QUEUE_FULL` (retried, honouring `retry_after_s`) or `WATCHER_TOO_SLOW`
    (a watch resumes after it)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RunnerError):
    """The runner could not be reached, or refused for a while (`DRAINING`,
    `DB_UNAVAILABLE`, `DB_POOL_EXHAUSTED`, `CIRCUIT_OPEN`). Retried."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RunnerError):
    """The call's deadline passed. Not retried (the deadline is the caller's budget)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(RunnerError):
    """An admin call without a (well-formed) bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RunnerError):
    """An admin call with a token the runner does not accept, or the admin API is off."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(RunnerError):
    """The runner cannot do this now (e.g. a malformed scenario file)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Cancelled(RunnerError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unimplemented(RunnerError):
    """The runner does not implement this call."""

    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[RunnerError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        FailedPrecondition,
        Cancelled,
        Unimplemented,
    )
}


def rich_status(call: Any) -> status_pb2.Status | None:
    """The google.rpc.Status in a failed call's trailers, or None (no details, or
    bytes that do not parse)."""
    try:
        trailers = call.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - a call that never started has no trailers to give
        return None
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError: treat as absent
                return None
    return None


def make_error(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None = None,
) -> RunnerError:
    """A RunnerError of the class for `code`, with what `status` details say."""
    reason = None
    retry_after_s = None
    violations: list[FieldViolation] = []
    metadata: dict[str, str] = {}
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason = info.reason or None
            metadata = dict(info.metadata)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    cls = _BY_CODE.get(code, RunnerError)
    return cls(
        message,
        code=code,
        reason=reason,
        retry_after_s=retry_after_s,
        field_violations=tuple(violations),
        metadata=metadata,
    )


def from_rpc_error(exc: grpc.RpcError) -> RunnerError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else None
    return make_error(code or grpc.StatusCode.UNKNOWN, details or str(code), rich_status(exc))


def stream_ended_early(run_id: str, last_seq: int) -> Unavailable:
    """A stream that ended without its terminal event: treated as a lost connection."""
    return Unavailable(f"the event stream of run {run_id} ended before its terminal event (after seq {last_seq})")
