"""Worker processes: start, hand out runs, read their messages, kill and replace.

Workers are started with the forkserver method (never a plain fork of the server
process, whose grpc threads make fork unsafe). Each worker has a duplex pipe,
read on the event loop with add_reader, and a shared cancellation word: setting it
to a run's token cancels that run without any message.
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

from runner_service import worker_main
from runner_service.watchdog import Watchdog

log = logging.getLogger(__name__)


class Worker:
    __slots__ = ("alive", "cancel_flag", "conn", "id", "killed", "process", "ready", "retiring", "token")

    def __init__(self, wid: int, process, conn, cancel_flag) -> None:
        self.id = wid
        self.process = process
        self.conn = conn
        self.cancel_flag = cancel_flag
        self.token = 0  # token of the run it executes, 0 when idle
        self.ready = False
        self.alive = True
        self.killed = False  # killed by the pool: not churn
        self.retiring = False  # being replaced by an operator restart

    @property
    def pid(self) -> int | None:
        return self.process.pid


class WorkerPool:
    """A fixed number of worker processes.

    on_message(worker, msg) is called on the event loop for every message of a
    worker; on_exit(worker) when a worker process ended (after a kill too).
    """

    def __init__(
        self,
        size: int,
        targets: dict[str, str],
        on_message: Callable[[Worker, tuple], None],
        on_exit: Callable[[Worker], None],
        heartbeat_s: float = 1.0,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.size = size
        self._heartbeat_s = heartbeat_s
        self.watchdog = watchdog or Watchdog()
        self._targets = targets
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
        self.on_idle: Callable[[], None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float = 30.0) -> None:
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            await self._spawn()
        await self.wait_ready(timeout_s)

    async def wait_ready(self, timeout_s: float) -> None:
        waiter = self._loop.create_future()
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
        wid = next(self._ids)
        process = self._ctx.Process(
            target=worker_main.main,
            args=(child_conn, flag, self._targets, self._heartbeat_s),
            name=f"runner-worker-{wid}",
            daemon=True,
        )
        # Starting talks to the forkserver over a socket: keep it off the loop.
        await self._loop.run_in_executor(None, process.start)
        child_conn.close()
        worker = Worker(wid, process, parent_conn, flag)
        self._workers[wid] = worker
        self._loop.add_reader(parent_conn.fileno(), self._readable, worker)
        self._loop.add_reader(process.sentinel, self._exited, worker)
        return worker

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
            try:
                worker.conn.send(("stop",))
            except OSError:
                pass
        deadline = self._loop.time() + timeout_s
        for worker in workers:
            left = max(0.0, deadline - self._loop.time())
            await self._loop.run_in_executor(None, worker.process.join, left)
            if worker.process.is_alive():
                worker.process.kill()
                await self._loop.run_in_executor(None, worker.process.join, 1.0)
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

    def assign(self, worker: Worker, token: int, run_id: str, kind: str, params: dict, deadline: float | None) -> None:
        worker.token = token
        worker.conn.send(("run", token, run_id, kind, params, deadline))

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
        try:
            worker.conn.send(("stop",))  # it exits; _exited spawns its replacement
        except OSError:
            self.kill(worker)

    def kill(self, worker: Worker, churn: bool = False) -> None:
        """SIGKILL the worker; it is replaced. churn=True when it is killed for
        misbehaving (no heartbeat), which counts for the watchdog."""
        if worker.alive:
            worker.killed = not churn
            try:
                os.kill(worker.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._exited(worker)

    def alive_workers(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.alive]

    @property
    def busy_count(self) -> int:
        return sum(1 for w in self._workers.values() if w.alive and w.token)

    # ------------------------------------------------------------ events

    def _readable(self, worker: Worker) -> None:
        conn = worker.conn
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "ready":
                    worker.ready = True
                    self._check_ready()
                    self.release(worker)
                else:
                    self._on_message(worker, msg)
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())

    def _exited(self, worker: Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
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
            task = self._loop.create_task(self._respawn(delay), name=f"respawn-worker-{worker.id}")
            task.add_done_callback(_log_failure)
        self._check_ready()

    def _forget(self, worker: Worker) -> None:
        worker.alive = False
        self._workers.pop(worker.id, None)
        for fd in (worker.conn.fileno() if not worker.conn.closed else None, worker.process.sentinel):
            if fd is not None:
                try:
                    self._loop.remove_reader(fd)
                except (ValueError, OSError):
                    pass
        if not worker.conn.closed:
            worker.conn.close()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not start a worker process", exc_info=task.exception())
