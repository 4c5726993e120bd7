"""How runs end, and the state events of moves made in the database.

outcome() is the one place that decides the final state of a run held here, from
what happened to it (an Ending) and why it was being stopped, if it was.
final_error gives a run's error for its final state; the factories build the state
event (and error) of a run that a transaction moves without its owner: claimed,
cancelled while queued, requeued or interrupted after its replica was lost, or
timed out while queued.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from runner_service import convert, errors
from runner_service.runs import CancelReason, RunState
from runner_service.store import RunRecord, StoredEvent

_FINAL_CODES = {
    RunState.CANCELLED: code_pb2.CANCELLED,
    RunState.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    RunState.INTERRUPTED: code_pb2.ABORTED,
    RunState.FAILED: code_pb2.UNKNOWN,
}
_FINAL_REASONS = {
    RunState.CANCELLED: "CANCELLED",
    RunState.DEADLINE_EXCEEDED: "RUN_DEADLINE_EXCEEDED",
    RunState.INTERRUPTED: "INTERRUPTED",
    RunState.FAILED: "JOB_FAILED",
}


def final_error(state: RunState, message: str, reason: str | None = None) -> status_pb2.Status:
    return errors.error_status(message, reason or _FINAL_REASONS[state], _FINAL_CODES[state])


# ---------------------------------------------------------------- what happened to a run held here


@dataclasses.dataclass(frozen=True)
class JobDone:
    """The job returned its result."""

    result: struct_pb2.Struct


@dataclasses.dataclass(frozen=True)
class JobFailed:
    """The job raised, or its result could not be carried (reason: an ErrorInfo reason)."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class JobStopped:
    """The job saw its cancellation and stopped."""


@dataclasses.dataclass(frozen=True)
class NotStarted:
    """Stopped before a worker had it: queued, or between two hand-overs."""


@dataclasses.dataclass(frozen=True)
class WorkerGone:
    """The worker process holding the run exited: killed by the runner (after a
    cancel's grace, or for sending what it must not: failure), or on its own."""

    exit_code: int | None
    killed: bool = False
    failure: str | None = None


@dataclasses.dataclass(frozen=True)
class HandoverFailed:
    """No worker took the run, `attempts` times."""

    attempts: int
    why: str


@dataclasses.dataclass(frozen=True)
class Unhandable:
    """The run's parameters cannot be carried to a worker."""

    why: str


Ending = JobDone | JobFailed | JobStopped | NotStarted | WorkerGone | HandoverFailed | Unhandable


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A run's final state, the reason on its state event, its error or result, and
    the cancel reason it was stopped for, if any (a stop for this replica's shutdown
    may send the run back to the queue instead)."""

    state: RunState
    reason: str
    error: status_pb2.Status | None = None
    result: struct_pb2.Struct | None = None
    stopped_for: CancelReason | None = None


IGNORED_CANCEL = " (the job ignored cancellation; its worker was killed)"


def outcome(ending: Ending, cancel: CancelReason | None, heartbeat_timeout_s: float) -> Outcome:
    """How a run held here ends, given what happened to it and why it was being
    stopped (None: nobody asked)."""
    failed = RunState.FAILED
    match ending:
        case JobDone(result):
            return Outcome(RunState.SUCCEEDED, "completed", result=result)
        case JobFailed(reason, message):
            return Outcome(failed, "job failed", final_error(failed, message, reason))
        case JobStopped() | NotStarted():
            return stopped(cancel or CancelReason.CLIENT_REQUEST)
        case HandoverFailed(attempts, why):
            message = f"the run could not be handed to a worker ({attempts} attempts): {why}"
            return Outcome(failed, "hand-over failed", final_error(failed, message, "HANDOVER_FAILED"))
        case Unhandable(why):
            message = f"the run's parameters cannot be handed to a worker: {why}"
            return Outcome(failed, "bad job parameters", final_error(failed, message))
        case WorkerGone(exit_code, killed, failure):
            if cancel is CancelReason.WORKER_LOST:
                message = f"the worker sent no heartbeat for {heartbeat_timeout_s:g} s and was killed"
                return Outcome(failed, "worker lost", final_error(failed, message, "WORKER_LOST"))
            if failure is not None:
                message = f"the run's worker was replaced: {failure}"
                return Outcome(failed, "worker replaced", final_error(failed, message, "WORKER_PROTOCOL"))
            if killed and cancel is not None:
                return stopped(cancel, IGNORED_CANCEL)
            message = f"the worker process died (exit code {exit_code})"
            return Outcome(failed, "worker crashed", final_error(failed, message, "WORKER_CRASHED"))
    raise TypeError(f"not an ending: {ending!r}")


def stopped(cancel: CancelReason, note: str = "") -> Outcome:
    """The end of a run stopped for `cancel`: the state that reason stands for."""
    state = cancel.final_state
    return Outcome(state, cancel.value, final_error(state, f"run stopped: {cancel.value}{note}"), stopped_for=cancel)


# ---------------------------------------------------------------- moves made in the database


class Move:
    """The state event of a run moved to `state` by a transaction (an EventFactory
    of runner_service.coordination)."""

    def __init__(self, state: RunState, reason: str, message: str = "") -> None:
        self.state = state
        self.reason = reason
        self.message = message

    def __call__(self, record: RunRecord, seq: int, time_us: int) -> tuple[StoredEvent, bytes | None]:
        error = final_error(self.state, self.message.format(record=record)) if self.message else None
        event = convert.state_event(record.run_id, seq, time_us, self.state, record.state, self.reason, error)
        return convert.event_to_stored(event), error.SerializeToString() if error is not None else None


STARTED = Move(RunState.RUNNING, "started")
CANCELLED_QUEUED = Move(RunState.CANCELLED, "client request", "run stopped: client request")
REQUEUED = Move(RunState.QUEUED, "replica lost; run queued again")
LOST = Move(RunState.INTERRUPTED, "replica lost", "the replica {record.replica!r} running the run stopped")
CANCELLED_LOST = Move(RunState.CANCELLED, "client request", "run stopped: client request (its replica was lost)")
EXPIRED = Move(RunState.DEADLINE_EXCEEDED, "deadline", "run stopped: deadline")
RESTARTED = Move(RunState.INTERRUPTED, "runner restarted", "the runner process stopped while the run was running")
REQUEUED_RESTART = Move(RunState.QUEUED, "runner restarted; run queued again")


def reason_of(record: RunRecord, *moves: Move) -> str:
    """The reason of the move (one of `moves`) that gave the run its present state."""
    return next((move.reason for move in moves if move.state == record.state), "")
