"""Claiming runs from the queue in the database, for the replica's scheduler.

While the replica has free workers it claims the oldest QUEUED runs (heavy kinds
within their limit here). It learns of new runs, cancels and other replicas'
events from the database's notifications, and polls every claim_poll_s in case one
was missed; the poll also ends queued runs whose own timeout passed. A cancel of a
run this replica does not hold goes through the database: a queued run ends
CANCELLED at once, a running one's owner is notified.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from runner_service import coordination, endings, errors
from runner_service.notifications import RECONNECTED
from runner_service.runs import RunState
from runner_service.store import RunRecord, Store, StoreError

if TYPE_CHECKING:
    from runner_service.scheduler import Scheduler

log = logging.getLogger(__name__)

# Kinds that run many simulations at once share their own concurrency limit.
HEAVY_KINDS = frozenset({"compare", "sweep"})
# Cancel notifications for runs not (yet) taken here: a claim may be in flight.
EARLY_CANCELS_MAX = 1000
RECOVER_BATCH = 500
CHANNELS = (coordination.CHANNEL_RUNS, coordination.CHANNEL_CANCEL, coordination.CHANNEL_EVENTS)


class Claims:
    def __init__(self, scheduler: Scheduler, settings, store: Store) -> None:
        self._scheduler = scheduler
        self._settings = settings
        self._store = store
        self._claiming: asyncio.Task | None = None
        self._again = False
        self._failing = False
        self._early_cancels: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._poller: asyncio.Task | None = None

    async def recover(self) -> None:
        """Runs a previous process of this replica left RUNNING end INTERRUPTED (or
        go back to the queue where they allow another attempt). Queued runs stay in
        the database for whichever replica claims them."""
        while True:
            moved = await self._store.coordinate(
                coordination.rescue,
                RECOVER_BATCH,
                endings.REQUEUED_RESTART,
                endings.RESTARTED,
                endings.CANCELLED_LOST,
                self._settings.replica,
            )
            self._scheduler.observer.runs_moved(
                moved, endings.REQUEUED_RESTART, endings.RESTARTED, endings.CANCELLED_LOST
            )
            if moved:
                log.warning(
                    "runs left running by a previous process of this replica recovered",
                    extra={"runs": len(moved), "requeued": sum(r.state == RunState.QUEUED for r in moved)},
                )
            if len(moved) < RECOVER_BATCH:
                return

    def start(self) -> None:
        self._store.listen(CHANNELS, self._on_notifications)
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="queue-poller")
        self._poller.add_done_callback(self._scheduler.supervise)

    async def stop(self) -> None:
        """No more claims; waits for one in flight (its runs are then held here)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])
        if self._claiming is not None:
            await asyncio.wait([self._claiming], timeout=5.0)

    # ------------------------------------------------------------ claiming

    def request(self) -> None:
        """Claim while workers are free (one claimer at a time; a request during a
        claim makes it look again)."""
        if self._claiming is not None and not self._claiming.done():
            self._again = True
            return
        self._claiming = asyncio.get_running_loop().create_task(self._claim_while_free(), name="claim")
        self._claiming.add_done_callback(self._claim_done)

    def _claim_done(self, task: asyncio.Task) -> None:
        if self._claiming is task:  # not a claimer started since this one ended
            self._claiming = None
        self._scheduler.supervise(task)

    async def _claim_while_free(self) -> None:
        scheduler = self._scheduler
        while not scheduler.draining:
            self._again = False
            free = scheduler.free_slots()
            if free <= 0:
                return
            try:
                records = await self._claim(free, scheduler.heavy_free())
            except StoreError as exc:
                if not self._failing:
                    log.warning("cannot claim queued runs; polling", extra={"error": str(exc)})
                self._failing = True
                return
            if self._failing:
                log.info("claiming queued runs again")
                self._failing = False
            for record in records:
                scheduler.take_claimed(record, cancel=self._early_cancels.pop(record.run_id, False))
            if records:
                scheduler.start_waiting()
            if len(records) < free and not self._again:
                return

    async def _claim(self, free: int, heavy_free: int) -> list[RunRecord]:
        replica = self._settings.replica
        claim = coordination.claim
        if heavy_free >= free:
            return await self._store.coordinate(claim, replica, free, (), endings.STARTED)
        if heavy_free <= 0:
            return await self._store.coordinate(claim, replica, free, HEAVY_KINDS, endings.STARTED)
        first = await self._store.coordinate(claim, replica, heavy_free, (), endings.STARTED)
        if len(first) < heavy_free:
            return first
        return first + await self._store.coordinate(claim, replica, free - heavy_free, HEAVY_KINDS, endings.STARTED)

    # ------------------------------------------------------------ what the database tells

    def _on_notifications(self, batch: list[tuple[str, str]]) -> None:
        scheduler = self._scheduler
        claim = False
        for channel, payload in batch:
            if (channel, payload) == RECONNECTED:  # anything may have been missed
                claim = True
                scheduler.watching.wake_all()
            elif channel == coordination.CHANNEL_RUNS:
                claim = True
            elif channel == coordination.CHANNEL_EVENTS:
                scheduler.watching.wake(payload)
            elif channel == coordination.CHANNEL_CANCEL:
                self._cancel_owned(payload)
        if claim:
            scheduler.dispatch()

    def _cancel_owned(self, run_id: str) -> None:
        if self._scheduler.cancel_held(run_id):
            return
        self._early_cancels[run_id] = True  # it may be in a claim that has not returned yet
        while len(self._early_cancels) > EARLY_CANCELS_MAX:
            self._early_cancels.popitem(last=False)

    async def _poll_forever(self) -> None:
        scheduler = self._scheduler
        while True:
            await asyncio.sleep(self._settings.claim_poll_s)
            scheduler.dispatch()
            try:
                expired = await self._store.coordinate(coordination.expire_queued, 100, endings.EXPIRED)
                scheduler.observer.runs_moved(expired, endings.EXPIRED)
                if not scheduler.running:
                    continue
                asked = await self._store.coordinate(coordination.cancels_for, self._settings.replica)
            except StoreError:
                continue
            for run_id in asked:
                scheduler.cancel_held(run_id)

    # ------------------------------------------------------------ cancelling a run held elsewhere

    async def cancel_elsewhere(self, run_id: str) -> RunRecord:
        """Cancel a run this replica does not hold: a queued one ends CANCELLED in
        the database now; a running one is flagged and its owner notified."""
        record, tell_owner, ended = await self._store.coordinate(coordination.cancel, run_id, endings.CANCELLED_QUEUED)
        if record is None:
            raise errors.NotFound(f"run {run_id!r} not found")
        if ended:
            self._scheduler.observer.runs_moved([record], endings.CANCELLED_QUEUED)
        if tell_owner and record.replica == self._settings.replica:
            self._cancel_owned(run_id)  # claimed here a moment ago
        self._scheduler.watching.wake(run_id)
        return record

    async def cancel_elsewhere_retrying(self, run_id: str) -> None:
        """cancel_elsewhere for a caller that is gone (a cancelled ExecuteRun call):
        nobody retries for it, so a failing database is retried here a few times."""
        for delay in (0.05, 0.2, 1.0, 3.0, None):
            try:
                await self.cancel_elsewhere(run_id)
                return
            except StoreError as exc:
                if delay is None:
                    log.error("could not cancel a run held elsewhere", extra={"run_id": run_id, "error": str(exc)})
                    return
                await asyncio.sleep(delay)
