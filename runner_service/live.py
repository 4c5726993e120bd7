"""A run held by this process, from its claim (or submission) to its committed end."""

from __future__ import annotations

import asyncio

from protos.runner.v1 import runner_pb2 as pb
from runner_service.progress import RunChannel
from runner_service.runs import CancelReason
from runner_service.store import RunRecord
from runner_service.workers import Worker


class LiveRun:
    __slots__ = (
        "cancel_reason",
        "channel",
        "deadline_handle",
        "done",
        "finishing",
        "handover_failures",
        "kill_handle",
        "last_beat",
        "pending_progress",
        "record",
        "spec",
        "token",
        "unwritten",
        "unwritten_changes",
        "worker",
    )

    def __init__(self, record: RunRecord, spec: pb.RunSpec, channel: RunChannel, done: asyncio.Future) -> None:
        self.record = record
        self.spec = spec
        self.channel = channel
        self.cancel_reason: CancelReason | None = None
        self.worker: Worker | None = None
        self.token = 0
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.kill_handle: asyncio.TimerHandle | None = None
        self.pending_progress: pb.RunEvent | None = None  # published, not yet written
        self.unwritten: list[pb.RunEvent] = []  # published state changes written behind
        self.unwritten_changes: dict = {}
        self.done = done  # resolved with the final state once it is committed
        self.finishing = False
        self.last_beat = 0.0  # loop time of the last sign of life of its worker
        self.handover_failures = 0
