"""Run states, cancel reasons and the transitions between states (pure)."""

from __future__ import annotations

import enum

from protos.runner.v1 import runner_pb2 as pb


class RunState(enum.IntEnum):
    QUEUED = pb.QUEUED
    RUNNING = pb.RUNNING
    SUCCEEDED = pb.SUCCEEDED
    FAILED = pb.FAILED
    CANCELLED = pb.CANCELLED
    DEADLINE_EXCEEDED = pb.DEADLINE_EXCEEDED
    INTERRUPTED = pb.INTERRUPTED

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.DEADLINE_EXCEEDED, RunState.INTERRUPTED}
)


class CancelReason(enum.Enum):
    """Why a run is being stopped; recorded before cancelling, turned into the
    final state by the run's owner."""

    CLIENT_REQUEST = "client request"
    CALL_CANCELLED = "execute call cancelled"
    DEADLINE = "deadline"
    SHUTDOWN = "shutdown"
    WORKER_LOST = "worker stopped heartbeating"
    RESTART = "workers restarted by an operator"

    @property
    def final_state(self) -> RunState:
        return _FINAL_STATE[self]


_FINAL_STATE = {
    CancelReason.CLIENT_REQUEST: RunState.CANCELLED,
    CancelReason.CALL_CANCELLED: RunState.CANCELLED,
    CancelReason.DEADLINE: RunState.DEADLINE_EXCEEDED,
    CancelReason.SHUTDOWN: RunState.INTERRUPTED,
    CancelReason.WORKER_LOST: RunState.FAILED,
    CancelReason.RESTART: RunState.INTERRUPTED,
}


def kind_of(spec: pb.RunSpec) -> str:
    """The job kind of a spec: the name of its oneof member, or a plugin's kind."""
    which = spec.WhichOneof("kind") or ""
    if which == "plugin":
        return spec.plugin.kind
    return which
