"""Starts runs on workers and owns their lives: admission, cancellation, deadlines,
progress, and the final state.

Every run owned by this process is a LiveRun from submission until its terminal
event is committed. Whoever wants a run stopped records a CancelReason first; the
single _finish() turns the reason into the final state and persists it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import uuid
from collections.abc import AsyncIterator

from google.protobuf import struct_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_service import convert, coordination, endings, errors, ipc, jobs
from runner_service.claims import HEAVY_KINDS, Claims
from runner_service.endings import final_error
from runner_service.journal import Journal
from runner_service.live import LiveRun
from runner_service.metrics import Observer
from runner_service.progress import Hub
from runner_service.runs import CancelReason, RunState, kind_of
from runner_service.settings import parse_jobs
from runner_service.store import (
    QueueLimitReached,
    RunRecord,
    RunTakenOver,
    Store,
    StoreClosed,
    StoreError,
    now_us,
)
from runner_service.watchdog import Watchdog
from runner_service.watching import Watching
from runner_service.workers import HandoverFailed, Worker, WorkerPool

log = logging.getLogger(__name__)

# A run whose hand-over to a worker fails this many times ends FAILED
# (HANDOVER_FAILED) instead of taking worker after worker down with it.
MAX_HANDOVER_ATTEMPTS = 3


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerStatus:
    queued: int  # runs waiting here (with the queue in the database: claimed, not started)
    running: int
    draining: bool
    workers_size: int
    workers_alive: int
    workers_ready: int
    workers_busy: int
    restarts_total: int
    dead_tasks: tuple[str, ...]  # background tasks that died


class Scheduler:
    def __init__(
        self,
        settings,
        store: Store,
        hub: Hub,
        job_targets: dict[str, str] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._settings = settings
        # Told of every run transition (a log line each, and metrics when they are on).
        # What the runner's parts report run transitions to (logs, and metrics when on).
        self.observer = observer if observer is not None else Observer()
        self._store = store
        self._hub = hub
        if job_targets is None:
            job_targets = jobs.discover(parse_jobs(settings.jobs))
        self.job_targets = job_targets
        watchdog = Watchdog(
            window_s=settings.watchdog_window_s,
            cooldown_threshold=settings.watchdog_cooldown_threshold,
            block_threshold=settings.watchdog_block_threshold,
            cooldown_s=settings.watchdog_cooldown_s,
        )
        self.pool = WorkerPool(
            settings.workers,
            self.job_targets,
            self._on_message,
            self._on_worker_exit,
            settings.heartbeat_interval_s,
            watchdog,
            scenario_dir=settings.scenario_dir,
            max_result_bytes=settings.max_result_bytes,
            start_timeout_s=settings.worker_start_timeout_s,
        )
        self.pool.on_idle = self.dispatch
        self.journal = Journal(
            settings, store, self.pool, lambda: self._live.values(), self._fence, self._taken_over_running
        )
        self.watching = Watching(settings, store, hub, self.observer)
        self._queue: collections.deque[LiveRun] = collections.deque()
        self._live: dict[str, LiveRun] = {}
        self._by_token: dict[int, LiveRun] = {}
        self._by_request_id: dict[str, LiveRun] = {}
        self._reserved = 0
        self._tokens = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._flusher: asyncio.Task | None = None
        self._liveness: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        # The queue in the database (replicas): this process holds only the runs it
        # executes; _queue holds runs it claimed that wait for a worker.
        self._shared = settings.queue_in_database
        self.claims = Claims(self, settings, store) if self._shared else None
        self.dead_tasks: list[str] = []  # background tasks that died (readiness reads it)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the scheduler is not started"
        return self._loop

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.claims is not None:
            await self.claims.recover()
        else:
            interrupted, queued = await self._store.recover(self._settings.replica, self._interrupted_on_restart)
            if interrupted:
                log.warning(
                    "runs interrupted by a previous process marked INTERRUPTED", extra={"runs": len(interrupted)}
                )
            for record in queued:
                self._adopt(record)
        await self.pool.start()
        self._flusher = self.loop.create_task(self.journal.flush_forever(), name="progress-flusher")
        self._flusher.add_done_callback(self.supervise)
        self._liveness = self.loop.create_task(self._check_liveness_forever(), name="liveness-check")
        self._liveness.add_done_callback(self.supervise)
        if self.claims is not None:
            self.claims.start()
        self.dispatch()

    def _interrupted_on_restart(self, record: RunRecord):
        now = now_us()
        error = final_error(RunState.INTERRUPTED, "the runner process stopped while the run was running")
        event = convert.state_event(
            record.run_id,
            record.last_seq + coordination.RECOVERY_SEQ_GAP,
            now,
            RunState.INTERRUPTED,
            RunState.RUNNING,
            "runner restarted",
            error,
        )
        return convert.event_to_stored(event), error.SerializeToString()

    def supervise(self, task: asyncio.Task) -> None:
        """A background task that dies takes readiness with it (NOT_SERVING, see
        health.py): a runner without its flusher, liveness check or claims must
        not take work."""
        if not task.cancelled() and task.exception() is not None:
            log.critical("background task died", exc_info=task.exception(), extra={"task": task.get_name()})
            self.dead_tasks.append(task.get_name())

    async def shutdown(self, shutdown_grace_s: float) -> None:
        """Stop taking work, give running runs shutdown_grace_s to finish, then
        cancel them (stored INTERRUPTED). Queued runs stay QUEUED in the store
        and are taken again at the next start. Idempotent."""
        self.draining = True
        self.pool.resume_reading()  # running runs must be heard to end
        running = [live.done for live in self._live.values() if live.worker is not None]
        if running:
            await asyncio.wait(running, timeout=shutdown_grace_s)
        for live in list(self._live.values()):
            if live.worker is not None and not live.finishing:
                self._request_cancel(live, CancelReason.SHUTDOWN, grace_s=min(1.0, self._settings.cancel_grace_s))
        pending = [live.done for live in self._live.values() if live.finishing or live.worker is not None]
        if pending:
            await asyncio.wait(pending, timeout=self._settings.cancel_grace_s + 2.0)
        if self.claims is not None:  # claimed, never started: back to the queue for the other replicas
            await self.claims.stop()  # a claim in flight first: its runs join the ones waiting here
            for live in list(self._queue):
                self._requeue(live, "replica shutting down", count_attempt=False)
        for live in list(self._queue):  # stays QUEUED in the store; its watchers must reconnect
            self._release_live(live, aborted=True)
        self._queue.clear()
        self.watching.stop()
        for task in (self._flusher, self._liveness):
            if task is not None and not task.done():  # a task that died was reported when it did
                task.cancel()
                await asyncio.wait([task])
        self.journal.flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        await self.pool.stop()

    # ------------------------------------------------------------ admission

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return sum(1 for live in self._live.values() if live.worker is not None)

    @property
    def watchdog(self) -> Watchdog:
        return self.pool.watchdog

    def status(self) -> SchedulerStatus:
        """A snapshot for health, diagnostics and the admin API; cheap, never blocks."""
        pool = self.pool
        return SchedulerStatus(
            queued=len(self._queue),
            running=self.running,
            draining=self.draining,
            workers_size=pool.size,
            workers_alive=len(pool.alive_workers()),
            workers_ready=pool.ready_count,
            workers_busy=pool.busy_count,
            restarts_total=pool.watchdog.restarts_total,
            dead_tasks=tuple(self.dead_tasks),
        )

    async def submit(self, request: pb.SubmitRunRequest) -> tuple[RunRecord, bool]:
        """Admit and durably store a run; returns (run, created). Raises Draining,
        QueueFull, or StoreError. A known request_id returns the existing run."""
        if self.draining:
            raise errors.Draining()
        rid = request.request_id or None
        if rid is not None and rid in self._by_request_id:
            return self._by_request_id[rid].record, False
        waiting = len(self._queue) + self._reserved
        if not self._shared and waiting >= self._settings.max_queued + self.pool.idle_count:
            # A retry of a submission that was already accepted is not new work.
            existing = await self._store.get_run_by_request_id(rid) if rid is not None else None
            if existing is not None:
                return existing, False
            raise errors.QueueFull(waiting)
        now = now_us()
        record = RunRecord(
            run_id=uuid.uuid4().hex,
            kind=kind_of(request.spec),
            spec=request.spec.SerializeToString(),
            state=RunState.QUEUED,
            create_us=now,
            update_us=now,
            request_id=rid,
            labels=dict(request.labels),
            timeout_ms=request.timeout.ToMilliseconds() if request.HasField("timeout") else None,
            replica="" if self._shared else self._settings.replica,
            last_seq=1,
            max_attempts=max(1, request.max_attempts),
        )
        first = convert.state_event(record.run_id, 1, now, RunState.QUEUED, None, "submitted")
        self._reserved += 1
        # The commit and the enqueueing that follows it must happen even if the
        # caller goes away meanwhile: they run in their own task.
        task = self.loop.create_task(self._store_and_enqueue(record, request.spec, first))
        task.add_done_callback(_retrieve)  # a caller that left cannot see the failure
        return await asyncio.shield(task)

    async def _store_and_enqueue(self, record: RunRecord, spec: pb.RunSpec, first: pb.RunEvent):
        # With the queue in the database, admission counts it there (all replicas).
        limit = self._settings.max_queued + self.pool.idle_count if self._shared else None
        try:
            stored, created = await self._store.submit(record, convert.event_to_stored(first), limit)
        except QueueLimitReached as exc:
            raise errors.QueueFull(exc.waiting) from None
        finally:
            self._reserved -= 1
        if not created:
            return stored, False
        self.observer.run_submitted(stored)
        if self._shared:  # whichever replica has a free worker claims it
            self.dispatch()
            return dataclasses.replace(stored, labels=dict(stored.labels)), True
        # The caller gets the run as accepted (QUEUED), whatever happens next.
        accepted = dataclasses.replace(stored, labels=dict(stored.labels))
        self._adopt(stored, spec, first)
        self.dispatch()
        return accepted, True

    def _adopt(self, record: RunRecord, spec: pb.RunSpec | None = None, first: pb.RunEvent | None = None) -> LiveRun:
        if spec is None:
            spec = pb.RunSpec.FromString(record.spec)
        channel = self._hub.open(record.run_id, record.last_seq, [first] if first is not None else [])
        live = LiveRun(record, spec, channel, self.loop.create_future())
        self._live[record.run_id] = live
        if record.request_id:
            self._by_request_id[record.request_id] = live
        if record.timeout_ms is not None:
            due_us = record.create_us + record.timeout_ms * 1000
            delay = max(0.0, (due_us - now_us()) / 1e6)
            live.deadline_handle = self.loop.call_later(delay, self._on_deadline, live)
        self._queue.append(live)
        return live

    # ------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        self.start_waiting()
        if self.claims is not None and not self.draining and self.free_slots() > 0:
            self.claims.request()

    def free_slots(self) -> int:
        """Workers free for another run here, beyond the runs already waiting here."""
        return self.pool.idle_count - len(self._queue)

    def heavy_free(self) -> int:
        """Runs of heavy kinds this replica may still start."""
        return self._settings.max_heavy_concurrent - sum(
            1 for live in self._live.values() if live.record.kind in HEAVY_KINDS
        )

    def take_claimed(self, record: RunRecord, cancel: bool) -> None:
        """A run claimed from the database for this replica: hold it and start it
        (or stop it at once when its cancel was asked meanwhile)."""
        stale = self._live.get(record.run_id)
        if stale is not None:  # an earlier attempt, taken over while this replica was silent
            self._taken_over_running(stale)
        live = self._adopt(record)
        if cancel or record.cancel_requested:
            self._request_cancel(live, CancelReason.CLIENT_REQUEST)

    def cancel_held(self, run_id: str) -> bool:
        """Stop a run held here at a client's request; False if it is not held here."""
        live = self._live.get(run_id)
        if live is None:
            return False
        self._request_cancel(live, CancelReason.CLIENT_REQUEST)
        return True

    def start_waiting(self) -> None:
        """Start the runs waiting here while workers are free."""
        while self._queue and not self.draining:
            worker = self.pool.idle()
            if worker is None:
                return
            live = self._next_startable()
            if live is None:  # only heavy runs wait, and their limit is reached
                self.pool.keep_idle(worker)
                return
            self._start(live, worker)

    def _next_startable(self) -> LiveRun | None:
        """The oldest queued run that may start now: FIFO, except that heavy runs
        over their limit let younger runs of other kinds pass them."""
        head = self._queue[0]
        if head.record.kind not in HEAVY_KINDS or self._heavy_running() < self._settings.max_heavy_concurrent:
            return self._queue.popleft()
        for live in self._queue:
            if live.record.kind not in HEAVY_KINDS:
                self._queue.remove(live)
                return live
        return None

    def _heavy_running(self) -> int:
        return sum(1 for live in self._by_token.values() if live.record.kind in HEAVY_KINDS)

    def _start(self, live: LiveRun, worker: Worker) -> None:
        record = live.record
        token = next(self._tokens)
        deadline = None
        if record.timeout_ms is not None:
            deadline = record.create_us / 1e6 + record.timeout_ms / 1000
        try:
            job = ipc.RunJob(token, record.run_id, record.kind, convert.spec_params(live.spec), deadline)
            self.pool.assign(worker, job)
        except HandoverFailed as exc:  # the worker died just now: keep the run for the next one
            self.pool.discard(worker, str(exc))
            self._handover_failed(live, str(exc))
            return
        except Exception as exc:
            log.exception("cannot hand a run to a worker", extra={"run_id": record.run_id})
            self.pool.release(worker)
            self._end(live, endings.Unhandable(str(exc)))
            return
        live.token = token
        live.worker = worker
        live.last_beat = self.loop.time()
        self._by_token[token] = live
        if record.state == RunState.RUNNING:  # claimed from the database: stored RUNNING with its event
            self.observer.run_started(record, worker.id, worker.process.pid)
            return
        now = now_us()
        previous = record.state
        record.state = RunState.RUNNING
        record.start_us = record.update_us = now
        record.replica = self._settings.replica
        event = convert.state_event(record.run_id, live.channel.next_seq(), now, RunState.RUNNING, previous, "started")
        changes = {"state": RunState.RUNNING, "start_us": now, "update_us": now, "replica": record.replica}
        # Written behind (journal.STATE_FLUSH_S): a short run's RUNNING and final states
        # then cost one commit. A crash in that window leaves the run QUEUED, so
        # it runs again after restart rather than ending INTERRUPTED.
        self.journal.state_behind(live, event, changes)
        live.channel.publish(event)
        self.observer.run_started(record, worker.id, worker.process.pid)

    def _handover_failed(self, live: LiveRun, why: str) -> None:
        """The run never reached its worker: queue it again at the head, or end it
        FAILED once its hand-over failed MAX_HANDOVER_ATTEMPTS times."""
        live.handover_failures += 1
        log.warning(
            "hand-over of a run to a worker failed",
            extra={"run_id": live.record.run_id, "attempt": live.handover_failures, "why": why},
        )
        if live.handover_failures >= MAX_HANDOVER_ATTEMPTS:
            self._end(live, endings.HandoverFailed(live.handover_failures, why))
            return
        if live.cancel_reason is not None:
            self._end(live, endings.NotStarted())
            return
        record = live.record
        if record.state == RunState.RUNNING and not self._shared:  # published RUNNING: say it waits again
            now = now_us()
            record.state, record.start_us, record.update_us = RunState.QUEUED, None, now
            event = convert.state_event(
                record.run_id, live.channel.next_seq(), now, RunState.QUEUED, RunState.RUNNING, "hand-over failed"
            )
            self.journal.emit(live, event, {"state": RunState.QUEUED, "start_us": None, "update_us": now})
        self._queue.appendleft(live)

    def _on_message(self, worker: Worker, msg: object) -> None:
        live = self._by_token.get(getattr(msg, "token", 0))
        if live is None or live.finishing:
            return  # a late message of a run already ended
        record = live.record
        live.last_beat = self.loop.time()
        if isinstance(msg, ipc.Heartbeat):
            return
        if isinstance(msg, ipc.Progress):
            now = now_us()
            # The event first: values it refuses must not reach the record.
            event = pb.RunEvent(run_id=record.run_id, seq=live.channel.next_seq())
            event.time.FromMicroseconds(now)
            progress = event.progress
            progress.done, progress.total, progress.message = msg.done, msg.total, msg.message
            if msg.total > 0:
                progress.fraction = min(1.0, msg.done / msg.total)
            record.progress_done, record.progress_total, record.progress_message = msg.done, msg.total, msg.message
            record.update_us = now
            live.pending_progress = event
            self.journal.progress_behind(live)
            live.channel.publish(event)
        elif isinstance(msg, ipc.Log):
            event = pb.RunEvent(run_id=record.run_id, seq=live.channel.next_seq())
            event.time.FromMicroseconds(now_us())
            event.log.level, event.log.message = msg.level, msg.message
            self.journal.emit(live, event, None)
        elif isinstance(msg, ipc.Done):
            result = struct_pb2.Struct()
            result.ParseFromString(msg.result)
            self._end(live, endings.JobDone(result))
        elif isinstance(msg, ipc.Cancelled):
            self._end(live, endings.JobStopped())
        elif isinstance(msg, ipc.Failed):
            if msg.detail:
                log.warning("job failed", extra={"run_id": record.run_id, "reason": msg.reason, "detail": msg.detail})
            self._end(live, endings.JobFailed(msg.reason, msg.message))

    def _on_worker_exit(self, worker: Worker) -> None:
        live = self._by_token.get(worker.token)
        if live is None or live.finishing:
            return
        live.worker = None  # nothing to release: the process is gone
        self._by_token.pop(live.token, None)
        if live.kill_handle is not None:
            live.kill_handle.cancel()
            live.kill_handle = None
        if not self.pool.has_taken(worker, live.token):
            # It died before it received the run: the run itself did nothing wrong.
            self._handover_failed(live, worker.failure or f"the worker exited (code {worker.process.exitcode})")
            self.dispatch()
            return
        self._end(live, endings.WorkerGone(worker.process.exitcode, worker.killed, worker.failure))

    # ------------------------------------------------------------ cancellation

    async def cancel(self, run_id: str, reason: CancelReason) -> RunRecord:
        """Request cancellation; idempotent. Returns the run as it is now (a
        running run ends once its job stops, at the latest after cancel_grace)."""
        live = self._live.get(run_id)
        if live is None:
            if self.claims is not None:
                return await self.claims.cancel_elsewhere(run_id)
            record = await self._store.get_run(run_id)
            if record is None:
                raise errors.NotFound(f"run {run_id!r} not found")
            return record
        self._request_cancel(live, reason)
        return live.record

    def cancel_nowait(self, run_id: str, reason: CancelReason) -> None:
        live = self._live.get(run_id)
        if live is not None:
            self._request_cancel(live, reason)
        elif self.claims is not None:
            task = self.loop.create_task(self.claims.cancel_elsewhere_retrying(run_id), name=f"cancel-{run_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(_retrieve)

    def _request_cancel(self, live: LiveRun, reason: CancelReason, grace_s: float | None = None) -> None:
        if live.finishing:
            return
        if live.cancel_reason is None:
            live.cancel_reason = reason
            self.observer.run_cancel_requested(live.record, reason.value)
        record = live.record
        if not record.cancel_requested:
            record.cancel_requested = True
            self._store.write(record.run_id, {"cancel_requested": True})
        if live.worker is None:  # still queued
            self._end(live, endings.NotStarted())
            return
        self.pool.cancel(live.worker, live.token)
        if live.kill_handle is None:
            delay = self._settings.cancel_grace_s if grace_s is None else grace_s
            live.kill_handle = self.loop.call_later(delay, self._kill, live)

    def _kill(self, live: LiveRun) -> None:
        live.kill_handle = None
        if live.finishing or live.worker is None:
            return
        log.warning("job ignored cancellation; killing its worker", extra={"run_id": live.record.run_id})
        self.pool.kill(live.worker)  # reports the exit: _on_worker_exit finishes the run

    async def _check_liveness_forever(self) -> None:
        timeout = self._settings.heartbeat_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if self.pool.reading_paused:
                continue  # nobody can be heard while the runner does not listen
            now = self.loop.time()
            for live in list(self._live.values()):
                worker = live.worker
                if worker is None or live.finishing or now - live.last_beat <= timeout:
                    continue
                silent_s = round(now - live.last_beat, 1)
                if not self.pool.has_taken(worker, live.token):
                    log.error("a worker did not take its run; replacing it", extra={"run_id": live.record.run_id})
                    worker.failure = f"the worker did not take the run within {silent_s:g} s"
                else:
                    log.error(
                        "run's worker stopped heartbeating; killing it",
                        extra={"run_id": live.record.run_id, "silent_s": silent_s},
                    )
                    live.cancel_reason = CancelReason.WORKER_LOST
                self.pool.kill(worker, churn=True)  # _on_worker_exit ends or requeues the run

    def _on_deadline(self, live: LiveRun) -> None:
        live.deadline_handle = None
        self._request_cancel(live, CancelReason.DEADLINE)

    async def restart_workers(self, grace_s: float) -> None:
        """Replace every worker process: idle ones at once, busy ones when their run
        ends; runs still running after grace_s are stopped and stored INTERRUPTED."""
        retiring = self.pool.retire_all()
        busy = [self._by_token[w.token].done for w in retiring if w.token in self._by_token]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)
        for worker in retiring:
            live = self._by_token.get(worker.token) if worker.alive and worker.token else None
            if live is not None:
                self._request_cancel(live, CancelReason.RESTART, grace_s=min(1.0, self._settings.cancel_grace_s))
        await self.pool.wait_ready(timeout_s=30.0)

    # ------------------------------------------------------------ the end of a run

    def _end(self, live: LiveRun, ending: endings.Ending) -> None:
        """End a run held here as endings.outcome() decides from what happened to it
        and why it was being stopped. A run stopped by this replica's shutdown that
        allows another attempt goes back to the other replicas' queue instead."""
        decided = endings.outcome(ending, live.cancel_reason, self._settings.heartbeat_timeout_s)
        record = live.record
        if self._shared and decided.stopped_for is CancelReason.SHUTDOWN and record.attempt < record.max_attempts:
            self._requeue(live, "replica shutting down; run queued again", count_attempt=live.token != 0)
            return
        self._finish(live, decided.state, decided.reason, result=decided.result, error=decided.error)

    def _finish(self, live: LiveRun, state: RunState, reason: str, result=None, error=None) -> None:
        """Where a run gets the final state _end() decided: persist it, then publish it.

        Nobody learns the final state before the store holds it: the record keeps
        its stored state, and the result and terminal events wait, until the
        write commits (the store retries a failing write while the process lives)."""
        if live.finishing:
            return
        live.finishing = True
        for handle in (live.deadline_handle, live.kill_handle):
            if handle is not None:
                handle.cancel()
        self._by_token.pop(live.token, None)
        try:
            self._queue.remove(live)
        except ValueError:
            pass
        record = live.record
        now = now_us()
        events, changes = self.journal.take_unwritten(live)
        final = {"state": state, "end_us": now, "update_us": now}
        to_publish = []
        if result is not None:
            final["result"] = result.SerializeToString()
            event = pb.RunEvent(run_id=record.run_id, seq=live.channel.next_seq())
            event.time.FromMicroseconds(now)
            event.result.CopyFrom(result)
            to_publish.append(event)
        if error is not None:
            final["error"] = error.SerializeToString()
        to_publish.append(
            convert.state_event(record.run_id, live.channel.next_seq(), now, state, record.state, reason, error)
        )
        changes.update(final)
        events.extend(convert.event_to_stored(ev) for ev in to_publish)
        fut = self._store.write(record.run_id, changes, events, self._fence(record))
        task = self.loop.create_task(self._publish_final(live, final, to_publish, fut), name=f"finish-{record.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        worker, live.worker = live.worker, None
        if worker is not None:
            self.pool.release(worker)  # frees the slot now; the next run starts at once

    async def _publish_final(
        self, live: LiveRun, final: dict, to_publish: list[pb.RunEvent], fut: asyncio.Future
    ) -> None:
        record = live.record
        try:
            await fut
        except RunTakenOver:
            self._taken_over(live)
            return
        except StoreError as exc:
            log.error(
                "the final state of a run could not be stored",
                extra={"run_id": record.run_id, "state": final["state"].name, "error": str(exc)},
            )
            fallback = None if isinstance(exc, StoreClosed) else await self._store_refused_final(live)
            if fallback is None:
                # Nothing final is stored, so nobody is told anything final. Watchers
                # are cut off (UNAVAILABLE) and find what the store holds when they
                # come back (a restart marks the run INTERRUPTED).
                self._release_live(live, aborted=True)
                if not live.done.done():
                    live.done.set_result(None)
                return
            final, to_publish = fallback
        for name, value in final.items():
            setattr(record, name, value)
        channel = live.channel
        for event in to_publish:
            channel.publish(event)
        channel.mark_persisted(to_publish[-1].seq)
        self.observer.run_finished(record, to_publish[-1].state_change)
        self._release_live(live)
        if not live.done.done():
            live.done.set_result(record.state)

    async def _store_refused_final(self, live: LiveRun) -> tuple[dict, list[pb.RunEvent]] | None:
        """The database refused a run's final write for good (something in it it
        cannot hold): store a minimal final state instead, FAILED with
        FINAL_WRITE_REFUSED, so the run still ends. None if even that fails."""
        record = live.record
        now = now_us()
        error = final_error(
            RunState.FAILED,
            "the database refused the run's final write; its outcome could not be stored",
            "FINAL_WRITE_REFUSED",
        )
        event = convert.state_event(
            record.run_id, live.channel.next_seq(), now, RunState.FAILED, record.state, "final write refused", error
        )
        final = {"state": RunState.FAILED, "end_us": now, "update_us": now, "error": error.SerializeToString()}
        try:
            await self._store.write(record.run_id, dict(final), [convert.event_to_stored(event)], self._fence(record))
        except (StoreError, RunTakenOver):
            return None
        return final, [event]

    def _requeue(self, live: LiveRun, reason: str, count_attempt: bool) -> None:
        """Give a run held here back to the database's queue (QUEUED, owned by no
        replica; attempt + 1 if it started). Its watchers here are ended so that
        they resume wherever the run goes."""
        if live.finishing:
            return
        live.finishing = True
        self._by_token.pop(live.token, None)
        try:
            self._queue.remove(live)
        except ValueError:
            pass
        record = live.record
        now = now_us()
        events, changes = self.journal.take_unwritten(live)
        event = convert.state_event(record.run_id, live.channel.next_seq(), now, RunState.QUEUED, record.state, reason)
        attempt = record.attempt + 1 if count_attempt else record.attempt
        # The stop was this replica's own (its shutdown), not a request to cancel the run.
        changes.update(
            state=RunState.QUEUED, start_us=None, update_us=now, replica="", attempt=attempt, cancel_requested=False
        )
        events.append(convert.event_to_stored(event))
        fut = self._store.write(record.run_id, changes, events, self._fence(record))
        worker, live.worker = live.worker, None
        if worker is not None:
            self.pool.release(worker)

        def written(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                record.state, record.attempt, record.replica = RunState.QUEUED, attempt, ""
                record.cancel_requested = False
                self.observer.run_requeued(record, reason)
                live.channel.publish(event)
                live.channel.mark_persisted(event.seq)
            self._release_live(live, aborted=True)
            if not live.done.done():
                live.done.set_result(None)

        fut.add_done_callback(written)

    def _fence(self, record: RunRecord) -> tuple[str, int] | None:
        """With the queue in the database, a run's last write as this replica's holds
        only while the run is still this replica's (see Store.write)."""
        if self._shared and record.state == RunState.RUNNING:
            return (self._settings.replica, record.attempt)
        return None

    def _taken_over(self, live: LiveRun) -> None:
        log.warning(
            "run taken over while this replica was silent; its outcome here is dropped",
            extra={"run_id": live.record.run_id},
        )
        self._release_live(live, aborted=True)
        if not live.done.done():
            live.done.set_result(None)

    def abandon(self) -> None:
        """This replica's lease was lost: the leader has ended or requeued its runs
        in the database. Stop them here without writing anything more."""
        for live in list(self._live.values()):
            self._drop(live)
        self._queue.clear()

    def _drop(self, live: LiveRun) -> None:
        """Stop a run here without writing anything more: it is not this replica's."""
        live.finishing = True
        self._by_token.pop(live.token, None)
        try:
            self._queue.remove(live)
        except ValueError:
            pass
        worker, live.worker = live.worker, None
        if worker is not None:
            self.pool.kill(worker)
        self.journal.forget(live)
        self._release_live(live, aborted=True)
        if not live.done.done():
            live.done.set_result(None)

    def _taken_over_running(self, live: LiveRun) -> None:
        """A write of a run still running here was refused: the run was taken over
        (this replica's lease expired meanwhile; the leader ended or requeued it)."""
        log.warning(
            "run taken over while this replica was silent; stopping it here",
            extra={"run_id": live.record.run_id},
        )
        self._drop(live)

    def _release_live(self, live: LiveRun, aborted: bool = False) -> None:
        run_id = live.record.run_id
        for handle in (live.deadline_handle, live.kill_handle):
            if handle is not None:
                handle.cancel()
        if self._live.get(run_id) is live:
            self._live.pop(run_id)
            self._hub.drop(run_id, aborted)
        else:  # a later attempt of the run is held here now: leave it be
            live.channel.close(aborted)
        if live.record.request_id and self._by_request_id.get(live.record.request_id) is live:
            self._by_request_id.pop(live.record.request_id)

    # ------------------------------------------------------------ reads

    def live_record(self, run_id: str) -> RunRecord | None:
        live = self._live.get(run_id)
        return live.record if live is not None else None

    def live_run(self, run_id: str) -> LiveRun | None:
        return self._live.get(run_id)

    def watch(self, run_id: str, after_seq: int) -> AsyncIterator[pb.RunEvent]:
        """A run's events after after_seq, in seq order, ending after the terminal
        one (see watching.py). Raises NotFound, or WatcherTooSlow."""
        return self.watching.watch(run_id, after_seq)
