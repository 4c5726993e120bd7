"""gRPC status → HTTP, in one place (SPEC §3).

Every error the gateway answers, its own or the runner's, is a ``google.rpc.Status`` in JSON
(``code``, ``message``, ``details`` with ``@type``). The HTTP status comes from one table, the
one grpc-gateway uses, so REST callers who know that convention are not surprised; the gateway's
own errors that have no gRPC twin (405 method not allowed, 413 body too large, 415 body not
JSON, 431 too much metadata) set their HTTP status explicitly. The refusals of the HTTP server
itself (408, 431 and 503 before a request reaches the application) are rendered by
:mod:`gateway.server` with :func:`status_json` too. ``Retry-After`` comes from a ``RetryInfo``
detail, rounded up to seconds.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.responses import JSONResponse

#: gRPC code → HTTP status, as grpc-gateway maps them.
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}


class GatewayError(Exception):
    """An error the gateway answers itself, before or instead of an upstream call."""

    def __init__(self, status: status_pb2.Status, http_status: int | None = None, headers: dict | None = None) -> None:
        super().__init__(status.message)
        self.status = status
        self.http_status = http_status if http_status is not None else http_status_of(status.code)
        self.headers = headers or {}


def http_status_of(code: int) -> int:
    """The HTTP status for a gRPC code number; 500 for a code outside the table."""
    return HTTP_STATUS.get(code, 500)


def status(code: int, message: str, *details) -> status_pb2.Status:
    """A ``google.rpc.Status`` with ``details`` (messages) packed into ``Any``."""
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code, message=message, details=packed)


def bad_request(violations, message: str | None = None) -> GatewayError:
    """400 INVALID_ARGUMENT with a BadRequest detail listing ``violations``."""
    violations = list(violations)
    if message is None:
        first = violations[0]
        message = f"invalid request: {first.field}: {first.description}" if first.field else first.description
        if len(violations) > 1:
            message += f" (and {len(violations) - 1} more)"
    return GatewayError(
        status(code_pb2.INVALID_ARGUMENT, message, error_details_pb2.BadRequest(field_violations=violations))
    )


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        status(code_pb2.RESOURCE_EXHAUSTED, f"the request body is larger than the limit of {limit} bytes"), 413
    )


def unsupported_media_type(content_type: str | None) -> GatewayError:
    """415 for a request body that does not say it is JSON."""
    if content_type is None:
        message = "the request body must be JSON, sent with Content-Type: application/json"
    else:
        message = (
            "the request body must be JSON: Content-Type must be application/json (optionally with "
            f"charset=utf-8), not {content_type[:100]!r}"
        )
    return GatewayError(status(code_pb2.INVALID_ARGUMENT, message), 415)


def header_too_large(message: str) -> GatewayError:
    """431 for request headers the gateway will not pass on."""
    return GatewayError(status(code_pb2.RESOURCE_EXHAUSTED, message), 431)


def from_rpc_error(err: grpc.aio.AioRpcError, upstream: str) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a failed call: the rich one the server sent
    (``grpc-status-details-bin``) or one built from the code and message.

    A channel-level UNAVAILABLE (no server answered) gets a message naming the upstream.
    """
    try:
        rich = rpc_status.from_call(err)
    except ValueError:  # the details disagree with the call's code or message
        rich = None
    if rich is not None:
        return rich
    code = err.code().value[0]
    message = err.details() or err.code().name
    if code == code_pb2.UNAVAILABLE:
        message = f"the runner at {upstream} is unavailable: {message}"
    return status_pb2.Status(code=code, message=message)


def status_json(value: status_pb2.Status) -> dict:
    """The JSON form of a ``google.rpc.Status``; details carry their ``@type``."""
    try:
        return json_format.MessageToDict(value, preserving_proto_field_name=False)
    except (TypeError, KeyError, json_format.Error):
        # A detail of a type this process does not know: keep code and message.
        return {"code": value.code, "message": value.message, "details": []}


def retry_after_s(value: status_pb2.Status) -> int | None:
    """Whole seconds from a RetryInfo detail, rounded up (at least 1), or None."""
    for holder in value.details:
        if holder.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            holder.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(1, math.ceil(delay))
    return None


def response(value: status_pb2.Status, http_status: int | None = None, headers: dict | None = None) -> JSONResponse:
    """The HTTP error response for a status: JSON body, mapped status, Retry-After."""
    out = dict(headers or {})
    retry = retry_after_s(value)
    if retry is not None:
        out["Retry-After"] = str(retry)
    return JSONResponse(
        status_json(value),
        status_code=http_status if http_status is not None else http_status_of(value.code),
        headers=out,
    )


def gateway_response(err: GatewayError, headers: dict | None = None) -> JSONResponse:
    return response(err.status, err.http_status, {**err.headers, **(headers or {})})
