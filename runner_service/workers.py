"""Worker processes: start, hand out runs, read their messages, kill and replace.

Workers are started with the forkserver method (never a plain fork of the server
process, whose grpc threads make fork unsafe). Each worker has a socket to the
runner, driven on the event loop without ever blocking it (ipc.py: partial reads
and writes are kept, frames are bounded), and a shared cancellation word: setting
it to a run's token cancels that run without any message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable

from runner_service import ipc, worker_main
from runner_service.watchdog import Watchdog

log = logging.getLogger(__name__)

# Beyond the result itself a frame carries a few fields; progress and log
# messages are far smaller (the job context truncates them).
FRAME_OVERHEAD_BYTES = 64 * 1024


class HandoverFailed(Exception):
    """A run could not be handed to a worker (its process is gone or broken)."""


class Worker:
    __slots__ = (
        "alive",
        "cancel_flag",
        "conn",
        "failure",
        "fd",
        "id",
        "killed",
        "outbox",
        "process",
        "reader",
        "ready",
        "retiring",
        "taken",
        "token",
        "writing",
    )

    def __init__(self, wid: int, process, conn, cancel_flag, taken, max_frame: int) -> None:
        self.id = wid
        self.process = process
        self.conn = conn
        self.fd: int = conn.fileno()
        self.cancel_flag = cancel_flag
        # The worker writes a run's token here the moment it receives the run: a
        # hand-over confirmation that costs no message (read only when it matters).
        self.taken = taken
        self.reader = ipc.FrameReader(max_frame)
        self.outbox = ipc.Outbox()
        self.writing = False  # a writer callback waits for the socket
        self.token = 0  # token of the run it executes, 0 when idle
        self.ready = False
        self.alive = True
        self.killed = False  # killed by the pool: not churn
        self.retiring = False  # being replaced by an operator restart
        self.failure: str | None = None  # why the pool killed it, when it broke the protocol

    @property
    def pid(self) -> int | None:
        return self.process.pid


class WorkerPool:
    """A fixed number of worker processes.

    on_message(worker, msg) is called on the event loop for every message of a
    worker (an ipc dataclass); on_exit(worker) when a worker process ended (after
    a kill too).
    """

    def __init__(
        self,
        size: int,
        targets: dict[str, str],
        on_message: Callable[[Worker, object], None],
        on_exit: Callable[[Worker], None],
        heartbeat_s: float = 1.0,
        watchdog: Watchdog | None = None,
        scenario_dir: str = "",
        max_result_bytes: int = 1024 * 1024,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.size = size
        self._heartbeat_s = heartbeat_s
        self._start_timeout_s = start_timeout_s
        self.watchdog = watchdog or Watchdog()
        self._targets = targets
        self._scenario_dir = scenario_dir
        self._max_result_bytes = max_result_bytes
        self._max_frame = max_result_bytes + FRAME_OVERHEAD_BYTES
        self._on_message = on_message
        self._on_exit = on_exit
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["runner_service.worker_main"])
        self._ids = itertools.count(1)
        self._workers: dict[int, Worker] = {}
        self._idle: list[Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_waiters: list[asyncio.Future] = []
        self._stopping = False
        self.reading_paused = False
        self.on_idle: Callable[[], None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the pool is not started"
        return self._loop

    # ------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float = 30.0) -> None:
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            await self._spawn()
        await self.wait_ready(timeout_s)

    async def wait_ready(self, timeout_s: float) -> None:
        waiter = self.loop.create_future()
        self._ready_waiters.append(waiter)
        self._check_ready()
        await asyncio.wait_for(waiter, timeout_s)

    def _check_ready(self) -> None:
        alive = self.alive_workers()
        if len(alive) >= self.size and all(w.ready and not w.retiring for w in alive):
            for waiter in self._ready_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._ready_waiters.clear()

    async def _spawn(self) -> Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        flag = self._ctx.RawValue("q", 0)
        taken = self._ctx.RawValue("q", 0)
        wid = next(self._ids)
        process = self._ctx.Process(
            target=worker_main.main,
            args=(
                child_conn,
                flag,
                taken,
                self._targets,
                self._heartbeat_s,
                self._scenario_dir,
                self._max_result_bytes,
            ),
            name=f"runner-worker-{wid}",
            daemon=True,
        )
        # Starting talks to the forkserver over a socket: keep it off the loop.
        await self.loop.run_in_executor(None, process.start)
        child_conn.close()
        worker = Worker(wid, process, parent_conn, flag, taken, self._max_frame)
        os.set_blocking(worker.fd, False)
        self._workers[wid] = worker
        self.loop.add_reader(worker.fd, self._readable, worker)
        self.loop.add_reader(process.sentinel, self._exited, worker)
        self.loop.call_later(self._start_timeout_s, self._check_started, worker)
        return worker

    def _check_started(self, worker: Worker) -> None:
        if worker.alive and not worker.ready:
            log.error("a worker process did not start in time; replacing it", extra={"worker": worker.id})
            worker.failure = f"the worker did not start within {self._start_timeout_s:g} s"
            self.kill(worker, churn=True)

    async def _respawn(self, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        if not self._stopping:
            await self._spawn()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask every worker to stop, kill those that do not within timeout_s."""
        self._stopping = True
        if self._loop is None:
            return
        workers = list(self._workers.values())
        for worker in workers:
            self._send(worker, ipc.Stop())
        deadline = self.loop.time() + timeout_s
        for worker in workers:
            left = max(0.0, deadline - self.loop.time())
            await self.loop.run_in_executor(None, worker.process.join, left)
            if worker.process.is_alive():
                worker.process.kill()
                await self.loop.run_in_executor(None, worker.process.join, 1.0)
            self._forget(worker)

    # ------------------------------------------------------------ runs

    def idle(self) -> Worker | None:
        while self._idle:
            worker = self._idle.pop()
            if worker.alive and worker.token == 0 and not worker.retiring:
                return worker
        return None

    def keep_idle(self, worker: Worker) -> None:
        """Give back a worker taken with idle() but not used."""
        self._idle.append(worker)

    @property
    def idle_count(self) -> int:
        return sum(1 for w in self._idle if w.alive and w.token == 0 and not w.retiring)

    def assign(self, worker: Worker, job: ipc.RunJob) -> None:
        """Hand a run to an idle worker. The hand-over completes when the worker
        writes the run's token into its `taken` word (has_taken()). Raises
        HandoverFailed when the worker is gone (the caller keeps the run and should
        replace the worker with discard()), or the pickling error when the job's
        parameters cannot be carried."""
        frame = ipc.encode(job)  # raises before anything is sent
        worker.token = job.token
        if not self._write(worker, frame):
            worker.token = 0
            raise HandoverFailed(f"worker {worker.id} is gone")

    @staticmethod
    def has_taken(worker: Worker, token: int) -> bool:
        """Whether the worker received the run with this token (the hand-over completed)."""
        return worker.taken.value == token

    def cancel(self, worker: Worker, token: int) -> None:
        """Raise the run's cancellation flag; a cooperative job stops at its next check."""
        if worker.token == token:
            worker.cancel_flag.value = token

    def release(self, worker: Worker) -> None:
        """The worker finished its run and is free again."""
        worker.token = 0
        if worker.retiring:
            self._retire(worker)
            return
        if worker.alive and not self._stopping:
            self._idle.append(worker)
            if self.on_idle is not None:
                self.on_idle()

    def retire_all(self) -> list[Worker]:
        """Replace every worker: idle ones now, busy ones when their run ends (or
        when the caller kills them). Replacements do not count as churn."""
        retiring = self.alive_workers()
        for worker in retiring:
            worker.retiring = True
        for worker in retiring:
            if worker.token == 0:
                self._retire(worker)
        return retiring

    def _retire(self, worker: Worker) -> None:
        if not self._send(worker, ipc.Stop()):  # it exits; _exited spawns its replacement
            self.kill(worker)

    def kill(self, worker: Worker, churn: bool = False) -> None:
        """SIGKILL the worker; it is replaced. churn=True when it is killed for
        misbehaving (no heartbeat, a broken message), which counts for the watchdog."""
        if worker.alive:
            worker.killed = not churn
            try:
                os.kill(worker.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._exited(worker)

    def _broken(self, worker: Worker, why: str) -> None:
        """The worker broke the protocol: kill and replace it (counted as churn);
        its run ends FAILED with `why` (WORKER_PROTOCOL)."""
        worker.failure = why
        self.kill(worker, churn=True)

    def discard(self, worker: Worker, why: str) -> None:
        """Replace a worker whose socket broke: it cannot be trusted with a run."""
        log.warning("replacing a worker whose socket broke", extra={"worker": worker.id, "why": why})
        worker.failure = why
        self.kill(worker)

    def alive_workers(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.alive]

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self._workers.values() if w.alive and w.ready and not w.retiring)

    @property
    def busy_count(self) -> int:
        return sum(1 for w in self._workers.values() if w.alive and w.token)

    def pause_reading(self) -> None:
        """Stop reading the workers' messages (back-pressure): a job that keeps
        reporting blocks on its own socket until resume_reading()."""
        if self.reading_paused:
            return
        self.reading_paused = True
        for worker in self.alive_workers():
            self.loop.remove_reader(worker.fd)

    def resume_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        for worker in self.alive_workers():
            if not worker.conn.closed:
                self.loop.add_reader(worker.fd, self._readable, worker)

    # ------------------------------------------------------------ the socket

    def _send(self, worker: Worker, message: ipc.ToWorker) -> bool:
        return self._write(worker, ipc.encode(message))

    def _write(self, worker: Worker, frame: bytes) -> bool:
        """Queue a frame and write what the socket takes now; the rest goes when
        it is writable. False when the worker is gone."""
        if not worker.alive:
            return False
        worker.outbox.add(frame)
        if worker.writing:
            return True
        return self._flush(worker)

    def _flush(self, worker: Worker) -> bool:
        try:
            done = worker.outbox.flush(worker.fd)
        except OSError as exc:  # the worker's end is closed: it died or is dying
            self._stop_writing(worker)
            log.warning("cannot write to a worker", extra={"worker": worker.id, "error": repr(exc)})
            return False
        if done:
            self._stop_writing(worker)
        elif not worker.writing:
            worker.writing = True
            self.loop.add_writer(worker.fd, self._writable, worker)
        return True

    def _writable(self, worker: Worker) -> None:
        if not self._flush(worker) and worker.alive:
            self.discard(worker, "its socket refused a write")

    def _stop_writing(self, worker: Worker) -> None:
        if worker.writing:
            worker.writing = False
            try:
                self.loop.remove_writer(worker.fd)
            except (ValueError, OSError):
                pass

    # ------------------------------------------------------------ events

    def _readable(self, worker: Worker) -> None:
        try:
            messages, eof, error = worker.reader.read_from(worker.fd)
        except OSError:
            messages, eof, error = [], True, None
        for message in messages:
            if not worker.alive:
                return
            if isinstance(message, ipc.Ready):
                worker.ready = True
                self._check_ready()
                self.release(worker)
                continue
            try:
                self._on_message(worker, message)
            except Exception as exc:  # a message the runner cannot use: replace its sender
                log.exception("a worker's message could not be used; replacing it", extra={"worker": worker.id})
                self._broken(worker, f"the job sent a message the runner cannot use ({type(exc).__name__})")
                return
        if error is not None and worker.alive:
            if isinstance(error, ipc.FrameTooLarge):
                log.error("a worker sent an oversized message", extra={"worker": worker.id, "why": str(error)})
                self._broken(worker, f"the job sent a message over the limit of {self._max_frame} bytes")
            else:
                log.error("a worker sent a message that cannot be read", extra={"worker": worker.id})
                self._broken(worker, f"the worker sent a message that cannot be read ({type(error).__name__})")
            return
        if eof and worker.alive:
            self.loop.remove_reader(worker.fd)  # the exit itself is seen on the sentinel

    def _exited(self, worker: Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False  # from here on it is handed nothing, even if a run ends below
        self._drain(worker)
        self._forget(worker)
        churn = not worker.killed and not worker.retiring and not self._stopping
        if churn:
            log.warning("worker process died", extra={"worker": worker.id, "exitcode": worker.process.exitcode})
            self.watchdog.record_restart()
        self._on_exit(worker)
        if not self._stopping:
            # Churn slows replacements down (watchdog cooldown); a worker that died
            # before it was ready will likely die again.
            delay = self.watchdog.respawn_delay_s() if churn else 0.0
            if not worker.ready:
                delay = max(delay, 1.0)
            task = self.loop.create_task(self._respawn(delay), name=f"respawn-worker-{worker.id}")
            task.add_done_callback(_log_failure)
        self._check_ready()

    def _drain(self, worker: Worker) -> None:
        """Deliver what an exited worker wrote before it died (a Done sent just
        before the end): its run ends as it really did, not as a crash."""
        if worker.conn.closed:
            return
        try:
            messages, _, _ = worker.reader.read_from(worker.fd)
        except OSError:
            return
        for message in messages:
            if isinstance(message, ipc.Ready):
                continue
            try:
                self._on_message(worker, message)
            except Exception:  # the worker is gone anyway; its run ends as a crash
                log.exception("a message of an exited worker could not be used", extra={"worker": worker.id})
                return

    def _forget(self, worker: Worker) -> None:
        worker.alive = False
        self._workers.pop(worker.id, None)
        self._stop_writing(worker)
        for fd in (worker.fd if not worker.conn.closed else None, worker.process.sentinel):
            if fd is not None:
                try:
                    self.loop.remove_reader(fd)
                except (ValueError, OSError):
                    pass
        if not worker.conn.closed:
            worker.conn.close()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not start a worker process", exc_info=task.exception())
