"""How runs end, and the state events of moves made in the database.

final_error gives a run's error for its final state; the factories build the state
event (and error) of a run that a transaction moves without its owner: claimed,
cancelled while queued, requeued or interrupted after its replica was lost, or
timed out while queued.
"""

from __future__ import annotations

from google.rpc import code_pb2, status_pb2

from runner_service import convert, errors
from runner_service.runs import RunState
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
