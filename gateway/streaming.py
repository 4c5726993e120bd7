"""Server-streaming RPCs over HTTP: newline-delimited JSON, or Server-Sent Events.

- NDJSON (``application/x-ndjson``, the default): one line per event, ``{"result": <event>}``;
  an error after the stream started is the last line, ``{"error": <google.rpc.Status>}``.
- SSE (``text/event-stream``, when ``Accept`` asks for it): ``id:`` is the event's ``seq``,
  ``data:`` the event as JSON; an error is ``event: error``; ``: keep-alive`` comment lines
  every ``keepalive_s`` while the stream is idle, so idle proxies keep it open.

The HTTP status is decided by what the upstream says within ``stream_open_wait_s``: an error by
then (NOT_FOUND, INVALID_ARGUMENT, QUEUE_FULL, an unreachable runner, a short deadline) gets its
own HTTP status and JSON body; after that the status is 200 and errors travel in the stream.

Cancellation: the response body races a listener for ``http.disconnect`` (as Starlette's
StreamingResponse does); when the caller goes away the upstream call is cancelled at once, so an
ExecuteRun's run ends CANCELLED. The ASGI call of :class:`EventStream` is the one owner of that
cancellation: it cancels the call and both of its tasks in its ``finally``.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import errors, metadata, transcode
from gateway.rules import HttpRule
from gateway.settings import Settings

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def wants_sse(accept: str) -> bool:
    """True when an Accept header lists ``text/event-stream`` (with q > 0).

    >>> wants_sse("text/event-stream"), wants_sse("application/json, text/event-stream;q=0.5"), wants_sse("*/*")
    (True, True, False)
    """
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() == SSE and not any(
            p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params
        ):
            return True
    return False


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class NdjsonEncoder:
    media_type = NDJSON
    keepalive = None  # NDJSON has no comment syntax: no keep-alive lines

    def __init__(self, rule: HttpRule) -> None:
        self._rule = rule

    def event(self, message: Message) -> bytes:
        return (_dumps({"result": transcode.response_json(self._rule, message)}) + "\n").encode()

    def error(self, value: status_pb2.Status) -> bytes:
        return (_dumps({"error": errors.status_json(value)}) + "\n").encode()


class SseEncoder:
    media_type = SSE
    keepalive = b": keep-alive\n\n"

    def __init__(self, rule: HttpRule) -> None:
        self._rule = rule

    def event(self, message: Message) -> bytes:
        # JSON from json.dumps has no raw newlines, so one data: line holds the whole event.
        data = _dumps(transcode.response_json(self._rule, message))
        seq = getattr(message, "seq", None)
        head = f"id: {seq}\n" if isinstance(seq, int) else ""
        return f"{head}data: {data}\n\n".encode()

    def error(self, value: status_pb2.Status) -> bytes:
        return f"event: error\ndata: {_dumps(errors.status_json(value))}\n\n".encode()


async def open_stream(
    rule: HttpRule, call, upstream: str, sse: bool, settings: Settings, headers: dict
) -> Response | EventStream:
    """Wait up to ``stream_open_wait_s`` for the call's first event, then answer: an error
    response for an early error, else an :class:`EventStream` (which owns the call from then on).
    """
    first = asyncio.ensure_future(call.read())
    try:
        done, _ = await asyncio.wait({first}, timeout=settings.stream_open_wait_s)
    except asyncio.CancelledError:
        call.cancel()
        first.cancel()
        raise
    if done:
        try:
            first.result()
        except grpc.aio.AioRpcError as err:
            extra = metadata.to_headers(err.initial_metadata(), err.trailing_metadata())
            return errors.response(errors.from_rpc_error(err, upstream), headers={**extra, **headers})
        headers = {**metadata.to_headers(await call.initial_metadata()), **headers}
    encoder = SseEncoder(rule) if sse else NdjsonEncoder(rule)
    return EventStream(call, first, encoder, upstream, settings.keepalive_s, headers)


class EventStream:
    """An ASGI response streaming a call's events; it cancels the call when it ends early."""

    def __init__(
        self, call, pending: asyncio.Future, encoder, upstream: str, keepalive_s: float, headers: dict
    ) -> None:
        self._call = call
        self._pending = pending  # the outstanding call.read(); never cancelled while waiting
        self._encoder = encoder
        self._upstream = upstream
        self._keepalive_s = keepalive_s
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", self._encoder.media_type.encode()), (b"cache-control", b"no-cache")]
        headers.append((b"x-accel-buffering", b"no"))  # nginx: do not buffer the stream
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self._headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pump = asyncio.ensure_future(self._pump(send))
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whatever ended first -- the stream, the caller, or our own cancellation --
            # the call must not outlive the response. Cancelling a finished call is a no-op.
            self._call.cancel()
            for task in (pump, listener, self._pending):
                task.cancel()
            await asyncio.gather(pump, listener, self._pending, return_exceptions=True)
        failure = None if pump.cancelled() else pump.exception()
        # OSError: the server reports a send to a client that has gone (ASGI 2.4); nothing to tell.
        if failure is not None and not isinstance(failure, OSError):
            raise failure

    async def _pump(self, send: Send) -> None:
        keepalive = self._encoder.keepalive
        while True:
            done, _ = await asyncio.wait({self._pending}, timeout=self._keepalive_s if keepalive else None)
            if not done:
                await send({"type": "http.response.body", "body": keepalive, "more_body": True})
                continue
            try:
                item = self._pending.result()
            except grpc.aio.AioRpcError as err:
                chunk = self._encoder.error(errors.from_rpc_error(err, self._upstream))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                break
            if item is grpc.aio.EOF:
                break
            await send({"type": "http.response.body", "body": self._encoder.event(item), "more_body": True})
            self._pending = asyncio.ensure_future(self._call.read())
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
