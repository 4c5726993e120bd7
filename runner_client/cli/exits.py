"""The exit codes of the `runner` command (pure). A script can tell from the code
alone how a run ended, or why the command could not tell."""

from __future__ import annotations

import grpc

from protos.runner.v1 import runner_pb2 as pb
from runner_client.errors import RunnerError

OK = 0  # the command did what it was asked; `run`/`watch`: the run SUCCEEDED
FAILED = 1  # the run ended FAILED
USAGE = 2  # bad flags or spec file, or the runner refused the request as invalid (INVALID_ARGUMENT)
CANCELLED = 3  # the run ended CANCELLED
DEADLINE_EXCEEDED = 4  # the run ended DEADLINE_EXCEEDED (its own timeout passed)
INTERRUPTED = 5  # the run ended INTERRUPTED (its runner shut down or was lost)
UNREACHABLE = 6  # the runner could not be reached (UNAVAILABLE or no answer in time, after the retries)
REFUSED = 7  # the runner answered with another error (NOT_FOUND, QUEUE_FULL after the retries, auth, ...)
DETACHED = 130  # a second Ctrl-C: the command left; the run goes on in whatever state it had

_BY_STATE: dict[int, int] = {
    pb.SUCCEEDED: OK,
    pb.FAILED: FAILED,
    pb.CANCELLED: CANCELLED,
    pb.DEADLINE_EXCEEDED: DEADLINE_EXCEEDED,
    pb.INTERRUPTED: INTERRUPTED,
}

#: For `runner --help` and the README.
DESCRIPTION = (
    "Exit codes: 0 succeeded (or done), 1 the run FAILED, 2 usage error or invalid request, "
    "3 CANCELLED, 4 DEADLINE_EXCEEDED, 5 INTERRUPTED, 6 the runner could not be reached, "
    "7 the runner refused the request, 130 detached by a second Ctrl-C."
)


def for_state(state: int) -> int:
    """The exit code of a run that ended in `state` (OK for a state not terminal)."""
    return _BY_STATE.get(state, OK)


def for_error(error: RunnerError) -> int:
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UNREACHABLE
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        return USAGE
    return REFUSED
