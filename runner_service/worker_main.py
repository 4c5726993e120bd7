"""The body of a worker process: receive a run, execute its job, report back.

Kept free of grpc and the database: a worker imports only the job machinery.
Messages to the parent are tuples: ("ready", pid), ("progress", token, done,
total, message), ("log", token, level, message), ("heartbeat", token),
("done", token, result), ("cancelled", token), ("failed", token, type, message).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback

from runner_service import jobs
from runner_service.context import JobCancelled, JobContext

MAX_ERROR_CHARS = 4000


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


PR_SET_PDEATHSIG = 1


def _heartbeat(send, current: list[int], interval_s: float) -> None:
    """Beat for the running job from a thread: it keeps beating while the job
    computes, and stops only when the whole process is stuck (or stopped)."""
    while True:
        time.sleep(interval_s)
        token = current[0]
        if token:
            try:
                send(("heartbeat", token))
            except OSError:
                return


def main(conn, cancel_flag, targets: dict[str, str], heartbeat_s: float = 1.0) -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the parent decides what
    # happens to running jobs, so a worker ignores them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    registry = jobs.Registry(targets)
    lock = threading.Lock()

    def send(msg) -> None:
        with lock:
            conn.send(msg)

    current = [0]
    threading.Thread(target=_heartbeat, args=(send, current, heartbeat_s), name="heartbeat", daemon=True).start()
    send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg[0] == "stop":
            return
        _, token, run_id, kind, params, deadline = msg
        ctx = JobContext(run_id, token, send, cancel_flag, deadline)
        current[0] = token
        try:
            fn = registry.get(kind)
            result = fn(params, ctx)
            send(("done", token, result))
        except JobCancelled:
            send(("cancelled", token))
        except KeyError as exc:
            if exc.args == (kind,):
                send(("failed", token, "UnknownKind", f"unknown job kind {kind!r}"))
            else:
                send(("failed", token, type(exc).__name__, _describe(exc)))
        except BaseException as exc:  # noqa: BLE001 - a job's failure is reported, the worker lives on
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                send(("failed", token, type(exc).__name__, "the job tried to exit its worker"))
            else:
                send(("failed", token, type(exc).__name__, _describe(exc)))
        finally:
            current[0] = 0


def _describe(exc: BaseException) -> str:
    text = f"{exc}\n" + "".join(traceback.format_exception(exc)[-3:])
    return text[:MAX_ERROR_CHARS]
