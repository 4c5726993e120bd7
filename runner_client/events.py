"""Run events as a watcher sees them: what ends a stream, and the cursor that makes
a resumed stream deliver every event once, in order (pure logic)."""

from __future__ import annotations

from protos.runner.v1 import runner_pb2 as pb

#: The states a run ends in; the stream of a run ends after the event reaching one.
TERMINAL_STATES = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.DEADLINE_EXCEEDED, pb.INTERRUPTED})


def state_name(state: int) -> str:
    """`SUCCEEDED` for pb.SUCCEEDED; the number for a state this client does not know."""
    try:
        return pb.RunState.Name(state)
    except ValueError:
        return str(state)


def terminal_state(event: pb.RunEvent) -> int | None:
    """The terminal state an event reaches, or None."""
    if event.WhichOneof("event") == "state_change" and event.state_change.state in TERMINAL_STATES:
        return event.state_change.state
    return None


class EventCursor:
    """Where a watcher is in a run's events.

    `accept(event)` says whether to deliver an event: only events with a seq
    above the last delivered one pass, so a stream resumed with
    `after_seq=cursor.last_seq` (or one that repeats itself) never delivers an
    event twice or out of order. The run id is learned from the first event
    (ExecuteRun's answer). `finished` turns true with the terminal event.
    """

    def __init__(self, run_id: str | None = None, after_seq: int = 0) -> None:
        self.run_id = run_id
        self.last_seq = after_seq
        self.final_state: int | None = None
        self.delivered = 0

    @property
    def finished(self) -> bool:
        return self.final_state is not None

    def accept(self, event: pb.RunEvent) -> bool:
        if self.run_id is None:
            self.run_id = event.run_id
        elif event.run_id and event.run_id != self.run_id:
            return False  # not this run's: never delivered
        if event.seq <= self.last_seq or self.finished:
            return False
        self.last_seq = event.seq
        self.final_state = terminal_state(event)
        self.delivered += 1
        return True
