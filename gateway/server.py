"""The HTTP/1.1 server: uvicorn's httptools protocol, bounded against hostile clients.

uvicorn with httptools serves the gateway because it is the fastest way to serve ASGI here. Out
of the box it trusts its clients: it puts no limit on the size or the number of request headers
(httptools keeps a header until its end, so one 100 MB header is read whole), and no timer runs
while a request head or body arrives, so a connection that sends a byte now and then
(slowloris), or a body shorter than its Content-Length, is held for ever. No uvicorn setting
closes that: ``limit_concurrency`` answers 503 to requests past a count, after reading their
heads; ``timeout_keep_alive`` runs only between requests. Nor does another server alone:

- uvicorn's h11 parser, with ``h11_max_incomplete_event_size``, bounds the bytes of a head (and
  answers 400, not 431), has no head or body deadline either, and parses in pure Python;
- hypercorn's ``read_timeout`` is a time per read, which a client sending a byte within each
  period never reaches;
- granian (Rust, not installed here) bounds header reads but would change how the gateway runs
  and is tested (its own worker processes) for what a small layer gives.

So this module adds that layer: :class:`BoundedProtocol`, a subclass of uvicorn's
``HttpToolsProtocol``, and :func:`config`, the uvicorn configuration that uses it.

- The bytes of a request head are counted as they arrive, before httptools buffers them:
  past ``max_header_bytes`` the request gets 431. Header lines are counted the same way (a
  ``bytes.count``), and the headers httptools has parsed once the head is complete: past
  ``max_header_count``, 431.
- A head must arrive within ``head_timeout_s`` of the connection's start or of its own first
  byte, and a body within ``body_timeout_s`` of the end of its head: else 408.
- A body is parsed up to ``max_body_bytes`` plus ``max_header_bytes`` (chunk framing and
  trailers, which httptools keeps whole like headers): beyond, 413, or the end of the
  connection when the route has answered already (it answers 413 itself when it reads a body).
- A connection past ``max_connections`` open at once gets 503 and is closed.
- A refusal is the JSON ``google.rpc.Status`` every other error is, with ``Connection: close``.
  Once it is written, the write side is shut and whatever the client still sends is read and
  dropped for up to :data:`LINGER_S` before the socket is closed: closing a socket with unread
  input resets the connection, and the client could lose the answer before reading it.

Memory per connection is then bounded by these limits (plus one read, at most 256 KiB), and the
number of connections by ``max_connections``. Cost on the fast path (a whole request in one
read): a byte count, a line count and a few comparisons per request, under 2 µs measured on top
of httptools' own 7 µs; timers are armed once per connection, and per request only when a head
or body is still incomplete at the end of a read.

HTTPS (``tls_cert_file``, ``tls_key_file``; ``tls_client_ca_file`` requires client certificates):
each connection is TLS (asyncio's ``SSLProtocol``) around the same bounded protocol, so every
bound above applies to the decrypted bytes. uvicorn's own TLS set-up is not used because it leaves
the handshake outside every bound: no deadline but the event loop's 60 s, and connections still in
their handshake counted by no cap. Here the handshake must end within ``head_timeout_s`` (then the
head's own deadline starts), a connection counts towards ``max_connections`` from its TCP accept
(past the cap it is closed at once: no HTTP answer can precede a handshake), and the TLS close
waits at most :data:`LINGER_S` for the client's reply. A client without a certificate the client
CA signed fails the handshake and never reaches the application. Each TLS connection adds its
TLS state and a 256 KiB read buffer to the memory bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import json
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
import uvicorn
from google.rpc import code_pb2
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import errors
from gateway.settings import Settings
from runner_service import tls

#: How long a refused connection's input is still read (and dropped) before it is closed.
LINGER_S = 2.0

# What the next bytes on a connection are: (part of) a request head, a request body, or input
# the gateway no longer reads (the connection was refused and is closing).
_HEAD, _BODY, _REFUSED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a client may send; see the Settings fields of the same names."""

    max_header_bytes: int
    max_header_count: int
    head_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            head_timeout_s=settings.head_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
        )


def config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration serving ``app`` with the limits of ``settings`` (over TLS when
    ``settings`` has a certificate); ``options`` are passed on to ``uvicorn.Config`` (host, port,
    log settings, ...). Raises ValueError for a TLS file that is unreadable or not PEM, or a key
    that does not match its certificate."""
    limits = Limits.of(settings)
    http: Any = protocol_class(limits)
    context = ssl_context(settings)
    if context is not None:
        http = tls_protocol(http, context, limits)
    return uvicorn.Config(app, http=http, ws="none", **options)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS server context of ``settings`` (None: plain HTTP); with a client CA, a client
    must present a certificate it signed."""
    if not settings.tls_cert_file:
        return None
    context = tls.server_context(
        "GATEWAY_TLS_CERT_FILE", settings.tls_cert_file, "GATEWAY_TLS_KEY_FILE", settings.tls_key_file
    )
    context.set_alpn_protocols(["http/1.1"])
    if settings.tls_client_ca_file:
        ca = tls.load_ca("GATEWAY_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file)
        context.load_verify_locations(cadata=ca.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_protocol(
    http: type[BoundedProtocol], context: ssl.SSLContext, limits: Limits
) -> Callable[..., asyncio.BaseProtocol]:
    """uvicorn's protocol factory for HTTPS: each connection is a :class:`_TlsConnection` around
    an ``http`` protocol (uvicorn calls it with the keywords it gives a protocol class)."""
    open_connections: set[_TlsConnection] = set()

    def create(**kwargs: Any) -> asyncio.BaseProtocol:
        loop = kwargs.get("_loop") or asyncio.get_running_loop()
        return _TlsConnection(loop, http(**kwargs), context, limits, open_connections)

    return create


class _TlsConnection(sslproto.SSLProtocol):
    """asyncio's TLS protocol with the handshake and the close bounded in time, and the
    connection counted from its TCP accept (see the module's documentation)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: BoundedProtocol,
        context: ssl.SSLContext,
        limits: Limits,
        open_connections: set[_TlsConnection],
    ) -> None:
        super().__init__(
            loop,
            app,
            context,
            None,  # type: ignore[arg-type]  # no waiter: nobody awaits the handshake
            server_side=True,
            ssl_handshake_timeout=limits.head_timeout_s,  # type: ignore[arg-type]  # seconds, any number
            ssl_shutdown_timeout=LINGER_S,
        )
        self._open = open_connections
        self._max_connections = limits.max_connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self._open) >= self._max_connections:
            transport.abort()  # type: ignore[attr-defined]
            return
        self._open.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._open.discard(self)
        super().connection_lost(exc)


def protocol_class(limits: Limits) -> type[BoundedProtocol]:
    """A :class:`BoundedProtocol` with ``limits`` (uvicorn makes one protocol per connection)."""

    class Bounded(BoundedProtocol):
        pass

    Bounded.limits = limits
    Bounded.answers = _Answers.of(limits)
    return Bounded


class _Refused(Exception):
    """Raised from a parser callback, after the refusal is written, to stop parsing."""


@dataclasses.dataclass(frozen=True)
class _Answers:
    """The refusals, rendered once: status line, then (after the server's default headers) the
    rest of the head and the body."""

    too_large: tuple[bytes, bytes]
    too_many: tuple[bytes, bytes]
    body_too_large: tuple[bytes, bytes]
    head_late: tuple[bytes, bytes]
    body_late: tuple[bytes, bytes]
    busy: tuple[bytes, bytes]

    @classmethod
    def of(cls, limits: Limits) -> _Answers:
        return cls(
            too_large=_answer(
                431,
                code_pb2.RESOURCE_EXHAUSTED,
                f"the request head is larger than the limit of {limits.max_header_bytes} bytes",
            ),
            too_many=_answer(
                431,
                code_pb2.RESOURCE_EXHAUSTED,
                f"the request has more headers than the limit of {limits.max_header_count}",
            ),
            body_too_large=_answer(
                413,
                code_pb2.RESOURCE_EXHAUSTED,
                f"the request body is larger than the limit of {limits.max_body_bytes} bytes",
            ),
            head_late=_answer(
                408,
                code_pb2.DEADLINE_EXCEEDED,
                f"the request head did not arrive within {limits.head_timeout_s:g} s",
            ),
            body_late=_answer(
                408,
                code_pb2.DEADLINE_EXCEEDED,
                f"the request body did not arrive within {limits.body_timeout_s:g} s",
            ),
            busy=_answer(
                503,
                code_pb2.UNAVAILABLE,
                f"the gateway has {limits.max_connections} connections open, its limit; try again later",
                retry_after_s=1,
            ),
        )


def _answer(status: int, code: int, message: str, retry_after_s: int | None = None) -> tuple[bytes, bytes]:
    body = json.dumps(errors.status_json(errors.status(code, message)), separators=(",", ":")).encode()
    line = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("latin-1")
    rest = [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
    if retry_after_s is not None:
        rest.append(b"retry-after: %d" % retry_after_s)
    return line, b"\r\n".join(rest) + b"\r\n\r\n" + body


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on request heads, bodies and connections.

    Invariants: ``_deadline`` is the one timer of the connection (head, body, or linger after a
    refusal), or None. ``_read`` counts the bytes that arrived of the current head (while
    ``_reading`` is ``_HEAD``) or body (``_BODY``), ``_head_lines`` the lines of the head; they
    may over-count (one read can end a head and start a body) and under-count by at most the
    tail of the read that ended the previous part.
    """

    limits: ClassVar[Limits]
    answers: ClassVar[_Answers]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading = _HEAD
        self._read = 0
        self._head_lines = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._upgrade_warned = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(self.answers.busy)
            return
        # The first head's deadline runs from the connection's start: a client that connects
        # and sends nothing is not kept either.
        self._deadline = self.loop.call_later(self.limits.head_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        reading = self._reading
        if reading == _REFUSED:
            return  # read and dropped until the linger ends
        self._unset_keepalive_if_required()
        self._read += len(data)
        if reading == _HEAD:
            self._head_lines += data.count(b"\n")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                return
            # Not upgraded (the request was served as plain HTTP/1.1): what follows cannot be
            # parsed, but still counts and is timed below. Warned once, not per read.
            if not self._upgrade_warned:
                self._upgrade_warned = True
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._reading != _REFUSED:  # not one of our refusals: a malformed request
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        # The read is parsed: bound what httptools holds of an unfinished head, or of a body
        # nobody reads (its chunk trailers are kept whole), and time what is still to come.
        reading = self._reading
        limits = self.limits
        if reading == _HEAD:
            if self._read > limits.max_header_bytes:
                self._refuse(self.answers.too_large)
            elif self._head_lines > limits.max_header_count + 2:  # + request line, blank line
                self._refuse(self.answers.too_many)
            elif self._read and self._deadline is None:
                self._deadline = self.loop.call_later(limits.head_timeout_s, self._head_late)
        elif reading == _BODY:
            # Room beyond the body limit for chunk framing and trailers: the application
            # answers 413 itself when it reads the body.
            if self._read > limits.max_body_bytes + limits.max_header_bytes:
                self._refuse(self.answers.body_too_large)
            elif self._deadline is None:
                self._deadline = self.loop.call_later(limits.body_timeout_s, self._body_late)

    # ------------------------------------------------------------ httptools callbacks

    def on_headers_complete(self) -> None:
        deadline = self._deadline
        if deadline is not None:
            deadline.cancel()
            self._deadline = None
        limits = self.limits
        if len(self.headers) > limits.max_header_count:
            self._refuse(self.answers.too_many)
            raise _Refused
        # The counted bytes may include a body read with the head: measure the head itself.
        if self._read > limits.max_header_bytes and self._head_size() > limits.max_header_bytes:
            self._refuse(self.answers.too_large)
            raise _Refused
        self._reading = _BODY
        self._read = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = _HEAD
        self._read = 0
        self._head_lines = 0
        deadline = self._deadline
        if deadline is not None:  # the body's
            deadline.cancel()
            self._deadline = None

    # ------------------------------------------------------------ deadlines and refusals

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _head_late(self) -> None:
        self._deadline = None
        if self._reading == _HEAD:
            self._refuse(self.answers.head_late)

    def _body_late(self) -> None:
        self._deadline = None
        if self._reading == _BODY:
            self._refuse(self.answers.body_late)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, answer: tuple[bytes, bytes]) -> None:
        """Answer ``answer`` (unless the request has had its answer, or another response is under
        way), stop reading requests, and close the connection after the linger. Idempotent."""
        reading = self._reading
        if reading == _REFUSED:
            return
        self._reading = _REFUSED
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        self.pipeline.clear()
        cycle = self.cycle  # while a head arrives, the previous request's; else this one's
        if cycle is None:
            answering = True
        elif reading == _HEAD:
            answering = cycle.response_complete  # else the answer would go before that response
        else:
            answering = not cycle.response_started  # else this request has had its answer
        if cycle is not None and not cycle.response_complete:
            # The application sees the client gone: receive() returns http.disconnect and its
            # sends are dropped, so nothing follows the refusal on the wire.
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if answering:
            line, rest = answer
            defaults = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
            transport.write(line + defaults + rest)
        elif cycle is not None and not cycle.response_complete:
            transport.close()  # a response is under way: nothing can follow it
            return
        # Keep draining what the client sends for a while, so it can read the answer it has.
        self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_S, transport.close)
