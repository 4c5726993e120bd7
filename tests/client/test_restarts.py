"""The client against runners that go away: killed (-9) or drained (SIGTERM) and
started again where the client looks for them, a connection cut after the runner
answered, a replica restarted under a watch. No run is made twice, no event is
lost or repeated, and every retry waits within its bounds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time

import grpc
import pytest

from protos.runner.v1 import runner_pb2 as pb
from runner_client import AsyncRunnerClient, RetryNotice, RetryPolicy, RetryThrottle, RunnerClient, specs
from tests.client.processes import RunnerProcesses
from tests.conftest import non_progress
from tests.e2e.test_process import free_port
from tests.e2e.test_replicas import replica_env

pytestmark = pytest.mark.timeout(180)

#: Retries patient enough for a runner process to come back (it takes a second or three).
PATIENT = RetryPolicy(max_attempts=40, initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=60)


def patient(**more) -> dict:
    """Client arguments for riding out a restart: PATIENT, and a throttle with room
    for its attempts (the default one stops retrying after ten failures in a row)."""
    return dict(retry=PATIENT, throttle=RetryThrottle(max_tokens=100), **more)


class WatchRequests(grpc.UnaryStreamClientInterceptor):
    """Records the after_seq of every WatchRun the blocking client opens."""

    def __init__(self) -> None:
        self.after_seqs: list[int] = []

    def intercept_unary_stream(self, continuation, client_call_details, request):
        if isinstance(request, pb.WatchRunRequest):
            self.after_seqs.append(request.after_seq)
        return continuation(client_call_details, request)


def bounded(predicate, timeout_s: float, what: str, poll_s: float = 0.02):
    """Poll a condition in another thread or process (nothing to wait on), bounded."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(poll_s)
    return value


def runs_with_request_id(db, request_id: str) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return [row[0] for row in conn.execute("SELECT run_id FROM runs WHERE request_id = ?", (request_id,))]


def assert_each_event_once_in_order(got: list[pb.RunEvent], full: list[pb.RunEvent]) -> None:
    seqs = [e.seq for e in got]
    assert seqs == sorted(set(seqs)), f"seqs out of order or repeated: {seqs}"
    assert non_progress(got) == non_progress(full), "a state change, log line or result was lost or changed"
    assert got[-1] == full[-1] and got[-1].WhichOneof("event") == "state_change"


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_submit_retried_across_a_runner_restart_creates_one_run(processes: RunnerProcesses, tmp_path, stop):
    db = tmp_path / "runner.db"
    env = dict(RUNNER_DRAIN_PERIOD_S="3", RUNNER_SHUTDOWN_GRACE_S="0.5")
    first = processes.start("runner", db=db, **env)
    with RunnerClient(first.address) as client:
        busy = client.submit_run(specs.diagnostic(ticks=6000, tick_s=0.01))  # keeps a SIGTERM drain going
        bounded(lambda: client.get_run(busy.run_id).state == pb.RUNNING, 10, "the busy run to start")
    if stop == "kill -9":
        processes.kill(first)
    else:
        first.proc.send_signal(15)
        bounded(lambda: "shutting down" in first.log_tail(), 10, "the drain to begin")

    notices: list[RetryNotice] = []
    with RunnerClient(first.address, **patient(on_retry=notices.append)) as client:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            submitted = pool.submit(client.submit_run, specs.diagnostic(ticks=1), request_id="across-restart")
            bounded(lambda: len(notices) >= 2, 20, "two refused attempts")
            if stop == "SIGTERM":
                assert first.proc.wait(20) == 0
            again = processes.start("runner", port=first.port, db=db)
            run = submitted.result(timeout=30)
        assert run.request_id == "across-restart"
        assert client.submit_run(specs.diagnostic(ticks=1), request_id="across-restart").run_id == run.run_id
    assert runs_with_request_id(db, "across-restart") == [run.run_id]
    reasons = {n.error.reason for n in notices}
    if stop == "SIGTERM":
        # The draining runner said so, with RetryInfo (1 s): those waits honoured it.
        assert "DRAINING" in reasons
        assert all(n.delay_s >= 1.0 for n in notices if n.error.reason == "DRAINING")
    assert all(n.delay_s <= PATIENT.max_backoff_s for n in notices if n.error.retry_after_s is None)
    assert again.proc.poll() is None


class CuttingProxy:
    """A TCP proxy in front of the runner. Armed, it lets the client's next bytes
    through but swallows everything the runner sends back for `hold_s`, then cuts
    both connections: the runner did the work, its answer never arrived."""

    def __init__(self, upstream_port: int, hold_s: float = 0.3) -> None:
        self.upstream_port = upstream_port
        self.hold_s = hold_s
        self.armed = False
        self.swallowed = 0
        self.cut = asyncio.Event()
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while data := await src.read(65536):
                    if answers and self.armed:
                        self.swallowed += len(data)
                        if not self.cut.is_set():
                            self.cut.set()
                            loop = asyncio.get_running_loop()
                            loop.call_later(self.hold_s, self._cut, writer, up_writer)
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        finally:
            self._tasks.discard(task)

    def _cut(self, *writers: asyncio.StreamWriter) -> None:
        self.armed = False
        for writer in writers:
            writer.transport.abort()


async def test_a_submit_whose_answer_was_lost_returns_the_run_it_made(start_runner):
    async with start_runner() as running:
        port = int(running.address.rsplit(":", 1)[1])
        proxy = CuttingProxy(port)
        address = await proxy.start()
        notices: list[RetryNotice] = []
        try:
            async with AsyncRunnerClient(address, on_retry=notices.append) as client:
                await client.list_scenarios()  # the connection is up, its settings exchanged
                proxy.armed = True
                run = await asyncio.wait_for(client.submit_run(specs.diagnostic(ticks=1)), 30)
            assert proxy.cut.is_set() and proxy.swallowed > 0 and proxy.connections == 2
            assert [n.error.code for n in notices] == [grpc.StatusCode.UNAVAILABLE]
            listed = await running.stub.ListRuns(pb.ListRunsRequest(), timeout=5)
            assert [r.run_id for r in listed.runs] == [run.run_id]  # the first attempt's run, once
            assert listed.runs[0].request_id == run.request_id
        finally:
            await proxy.close()


def test_a_watch_across_a_runner_restart_delivers_each_event_once(processes: RunnerProcesses, tmp_path):
    """A run waiting in the queue survives a kill -9 of its runner (the run that
    held the only worker ends INTERRUPTED): the watch resumes on the restarted
    runner with after_seq and follows the run to its end."""
    db = tmp_path / "runner.db"
    first = processes.start("runner", db=db)
    recorder = WatchRequests()
    with RunnerClient(first.address, **patient(interceptors=[recorder])) as client:
        blocker = client.submit_run(specs.diagnostic(ticks=6000, tick_s=0.01))
        bounded(lambda: client.get_run(blocker.run_id).state == pb.RUNNING, 10, "the blocker to start")
        waiting = client.submit_run(specs.diagnostic(ticks=20, tick_s=0.01, log_every=1))
        assert waiting.state == pb.QUEUED
        got: list[pb.RunEvent] = []
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            watching = pool.submit(lambda: [got.append(e) for e in client.watch_run(waiting.run_id)])
            bounded(lambda: got, 10, "the first event")
            processes.kill(first)
            second = processes.start("runner", port=first.port, db=db)
            watching.result(timeout=60)
        full = list(client.watch_run(waiting.run_id))
        assert client.get_run(blocker.run_id).state == pb.INTERRUPTED
    assert got[0].state_change.state == pb.QUEUED and got[-1].state_change.state == pb.SUCCEEDED
    assert_each_event_once_in_order(got, full)
    assert [e.log.message for e in got if e.WhichOneof("event") == "log"] == [f"tick {i}" for i in range(1, 21)]
    assert recorder.after_seqs[0] == 0 and recorder.after_seqs[-2] == 1 and len(recorder.after_seqs) >= 3
    assert second.proc.poll() is None


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_watch_through_a_replica_restarted_mid_run_delivers_each_event_once(
    processes: RunnerProcesses, postgres_url, stop
):
    """Two replicas on PostgreSQL. The run executes on a; the client watches it
    through b, which is stopped (kill -9 or SIGTERM) while the run goes on and
    started again on the same port. The client resumes on the new b with
    after_seq and delivers every event once, in order, the terminal one last."""
    a = processes.start("a", **replica_env(postgres_url, "a"))
    with RunnerClient(a.address) as on_a:
        run = on_a.submit_run(specs.diagnostic(ticks=1000, tick_s=0.01, log_every=10))  # ten seconds
        bounded(lambda: on_a.get_run(run.run_id).state == pb.RUNNING, 10, "the run to start on a")
        assert on_a.get_run(run.run_id).replica == "a"
    b_port = free_port()
    b = processes.start("b", port=b_port, **replica_env(postgres_url, "b"))

    recorder = WatchRequests()
    notices: list[RetryNotice] = []
    got: list[pb.RunEvent] = []
    lost_at: list[int] = []
    stopped = threading.Event()

    def watch() -> None:
        with RunnerClient(b.address, **patient(on_retry=notices.append, interceptors=[recorder])) as client:
            for event in client.watch_run(run.run_id, timeout_s=90):
                got.append(event)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        watching = pool.submit(watch)
        bounded(lambda: sum(e.WhichOneof("event") == "log" for e in got) >= 5, 20, "log lines through b")
        if stop == "kill -9":
            processes.kill(b)
        else:
            assert processes.terminate(b) == 0
        stopped.set()
        lost_at.append(got[-1].seq)
        restarted = processes.start("b", port=b_port, **replica_env(postgres_url, "b"))
        watching.result(timeout=90)

    with RunnerClient(a.address) as on_a:
        full = list(on_a.watch_run(run.run_id))
    assert got[-1].state_change.state == pb.SUCCEEDED
    assert_each_event_once_in_order(got, full)
    assert notices and all(n.resuming for n in notices)
    # The first resumption asked for what followed the last event delivered before b went away.
    assert recorder.after_seqs[0] == 0
    assert recorder.after_seqs[1] == lost_at[0], (recorder.after_seqs, lost_at)
    # ... and the run was still going when the watch came back: events followed live.
    delivered_after = [e for e in got if e.seq > lost_at[0]]
    assert sum(e.WhichOneof("event") == "log" for e in delivered_after) >= 5
    assert restarted.proc.poll() is None and stopped.is_set()
