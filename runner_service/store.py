"""The store port: what the runner needs from its database, and the records it exchanges.

Times are integer microseconds since the Unix epoch (UTC); convert.py turns them
into timezone-aware values at the edges.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from runner_service.runs import RunState


def now_us() -> int:
    return time.time_ns() // 1000


@dataclasses.dataclass(slots=True)
class RunRecord:
    run_id: str
    kind: str
    spec: bytes  # serialized runner.v1.RunSpec
    state: RunState
    create_us: int
    update_us: int
    request_id: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    timeout_ms: int | None = None
    start_us: int | None = None
    end_us: int | None = None
    progress_done: int = 0
    progress_total: int = 0
    progress_message: str = ""
    result: bytes | None = None  # serialized google.protobuf.Struct
    error: bytes | None = None  # serialized google.rpc.Status
    attempt: int = 1
    max_attempts: int = 1  # starts allowed in all; a lost replica's run is retried below it
    cancel_requested: bool = False
    replica: str = ""
    last_seq: int = 0


@dataclasses.dataclass(slots=True, frozen=True)
class StoredEvent:
    run_id: str
    seq: int
    time_us: int
    kind: str  # "state", "progress", "log" or "result"
    payload: bytes  # the serialized runner.v1.RunEvent


@dataclasses.dataclass(slots=True, frozen=True)
class Cursor:
    """Keyset position: runs strictly older than (create_us, run_id)."""

    create_us: int
    run_id: str


class StoreError(Exception):
    """A database failure the caller may retry."""

    reason = "DB_UNAVAILABLE"
    retry_after_s = 0.5


class StoreClosed(StoreError):
    """The store closed (the runner is shutting down) before the write was taken."""


class CircuitOpenError(StoreError):
    """The database circuit breaker is open: the call was not attempted."""

    reason = "CIRCUIT_OPEN"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the database is failing; calls are refused for {retry_after_s:.1f} s")
        self.retry_after_s = max(0.1, retry_after_s)


class PoolExhausted(StoreError):
    """Every database connection (or read slot) is busy and the wait is full."""

    reason = "DB_POOL_EXHAUSTED"
    retry_after_s = 1.0


class RunTakenOver(Exception):
    """A fenced write found its run no longer held by its replica and attempt (the
    replica's lease expired and the run was ended or requeued by the leader)."""


class QueueLimitReached(Exception):
    """A submission found the queue full in the database (admission across replicas)."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} runs are waiting")
        self.waiting = waiting


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStatus:
    """What the store can say about itself, for readiness and diagnostics."""

    writes_failing: bool  # writes are held and retried
    held_writes: int
    last_write_error: str
    reads_in_flight: int
    slow_reads_waiting: int
    pool: str  # the connection pool's own summary


class Store(abc.ABC):
    """Persistence of runs and their events. All methods are safe to call from the
    event loop: none blocks it."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the database and bring its schema up to date. Raises on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and release connections. Idempotent."""

    @abc.abstractmethod
    async def submit(
        self, record: RunRecord, first_event: StoredEvent, max_waiting: int | None = None
    ) -> tuple[RunRecord, bool]:
        """Store a new run durably. When record.request_id names an existing run,
        store nothing and return that run with False (idempotent submit). With
        max_waiting, refuse it (QueueLimitReached) when that many runs are QUEUED
        in the database; the count and the insert are one transaction."""

    @abc.abstractmethod
    def write(
        self,
        run_id: str,
        changes: dict | None,
        events: Sequence[StoredEvent] = (),
        fence: tuple[str, int] | None = None,
    ) -> asyncio.Future:
        """Queue an update of a run's columns and new events, applied in call
        order. Returns a future resolved once committed (awaiting it is optional).
        A write that fails for a transient reason (database unreachable, disk
        full) is held and retried with backoff, in order, while the process
        lives; the future fails only when the database refuses the write for
        good or the store closes first. With fence=(replica, attempt) the write
        applies only while the run is RUNNING on that replica and attempt, and
        fails with RunTakenOver otherwise (nothing of it is stored)."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    async def get_run_by_request_id(self, request_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    async def list_runs(
        self,
        limit: int,
        after: Cursor | None,
        state: RunState | None,
        kind: str | None,
        max_bytes: int | None = None,
    ) -> list[RunRecord]:
        """Newest first, at most limit runs older than `after`. With max_bytes,
        it stops after the first run that takes the runs' stored size (spec,
        result, error, labels, message) over max_bytes, so a page of large runs
        never loads more than about max_bytes plus one run."""

    @abc.abstractmethod
    async def list_events(
        self, run_id: str, after_seq: int, up_to_seq: int | None, limit: int, conflate: bool = False
    ) -> list[StoredEvent]:
        """Events of a run with after_seq < seq <= up_to_seq, in seq order. With
        conflate, of the progress events in that range only the latest (a replay
        gives the run's progress as it is, not a backlog of it)."""

    @abc.abstractmethod
    async def recent_events(self, run_id: str, limit: int) -> list[StoredEvent]:
        """The run's last `limit` events other than progress, and its latest progress
        event, in seq order (what a live channel of the run holds in memory)."""

    @abc.abstractmethod
    async def recover(
        self, replica: str, interrupted_event: Callable[[RunRecord], tuple[StoredEvent, bytes]]
    ) -> tuple[list[str], list[RunRecord]]:
        """Start-up recovery: runs left RUNNING by a dead process of this replica
        become INTERRUPTED with the event and error (serialized google.rpc.Status)
        that interrupted_event returns (returns their ids); returns QUEUED runs
        to requeue."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the database cannot be reached."""

    @abc.abstractmethod
    async def revisions(self) -> dict[str, int]:
        """The summary's revision watermarks by section (schema.STATES, schema.PROGRESS)."""

    @abc.abstractmethod
    async def summary_section(self, section: str, limit: int) -> tuple[int, object]:
        """(revision, value) of a summary section: "counts" ({RunState: count}),
        "recent_runs" (newest runs) or "recent_progress" (running runs, most
        recently updated first), at most `limit` runs."""

    @abc.abstractmethod
    async def coordinate(self, fn, *args):
        """Run fn(conn, *args), one of runner_service.coordination's functions, in
        its own transaction off the event loop."""

    @abc.abstractmethod
    def listen(self, channels, callback) -> bool:
        """Deliver the database's notifications on channels to callback(batch) on
        the event loop until close; False when the database has none."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Writes accepted by write() and not yet committed (or refused): queued
        or held. Cheap; the scheduler slows its producers down when it grows."""

    @abc.abstractmethod
    def status(self) -> StoreStatus:
        """A snapshot of the store's health; cheap, never blocks."""
