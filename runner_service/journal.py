"""The write-behind journal of the runs held here.

Events are published to watchers at once and written to the store behind them: a
state change within STATE_FLUSH_S (a short run's RUNNING and final states then
cost one commit), progress at the settings' flush interval (only the latest), logs
at once. Past WRITE_BACKLOG_HIGH unwritten writes the workers' messages are not
read, so jobs block on their own reports; reading resumes below WRITE_BACKLOG_LOW.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from protos.runner.v1 import runner_pb2 as pb
from runner_service import convert
from runner_service.live import LiveRun
from runner_service.store import RunRecord, RunTakenOver, Store
from runner_service.workers import WorkerPool

log = logging.getLogger(__name__)

STATE_FLUSH_S = 0.005
WRITE_BACKLOG_HIGH = 5000
WRITE_BACKLOG_LOW = 1000


class Journal:
    def __init__(
        self,
        settings,
        store: Store,
        pool: WorkerPool,
        live_runs: Callable[[], Iterable[LiveRun]],
        fence: Callable[[RunRecord], tuple[str, int] | None] = lambda record: None,
        taken_over: Callable[[LiveRun], None] = lambda live: None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._pool = pool
        self._live_runs = live_runs
        # With the queue in the database, every write of a run holds only while the run
        # is still this replica's (Store.write's fence); when it is not, taken_over(live).
        self._fence = fence
        self._taken_over = taken_over
        self._dirty: set[LiveRun] = set()
        self._state_flush: asyncio.TimerHandle | None = None
        self.held_back = False  # the workers are not read until the store catches up

    def emit(self, live: LiveRun, event: pb.RunEvent, changes: dict | None) -> None:
        """Publish a non-progress event and queue it (after any unwritten progress) for the store."""
        events, unwritten_changes = self.take_unwritten(live)
        if changes:
            unwritten_changes.update(changes)
        events.append(convert.event_to_stored(event))
        self.write(live, unwritten_changes, events, event.seq)
        live.channel.publish(event)
        if self._store.backlog() > WRITE_BACKLOG_HIGH and not self.held_back:
            log.warning(
                "store writes are behind; pausing the workers' messages", extra={"backlog": self._store.backlog()}
            )
            self.held_back = True
            self._pool.pause_reading()

    def take_unwritten(self, live: LiveRun) -> tuple[list, dict]:
        """What was published for a run but not handed to the store yet, in seq order."""
        pending = live.unwritten
        changes = live.unwritten_changes
        live.unwritten, live.unwritten_changes = [], {}
        if live.pending_progress is not None:
            pending.append(live.pending_progress)
            changes.update(progress_columns(live.record))
            live.pending_progress = None
        self._dirty.discard(live)
        pending.sort(key=lambda ev: ev.seq)
        return [convert.event_to_stored(ev) for ev in pending], changes

    def write(self, live: LiveRun, changes: dict | None, events: list, seq: int) -> asyncio.Future:
        fut = self._store.write(live.record.run_id, changes, events, self._fence(live.record))
        channel = live.channel

        def persisted(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            error = f.exception()
            if error is None:
                channel.mark_persisted(seq)
            elif isinstance(error, RunTakenOver) and not live.finishing:
                self._taken_over(live)

        fut.add_done_callback(persisted)
        return fut

    def state_behind(self, live: LiveRun, event: pb.RunEvent, changes: dict) -> None:
        """A state change written within STATE_FLUSH_S (published by the caller)."""
        live.unwritten.append(event)
        live.unwritten_changes.update(changes)
        self._dirty.add(live)
        if self._state_flush is None:
            self._state_flush = asyncio.get_running_loop().call_later(STATE_FLUSH_S, self.flush)

    def progress_behind(self, live: LiveRun) -> None:
        """live.pending_progress is written at the next flush."""
        self._dirty.add(live)

    def forget(self, live: LiveRun) -> None:
        self._dirty.discard(live)

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.progress_flush_interval_s)
            self.flush()
            if self.held_back and self._store.backlog() < WRITE_BACKLOG_LOW:
                self.held_back = False
                log.warning("store writes caught up; reading the workers' messages again")
                now = asyncio.get_running_loop().time()
                for live in self._live_runs():  # they were silent because we did not listen
                    live.last_beat = now
                self._pool.resume_reading()

    def flush(self) -> None:
        """Hand every run's written-behind events and columns to the store."""
        if self._state_flush is not None:
            self._state_flush.cancel()
            self._state_flush = None
        dirty, self._dirty = self._dirty, set()
        for live in dirty:
            if live.finishing:
                continue
            events, changes = self.take_unwritten(live)
            if events or changes:
                self.write(live, changes, events, max((ev.seq for ev in events), default=0))


def progress_columns(record: RunRecord) -> dict:
    return {
        "progress_done": record.progress_done,
        "progress_total": record.progress_total,
        "progress_message": record.progress_message,
        "update_us": record.update_us,
    }
