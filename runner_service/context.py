"""The JobContext a job sees inside its worker process.

A job is a plain function ``run(params: dict, ctx: JobContext) -> dict``. Through
the context it reports progress and log lines, sees whether its run was
cancelled, and reads its deadline. It runs in a worker process, so it may use the
CPU freely; a job that never checks for cancellation is stopped by killing its
worker after the cancel grace period.
"""

from __future__ import annotations

import time
from typing import Any

from runner_service import ipc

MAX_PROGRESS_MESSAGE_CHARS = 1000
MAX_LOG_CHARS = 10000
MAX_LOG_LEVEL_CHARS = 16
INT64_MAX = 2**63 - 1


def clean_text(value: object, limit: int) -> str:
    """Text any store and any client can take: valid UTF-8 (a lone surrogate, as in
    a file name that is not UTF-8, becomes U+FFFD), no NUL (PostgreSQL text refuses
    it), at most `limit` characters."""
    text = str(value)[:limit]
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def clamp_count(value: object) -> int:
    """A progress count within int64 (the schema's and the store's type), never negative."""
    return max(0, min(int(value), INT64_MAX))  # type: ignore[call-overload]


class JobCancelled(Exception):
    """Raised by JobContext.check_cancelled() (and sleep()) once the run is cancelled.
    A job lets it propagate; the runner turns it into the run's final state."""


class JobContext:
    def __init__(
        self, run_id: str, token: int, send, cancel_flag, deadline: float | None, scenario_dir: str = ""
    ) -> None:
        self.run_id = run_id
        # The operator's scenario directory (runner settings); never a client's input.
        self.scenario_dir = scenario_dir
        self._token = token
        self._send = send
        self._flag = cancel_flag
        self._deadline = deadline  # wall-clock seconds since the epoch, or None

    # ---- cancellation and deadline
    def is_cancelled(self) -> bool:
        """True once the run was cancelled (by a client, its deadline or shutdown)."""
        return self._flag.value == self._token

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the run was cancelled; call it at least once per tick."""
        if self._flag.value == self._token:
            raise JobCancelled(self.run_id)

    @property
    def deadline(self) -> float | None:
        """The run's deadline as seconds since the epoch (UTC), or None."""
        return self._deadline

    def time_remaining(self) -> float | None:
        """Seconds left before the run's deadline (0 once passed), or None."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.time())

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early with JobCancelled if the run is cancelled meanwhile."""
        end = time.monotonic() + seconds
        while True:
            self.check_cancelled()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.005))

    # ---- reporting
    def progress(self, done: int, total: int = 0, message: str = "") -> None:
        """Report cumulative progress (not a delta). Cheap; call it as often as useful."""
        message = clean_text(message, MAX_PROGRESS_MESSAGE_CHARS)
        self._send(ipc.Progress(self._token, clamp_count(done), clamp_count(total), message))

    def log(self, message: str, level: str = "INFO") -> None:
        self._send(ipc.Log(self._token, clean_text(level, MAX_LOG_LEVEL_CHARS), clean_text(message, MAX_LOG_CHARS)))

    def heartbeat(self, details: Any = None) -> None:
        """Tell the runner the job is alive (progress and log calls count too)."""
        self._send(ipc.Heartbeat(self._token))
