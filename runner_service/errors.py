"""Typed errors of the runner and their one mapping to gRPC statuses with rich details."""

from __future__ import annotations

from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "runner.v1"


class RunnerError(Exception):
    """Base of every error a client may see. Subclasses set the gRPC code."""

    code = grpc.StatusCode.INTERNAL
    reason: str | None = None
    retry_after_s: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list:
        out = []
        if self.reason:
            out.append(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata()))
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            out.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return out

    def metadata(self) -> dict[str, str]:
        return {}


class InvalidArgument(RunnerError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list, message: str | None = None) -> None:
        self.violations = list(violations)
        if message is None:
            first = self.violations[0]
            message = f"invalid request: {first.field}: {first.description}"
            if len(self.violations) > 1:
                message += f" (and {len(self.violations) - 1} more)"
        super().__init__(message)

    def details(self) -> list:
        return [error_details_pb2.BadRequest(field_violations=self.violations)]


class MalformedRequest(RunnerError):
    """The request bytes are not a valid message of the method's request type
    (corrupt wire format, invalid UTF-8 in a string field, nesting too deep)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, type_name: str, cause: str = "") -> None:
        message = f"request is not a valid {type_name} message"
        super().__init__(f"{message} ({cause})" if cause else message)
        self.type_name = type_name


class NotFound(RunnerError):
    code = grpc.StatusCode.NOT_FOUND


class RequestIdReused(RunnerError):
    """A request_id (idempotency key) already names a run submitted with another
    request. Retrying cannot succeed: the client must pick a new key."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "REQUEST_ID_REUSED"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was already used with another request "
            "(a different spec, labels or timeout); use a new request_id for a new run"
        )
        self.request_id = request_id

    def metadata(self) -> dict[str, str]:
        return {"request_id": self.request_id}


class Internal(RunnerError):
    """An unexpected failure. The client sees only a reference; the log holds the
    traceback under the same reference."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, reference: str) -> None:
        super().__init__(f"internal error (reference {reference})")
        self.reference = reference


class QueueFull(RunnerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUEUE_FULL"

    def __init__(self, pending: int, retry_after_s: float = 1.0) -> None:
        super().__init__(f"Job queue full. {pending} jobs pending. Try again later.")
        self.pending = pending
        self.retry_after_s = retry_after_s

    def metadata(self) -> dict[str, str]:
        return {"pending": str(self.pending)}


class Draining(RunnerError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "DRAINING"
    retry_after_s = 1.0

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry on another replica")


class StoreUnavailable(RunnerError):
    """A database failure a retry may get past: DB_UNAVAILABLE (transient),
    DB_POOL_EXHAUSTED (every connection busy) or CIRCUIT_OPEN (calls refused
    until the breaker half-opens; the retry hint is the time until then)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason: str | None = "DB_UNAVAILABLE"
    retry_after_s: float | None = 0.5

    _MESSAGES: ClassVar[dict[str, str]] = {
        "DB_UNAVAILABLE": "the database is unavailable; retry later",
        "DB_POOL_EXHAUSTED": "every database connection is busy; retry shortly",
        "CIRCUIT_OPEN": "the database is failing and calls are refused for now; retry after the hinted delay",
    }

    @classmethod
    def from_store(cls, exc: Exception) -> StoreUnavailable:
        """The client's view of a store error: its reason and retry hint, no driver text."""
        reason = getattr(exc, "reason", "DB_UNAVAILABLE")
        error = cls(cls._MESSAGES.get(reason, cls._MESSAGES["DB_UNAVAILABLE"]))
        error.reason = reason if reason in cls._MESSAGES else "DB_UNAVAILABLE"
        error.retry_after_s = float(getattr(exc, "retry_after_s", 0.5) or 0.5)
        return error


class DeadlineExceeded(RunnerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(RunnerError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(RunnerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RunnerError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(RunnerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class WatcherTooSlow(RunnerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "WATCHER_TOO_SLOW"

    def __init__(self, last_seq: int) -> None:
        super().__init__(f"watcher fell too far behind; resume with after_seq={last_seq}")
        self.last_seq = last_seq

    def metadata(self) -> dict[str, str]:
        return {"after_seq": str(self.last_seq)}


def to_status_proto(err: RunnerError) -> status_pb2.Status:
    packed = []
    for detail in err.details():
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=packed)


def to_grpc_status(err: RunnerError) -> grpc.Status:
    return rpc_status.to_status(to_status_proto(err))


def error_status(message: str, reason: str, code: int = code_pb2.UNKNOWN) -> status_pb2.Status:
    """A google.rpc.Status for a run's own error (stored on the run, not raised)."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    return status_pb2.Status(code=code, message=message, details=[info])
