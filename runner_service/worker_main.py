"""The body of a worker process: receive a run, execute its job, report back.

Kept free of grpc and the database: a worker imports only the job machinery.
The messages are the dataclasses of ipc.py, framed on a blocking socket.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import traceback
from typing import Any

from google.protobuf import struct_pb2

from runner_service import ipc, jobs
from runner_service.context import JobCancelled, JobContext

MAX_MESSAGE_CHARS = 2000
MAX_DETAIL_CHARS = 8000
PR_SET_PDEATHSIG = 1
# An absolute path in an exception's text (a file the job opened, a module's
# location): the client sees a placeholder, the runner's log the full text.
_PATH = re.compile(r"(?<![\w.])(?:/[\w.+-]+){2,}/?|(?<![\w.])/[\w.+-]+\.\w+")


def public_message(text: str) -> str:
    """An error text fit for a client: server paths removed, bounded."""
    text = _PATH.sub("<path>", text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def _die_with_parent() -> None:
    """Never outlive the runner, even while a job ignores everything: the worker's
    parent (the forkserver) exits when the runner dies, and then so do we."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() == 1:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _heartbeat(send, current: list[int], interval_s: float) -> None:
    """Beat for the running job from a thread: it keeps beating while the job
    computes, and stops only when the whole process is stuck (or stopped)."""
    while True:
        time.sleep(interval_s)
        token = current[0]
        if token:
            try:
                send(ipc.Heartbeat(token))
            except OSError:
                return


def result_bytes(result: object) -> bytes:
    """A job's return value as a serialized Struct: a dict as it is, anything else
    as {"value": ...}. Raises ValueError/TypeError when it is not JSON-able."""
    struct = struct_pb2.Struct()
    if result is not None:
        mapping: dict[str, Any] = result if isinstance(result, dict) else {"value": result}
        struct.update(mapping)
    return struct.SerializeToString()


def _outcome(token: int, fn, params: dict, ctx: JobContext, max_result_bytes: int):
    """Run the job; the message that tells how it ended."""
    try:
        result = fn(params, ctx)
    except JobCancelled:
        return ipc.Cancelled(token)
    except (SystemExit, KeyboardInterrupt) as exc:
        return ipc.Failed(token, "JOB_FAILED", f"{type(exc).__name__}: the job tried to exit its worker")
    except BaseException as exc:  # noqa: BLE001 - a job's failure is reported, the worker lives on
        detail = "".join(traceback.format_exception(exc))[-MAX_DETAIL_CHARS:]
        return ipc.Failed(token, "JOB_FAILED", public_message(f"{type(exc).__name__}: {exc}"), detail)
    try:
        data = result_bytes(result)
    except (TypeError, ValueError) as exc:
        return ipc.Failed(
            token, "JOB_FAILED", public_message(f"the job returned a result that is not JSON-able: {exc}")
        )
    if len(data) > max_result_bytes:
        message = f"the job's result is {len(data)} bytes, over the limit of {max_result_bytes} bytes"
        return ipc.Failed(token, "RESULT_TOO_LARGE", message)
    return ipc.Done(token, data)


def main(
    sock,
    cancel_flag,
    taken,
    targets: dict[str, str],
    heartbeat_s: float = 1.0,
    scenario_dir: str = "",
    max_result_bytes: int = 1024 * 1024,
) -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the parent decides what
    # happens to running jobs, so a worker ignores them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    fd = sock.fileno()
    os.set_blocking(fd, True)
    registry = jobs.Registry(targets)
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            ipc.send_frame(fd, message)

    current = [0]
    threading.Thread(target=_heartbeat, args=(send, current, heartbeat_s), name="heartbeat", daemon=True).start()
    send(ipc.Ready(os.getpid()))
    while True:
        try:
            message = ipc.recv_frame(fd)
        except (EOFError, OSError):
            return  # the parent is gone
        if not isinstance(message, ipc.RunJob):
            return  # Stop
        token = message.token
        current[0] = token
        taken.value = token  # the hand-over is complete: the runner reads this word
        try:
            fn = registry.get(message.kind)
        except KeyError:
            outcome = ipc.Failed(token, "UNKNOWN_JOB_KIND", f"unknown job kind {message.kind!r}")
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot be imported fails its run
            detail = "".join(traceback.format_exception(exc))[-MAX_DETAIL_CHARS:]
            text = f"job kind {message.kind!r} cannot be loaded: {type(exc).__name__}: {exc}"
            outcome = ipc.Failed(token, "JOB_FAILED", public_message(text), detail)
        else:
            ctx = JobContext(message.run_id, token, send, cancel_flag, message.deadline, scenario_dir)
            outcome = _outcome(token, fn, message.params, ctx, max_result_bytes)
        current[0] = 0
        send(outcome)
