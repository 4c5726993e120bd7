"""Watching runs: the events of a run after a seq, in seq order, to its terminal event.

A run held here is watched through its live channel (replaying the store for what
the channel no longer holds). With the queue in the database, a run held by
another replica (or still queued) is followed from the store by a Mirror: one
reader per run, however many watch it here, woken by the database's notifications
and polling meanwhile, publishing into a channel of its own so that its watchers
get the same guarantees (seq order, conflated progress, bounded queues, resume
with after_seq).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from protos.runner.v1 import runner_pb2 as pb
from runner_service import convert, errors
from runner_service.metrics import Observer
from runner_service.progress import Hub, RunChannel, is_progress
from runner_service.runs import RunState
from runner_service.store import Store, StoreError

log = logging.getLogger(__name__)

REPLAY_PAGE = 500


class Watching:
    def __init__(self, settings, store: Store, hub: Hub, observer: Observer | None = None) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self._observer = observer if observer is not None else Observer()
        self._shared = settings.queue_in_database
        self._mirrors: dict[str, Mirror] = {}

    def wake(self, run_id: str) -> None:
        """The run has new events in the store (a notification)."""
        mirror = self._mirrors.get(run_id)
        if mirror is not None:
            mirror.wake()

    def wake_all(self) -> None:
        """Notifications may have been missed: every mirror looks again."""
        for mirror in self._mirrors.values():
            mirror.wake()

    def stop(self) -> None:
        """Shutting down: every mirror's watchers are ended (they resume elsewhere)."""
        for mirror in list(self._mirrors.values()):
            mirror.stop(aborted=True)

    def forget(self, mirror: Mirror) -> None:
        if self._mirrors.get(mirror.run_id) is mirror:
            del self._mirrors[mirror.run_id]

    async def watch(self, run_id: str, after_seq: int) -> AsyncIterator[pb.RunEvent]:
        """A run's events after after_seq, in seq order, ending after the terminal
        one. Raises NotFound, or WatcherTooSlow when the watcher falls behind."""
        channel = self.hub.get(run_id)
        mirror = None
        if channel is None and self._shared:  # held by another replica, or queued
            mirror = self._mirror(run_id)
            channel = await mirror.opened()
        if channel is None:
            if mirror is None and await self.store.get_run(run_id) is None:
                raise errors.NotFound(f"run {run_id!r} not found")
            async for event in self._replay(run_id, after_seq, None):
                yield event
            return
        replay_up_to, tail, sub = channel.subscribe(after_seq)
        self._observer.watcher_joined()
        try:
            last = after_seq
            async for event in self._replay(run_id, after_seq, replay_up_to):
                last = event.seq
                yield event
            for event in tail:
                if event.seq > last:
                    last = event.seq
                    yield event
            sub.last_seq = last
            while True:
                try:
                    following = await sub.next()
                except OverflowError:
                    self._observer.watcher_cut_off()
                    raise errors.WatcherTooSlow(sub.last_seq) from None
                except ConnectionAbortedError:
                    raise errors.Draining() from None
                if following is None:
                    return
                yield following
        finally:
            self._observer.watcher_left()
            channel.unsubscribe(sub)
            if mirror is not None and not channel.watchers:
                mirror.stop()

    def _mirror(self, run_id: str) -> Mirror:
        mirror = self._mirrors.get(run_id)
        if mirror is None or mirror.stopped:
            mirror = Mirror(self, run_id)
            self._mirrors[run_id] = mirror
        return mirror

    async def _replay(self, run_id: str, after_seq: int, up_to_seq: int | None) -> AsyncIterator[pb.RunEvent]:
        while up_to_seq is None or after_seq < up_to_seq:
            page = await self.store.list_events(run_id, after_seq, up_to_seq, REPLAY_PAGE, conflate=True)
            for stored in page:
                yield convert.stored_to_event(stored)
            if len(page) < REPLAY_PAGE:
                return
            after_seq = page[-1].seq


class Mirror:
    """A run held by another replica (or still queued), followed from the database
    for the watchers here: one reader per run, however many watch it, woken by the
    database's notifications and polling meanwhile. Its channel gives the watchers
    the guarantees of a run held here (seq order, conflated progress, bounded queues)."""

    def __init__(self, watching: Watching, run_id: str) -> None:
        self._watching = watching
        self.run_id = run_id
        self.stopped = False
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._channel: asyncio.Future[RunChannel | None] = loop.create_future()
        self._task = loop.create_task(self._follow(), name=f"mirror-{run_id}")
        self._task.add_done_callback(self._ended)

    async def opened(self) -> RunChannel | None:
        """The channel to subscribe to; None when the run has ended (replay it).
        Raises NotFound."""
        return await asyncio.shield(self._channel)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, aborted: bool = False) -> None:
        if not self.stopped:
            self.stopped = True
            self._task.cancel()
            if self._channel.done() and not self._channel.cancelled() and self._channel.exception() is None:
                channel = self._channel.result()
                if channel is not None:
                    channel.close(aborted)

    def _ended(self, task: asyncio.Task) -> None:
        self.stopped = True
        self._watching.forget(self)
        if not self._channel.done():
            self._channel.set_exception(errors.Draining())
            self._channel.exception()
        if not task.cancelled() and task.exception() is not None:
            log.error("following a run failed", exc_info=task.exception(), extra={"run_id": self.run_id})
            channel = self._channel.result() if self._channel.exception() is None else None
            if channel is not None:
                channel.close(aborted=True)

    async def _follow(self) -> None:
        store = self._watching.store
        try:
            record = await store.get_run(self.run_id)
        except StoreError as exc:
            self._channel.set_exception(exc)
            return
        if record is None:
            self._channel.set_exception(errors.NotFound(f"run {self.run_id!r} not found"))
            return
        if record.state.terminal:
            self._channel.set_result(None)
            return
        settings = self._watching.settings
        # What a channel of the run holds in memory, read once: the watchers joining
        # here replay from it, not each from the database.
        try:
            recent = [
                convert.stored_to_event(stored) for stored in await store.recent_events(self.run_id, RunChannel.HISTORY)
            ]
        except StoreError as exc:
            self._channel.set_exception(exc)
            return
        last = recent[-1].seq if recent else record.last_seq
        # Progress read from the store is already conflated by the owner's write-behind
        # (one per progress flush): pacing it again here would only delay it, unless
        # so many watch that the process's progress budget sets the pace.
        channel = RunChannel(
            self.run_id,
            last,
            settings.watcher_queue_size,
            [event for event in recent if not is_progress(event)],
            0.0,
            self._watching.hub.pacer,
        )
        progress = [event for event in recent if is_progress(event)]
        if progress:
            channel.latest_progress = progress[-1]
        self._channel.set_result(channel)
        if any(_is_terminal(event) for event in recent):
            channel.close()
            return
        while True:
            self._wake.clear()
            try:
                page = await store.list_events(self.run_id, last, None, REPLAY_PAGE, conflate=True)
            except StoreError:
                page = []  # the database is failing: try again at the next poll
            for stored in page:
                event = convert.stored_to_event(stored)
                channel.last_seq = event.seq
                channel.publish(event)
                channel.mark_persisted(event.seq)
                last = event.seq
                if _is_terminal(event):
                    channel.close()
                    return
            if len(page) == REPLAY_PAGE:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), settings.claim_poll_s)
            except TimeoutError:
                pass


def _is_terminal(event: pb.RunEvent) -> bool:
    return event.WhichOneof("event") == "state_change" and RunState(event.state_change.state).terminal
