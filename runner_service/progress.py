"""Per-run event fan-out: sequence numbers, bounded per-watcher queues, progress conflation.

Every watcher has its own queue. Consecutive progress events conflate (a lagging
watcher gets the latest progress, not a backlog); state changes, logs and results
are never dropped: a watcher with more than `max_pending` of them undelivered is
ended (it may resume with after_seq). Publishing never waits on a watcher.

Progress is also paced: a watcher is handed one progress event per `progress_interval`
seconds on average (jittered by ±50 %). A run reporting every millisecond would otherwise make
each watcher's stream carry a thousand messages a second that nobody can read; the
transport buffers them and every later event arrives behind that backlog. A held
progress event is replaced by newer ones while it waits, and it goes out at once when
a state change, log or result follows it, so those are never delayed by the pace.

The pace also slows down when many watch (`Pacer`): all the watchers of the process
together are handed at most a budget of progress events a second, and every pace
slows while the event loop lags behind. A thousand watchers of a run reporting every
few milliseconds would otherwise keep the process writing progress, and calls
arriving meanwhile would wait to be taken up (gRPC cancels a call the server has not
taken up within 30 s). Every watcher still gets the latest progress, less often.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Sequence

from protos.runner.v1 import runner_pb2 as pb


def is_progress(event: pb.RunEvent) -> bool:
    return event.WhichOneof("event") == "progress"


class Pacer:
    """The watchers of a process, counted, and how often each is handed progress.

    A watcher's own interval is the floor of its pace. Two things slow every
    watcher's pace: the budget (all watchers together get at most `budget` progress
    events a second; 0 sets none) and the event loop's lag. While anyone watches, a
    probe measures how late a short sleep wakes: past LAG_LIMIT_S the pace doubles
    (up to MAX_SLOW_PERIOD_S), and it eases back while the loop keeps time."""

    __slots__ = ("_adaptive", "_probe", "budget", "slow_period", "watchers")

    PROBE_S = 0.05
    LAG_LIMIT_S = 0.01
    MIN_SLOW_PERIOD_S = 0.02
    MIN_BUDGET_PERIOD_S = 0.005
    MAX_SLOW_PERIOD_S = 1.0

    def __init__(self, budget: float = 0.0, adaptive: bool = True) -> None:
        self.budget = budget
        self.watchers = 0
        self.slow_period = 0.0  # the pace the loop's lag asks for; 0 while it keeps time
        self._adaptive = adaptive
        self._probe: asyncio.Task | None = None

    def period(self, interval: float) -> float:
        """The pace of one watcher whose own interval is `interval`."""
        period = max(interval, self.slow_period)
        if self.budget > 0:
            share = self.watchers / self.budget
            if share >= self.MIN_BUDGET_PERIOD_S:  # a few watchers: no pace of the budget's own
                period = max(period, share)
        return period

    def joined(self) -> None:
        self.watchers += 1
        if self._adaptive and self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._probe_lag(), name="watch-pacer")

    def left(self, count: int = 1) -> None:
        self.watchers -= count

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.watchers > 0:
                started = loop.time()
                await asyncio.sleep(self.PROBE_S)
                lag = loop.time() - started - self.PROBE_S
                if lag > self.LAG_LIMIT_S:
                    self.slow_period = min(self.MAX_SLOW_PERIOD_S, max(self.MIN_SLOW_PERIOD_S, 2 * self.slow_period))
                elif lag < self.LAG_LIMIT_S / 2 and self.slow_period > 0:
                    eased = 0.8 * self.slow_period
                    self.slow_period = eased if eased >= self.MIN_SLOW_PERIOD_S else 0.0
        finally:
            self.slow_period = 0.0
            self._probe = None


NO_PACER = Pacer(adaptive=False)


class Subscription:
    """One watcher's queue. Items come out in seq order."""

    __slots__ = (
        "_flowing",
        "_holding",
        "_interval",
        "_items",
        "_max_pending",
        "_next_progress_at",
        "_pacer",
        "_pending_important",
        "_period",
        "_waiter",
        "aborted",
        "closed",
        "last_seq",
        "overflowed",
    )

    def __init__(self, max_pending: int, progress_interval: float = 0.0, pacer: Pacer = NO_PACER) -> None:
        self._items: collections.deque[pb.RunEvent] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._pending_important = 0
        self._max_pending = max_pending
        self._interval = progress_interval
        self._pacer = pacer
        self._next_progress_at = 0.0  # loop time before which progress is held
        self._period = 0.0  # the pace when the last progress event went out
        self._holding = False  # next() waits out the pace for a progress event
        self._flowing = False  # progress was pushed while held
        self.overflowed = False
        self.closed = False  # no more events will come (terminal published or channel dropped)
        self.aborted = False  # the stream ends before the run does (the server is shutting down)
        self.last_seq = 0  # highest seq handed to the watcher

    def push(self, event: pb.RunEvent) -> None:
        if self.overflowed:
            return
        if is_progress(event):
            if self._items and is_progress(self._items[-1]):
                self._items[-1] = event  # conflate: the newer progress supersedes
            else:
                self._items.append(event)
            if self._holding:
                self._flowing = True
                return  # the held progress was replaced; the pace timer wakes the watcher
        else:
            if self._pending_important >= self._max_pending:
                self.overflowed = True
                self._items.clear()
            else:
                self._pending_important += 1
                self._items.append(event)
        self._wake()

    async def _hold(self, loop: asyncio.AbstractEventLoop, delay: float, progress_wakes: bool = False) -> None:
        """Wait until the pace allows the held progress out, or until an event that
        must not wait (or the end of the stream) arrives behind it; with
        progress_wakes, a newer progress event ends the wait too."""
        self._holding = not progress_wakes
        self._waiter = loop.create_future()
        timer = loop.call_later(delay, self._wake)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._holding = False

    def _progress_alone(self) -> bool:
        return len(self._items) == 1 and is_progress(self._items[0]) and not self.closed

    def close(self, aborted: bool = False) -> None:
        self.closed = True
        self.aborted = aborted
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> pb.RunEvent | None:
        """The next event, or None once the stream is over. Raises OverflowError
        when the watcher fell too far behind, ConnectionAbortedError when the
        stream was cut before the run's end."""
        while True:
            if self.overflowed:
                raise OverflowError(self.last_seq)
            if self._items:
                event = self._items[0]
                progress = is_progress(event)
                if progress and self._progress_alone():
                    loop = asyncio.get_running_loop()
                    hold = self._next_progress_at - loop.time()
                    if hold > 0 and event.seq > self.last_seq:
                        self._flowing = False
                        await self._hold(loop, hold)
                        if self._flowing and self._progress_alone():
                            # Progress keeps coming: the next one goes out as it arrives,
                            # fresher than the one held (waiting at most one more period).
                            await self._hold(loop, self._period, progress_wakes=True)
                        continue
                self._items.popleft()
                if not progress:
                    self._pending_important -= 1
                if event.seq <= self.last_seq:
                    continue  # already delivered from the replay
                self.last_seq = event.seq
                if progress:
                    self._period = period = self._pacer.period(self._interval)
                    if period > 0:
                        # Jittered, so that many watchers of one run do not all send at
                        # the same instant and queue behind each other.
                        pace = period * (0.5 + random.random())
                        self._next_progress_at = asyncio.get_running_loop().time() + pace
                return event
            if self.closed:
                if self.aborted:
                    raise ConnectionAbortedError(self.last_seq)
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class RunChannel:
    """The live event stream of one run owned by this process.

    Holds what a late watcher needs to catch up without gaps: `persisted_seq` (all
    non-progress events up to it are committed) and the events after it that are
    not yet committed, plus the latest progress."""

    HISTORY = 256

    def __init__(
        self,
        run_id: str,
        last_seq: int,
        max_pending: int,
        history: Sequence[pb.RunEvent] = (),
        progress_interval: float = 0.0,
        pacer: Pacer = NO_PACER,
    ) -> None:
        self.run_id = run_id
        self._progress_interval = progress_interval
        self._pacer = pacer
        self.last_seq = last_seq
        self.persisted_seq = last_seq
        # The most recent non-progress events; every event with seq >= history_start
        # is in it (but superseded progress), so a watcher resuming from there
        # needs no database read.
        self._history: collections.deque[pb.RunEvent] = collections.deque(history, maxlen=self.HISTORY)
        self.history_start = self._history[0].seq if self._history else last_seq + 1
        self._unpersisted: collections.deque[pb.RunEvent] = collections.deque()
        self.latest_progress: pb.RunEvent | None = None
        self._subs: set[Subscription] = set()
        self._max_pending = max_pending
        self.closed = False

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def publish(self, event: pb.RunEvent) -> None:
        """Hand an event (with its seq already assigned) to every watcher."""
        if is_progress(event):
            self.latest_progress = event
        else:
            self._unpersisted.append(event)
            if len(self._history) == self._history.maxlen:
                self._history.popleft()
                self.history_start = self._history[0].seq
            self._history.append(event)
        for sub in self._subs:
            sub.push(event)

    def mark_persisted(self, seq: int) -> None:
        if seq > self.persisted_seq:
            self.persisted_seq = seq
        while self._unpersisted and self._unpersisted[0].seq <= self.persisted_seq:
            self._unpersisted.popleft()

    def subscribe(self, after_seq: int) -> tuple[int, list[pb.RunEvent], Subscription]:
        """Register a watcher. Returns (replay_up_to, events in memory that follow
        after_seq, subscription for what comes next). The caller replays the store
        for after_seq < seq <= replay_up_to (nothing when it is <= after_seq), then
        the returned events, then the subscription."""
        sub = Subscription(self._max_pending, self._progress_interval, self._pacer)
        if after_seq + 1 >= self.history_start:
            floor = after_seq
            replay_up_to = after_seq  # memory has it all
            tail = [ev for ev in self._history if ev.seq > floor]
        else:
            floor = max(after_seq, self.persisted_seq)
            replay_up_to = self.persisted_seq
            tail = [ev for ev in self._unpersisted if ev.seq > floor]
        progress = self.latest_progress
        if progress is not None and progress.seq > floor:
            # Not committed yet (progress is written behind): replay it from memory.
            tail.append(progress)
            tail.sort(key=lambda ev: ev.seq)
        if self.closed:
            sub.close()
        else:
            self._subs.add(sub)
            self._pacer.joined()
        return replay_up_to, tail, sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._pacer.left()

    def close(self, aborted: bool = False) -> None:
        """End every watcher: after the terminal event, or (aborted) because this
        process stops owning the run before its end."""
        self.closed = True
        for sub in self._subs:
            sub.close(aborted)
        self._pacer.left(len(self._subs))
        self._subs.clear()

    @property
    def watchers(self) -> int:
        return len(self._subs)


class Hub:
    """The live channels of runs owned by this process, by run id."""

    def __init__(self, max_pending: int, progress_interval: float = 0.0, pacer: Pacer = NO_PACER) -> None:
        self._channels: dict[str, RunChannel] = {}
        self._max_pending = max_pending
        self._progress_interval = progress_interval
        self.pacer = pacer

    def open(self, run_id: str, last_seq: int, history: Sequence[pb.RunEvent] = ()) -> RunChannel:
        channel = RunChannel(run_id, last_seq, self._max_pending, history, self._progress_interval, self.pacer)
        self._channels[run_id] = channel
        return channel

    def get(self, run_id: str) -> RunChannel | None:
        return self._channels.get(run_id)

    def drop(self, run_id: str, aborted: bool = False) -> None:
        channel = self._channels.pop(run_id, None)
        if channel is not None:
            channel.close(aborted)

    @property
    def watchers(self) -> int:
        return sum(ch.watchers for ch in self._channels.values())
