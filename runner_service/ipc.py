"""Messages between the runner and its worker processes, and how they travel.

Every message is a small typed NamedTuple (immutable, and cheap to pickle); a frame is a 4-byte big-endian length
followed by the pickled message. The runner's end of a worker's socket is
non-blocking and driven by the event loop (`FrameReader` collects partial reads,
`Outbox` keeps what a partial write left), so a large message never blocks the
loop and a half-written message never wedges a worker. The worker's end is
blocking (`send_frame`, `recv_frame`). Frames are bounded in size by the reader:
a worker that announces a larger one is broken and gets replaced.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, NamedTuple

_HEADER = struct.Struct("!I")
_READ_CHUNK = 256 * 1024


# ------------------------------------------------------------ runner -> worker


class RunJob(NamedTuple):
    token: int
    run_id: str
    kind: str
    params: dict
    deadline: float | None  # seconds since the epoch


class Stop(NamedTuple):
    pass


# ------------------------------------------------------------ worker -> runner


class Ready(NamedTuple):
    pid: int


class Heartbeat(NamedTuple):
    token: int


class Progress(NamedTuple):
    token: int
    done: int
    total: int
    message: str


class Log(NamedTuple):
    token: int
    level: str
    message: str


class Done(NamedTuple):
    token: int
    result: bytes  # a serialized google.protobuf.Struct, within the result limit


class Cancelled(NamedTuple):
    token: int


class Failed(NamedTuple):
    token: int
    reason: str  # a stable ErrorInfo reason: JOB_FAILED, UNKNOWN_JOB_KIND, RESULT_TOO_LARGE...
    message: str  # for the client: no traceback, no server path
    detail: str = ""  # for the runner's log: the traceback


ToWorker = RunJob | Stop
FromWorker = Ready | Heartbeat | Progress | Log | Done | Cancelled | Failed


# ------------------------------------------------------------ framing


class FrameTooLarge(Exception):
    """The peer announced a frame over the reader's bound."""


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Turns the bytes read from a non-blocking socket into messages."""

    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def read_from(self, fd: int) -> tuple[list[Any], bool, Exception | None]:
        """Read what is available on fd; returns (messages, eof, error): the whole
        messages before any broken frame, whether the peer closed its end, and
        what was wrong with the first broken frame (FrameTooLarge, or what
        unpickling raised). Raises OSError on a broken socket."""
        eof = False
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            self._buffer += chunk
            if len(chunk) < _READ_CHUNK:
                break
        messages, error = self._parse()
        return messages, eof, error

    def _parse(self) -> tuple[list[Any], Exception | None]:
        messages = []
        buffer = self._buffer
        start = 0
        error: Exception | None = None
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            if size > self._max_frame:
                error = FrameTooLarge(f"a frame of {size} bytes (at most {self._max_frame})")
                break
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            try:
                messages.append(pickle.loads(memoryview(buffer)[start + _HEADER.size : end]))
            except Exception as exc:  # noqa: BLE001 - a frame that is not a message: the peer is broken
                error = exc
                break
            start = end
        if error is not None:
            buffer.clear()  # nothing after a broken frame can be trusted
        elif start:
            del buffer[:start]
        return messages, error


class Outbox:
    """Bytes waiting to be written to a non-blocking socket, in order."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, frame: bytes) -> None:
        self._pending += frame

    def flush(self, fd: int) -> bool:
        """Write as much as the socket takes; True once everything is written.
        Raises OSError (BrokenPipeError...) when the peer is gone."""
        pending = self._pending
        while pending:
            try:
                written = os.write(fd, pending)
            except BlockingIOError:
                return False
            del pending[:written]
        return True


# ------------------------------------------------------------ the worker's blocking end


def send_frame(fd: int, message: Any) -> None:
    """Write one whole message on a blocking fd (the worker's end)."""
    view = memoryview(encode(message))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def recv_frame(fd: int) -> Any:
    """Read one whole message from a blocking fd; raises EOFError when the peer is gone."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        chunk = os.read(fd, min(size, _READ_CHUNK))
        if not chunk:
            raise EOFError("the peer closed its end")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)
