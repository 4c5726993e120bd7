"""The runner as a real process (`python -m runner_service`): kill -9 and restart on the
same SQLite file, and SIGTERM's graceful drain. No worker process may outlive its runner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from tests.conftest import detail_of, diagnostic, events_of, final_state, rich_status, runner_env, wait_for_state

REPO = pathlib.Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LONG = dict(ticks=6000, tick_s=0.01)  # a minute of cooperative sleeping


@dataclasses.dataclass
class RunnerProcess:
    proc: subprocess.Popen
    address: str
    stderr: pathlib.Path
    channel: grpc.aio.Channel
    stub: runner_pb2_grpc.RunnerServiceStub
    health: health_pb2_grpc.HealthStub

    def log_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None once it is gone."""
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (the forkserver, the workers, the resource tracker)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                children.setdefault(stat[1], []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


async def until(predicate, timeout_s: float, what: str, poll_s: float = 0.05):
    """Poll `predicate` (a condition in another process: nothing to await) until true."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)


def db_rows(db: pathlib.Path, sql: str, *args) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return conn.execute(sql, args).fetchall()


def stored_state(db: pathlib.Path, run_id: str) -> int | None:
    rows = db_rows(db, "SELECT state FROM runs WHERE run_id = ?", run_id)
    return rows[0][0] if rows else None


@pytest.fixture
async def spawn(tmp_path):
    """Start runner processes; whatever is still alive at the end is killed (by pid)."""
    started: list[RunnerProcess] = []
    trees: list[set[int]] = []

    async def start(db: pathlib.Path, **extra_env: str) -> RunnerProcess:
        port = free_port()
        env = runner_env(str(db), port, **extra_env)
        n = len(started)
        stderr = tmp_path / f"runner-{n}.err"
        with open(tmp_path / f"runner-{n}.out", "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "runner_service"], cwd=REPO, env=env, stdout=out, stderr=err)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        running = RunnerProcess(
            proc,
            f"127.0.0.1:{port}",
            stderr,
            channel,
            runner_pb2_grpc.RunnerServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )
        started.append(running)
        deadline = time.monotonic() + 30
        while True:  # bounded: the process needs a moment to import, migrate and listen
            assert proc.poll() is None, f"the runner exited with {proc.returncode}:\n{running.log_tail()}"
            try:
                answer = await running.health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=1)
                if answer.status == SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"the runner never became SERVING:\n{running.log_tail()}"
            await asyncio.sleep(0.1)
        trees.append(descendants(proc.pid))
        return running

    yield start

    for running in started:
        await running.channel.close()
        trees.append(descendants(running.proc.pid))
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.wait(10)
    for pid in set().union(*trees):
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def wait_stored_running(db: pathlib.Path, run_id: str) -> None:
    # RUNNING is written behind by a few milliseconds: wait until it is in the file.
    await until(lambda: stored_state(db, run_id) == pb.RUNNING, 10, "the run stored RUNNING")


async def test_kill_9_mid_run_then_restart_on_the_same_database(spawn, tmp_path):
    db = tmp_path / "r.db"
    first = await spawn(db)
    # The hardest job to get rid of: CPU-bound, ignoring its cancellation flag.
    long_request = diagnostic(request_id="long", ignore_cancellation=True, mode=pb.DiagnosticSpec.CPU, **LONG)
    long = await first.stub.SubmitRun(long_request, timeout=5)
    await wait_for_state(first.stub, long.run_id, pb.RUNNING)
    await wait_stored_running(db, long.run_id)
    queued = [
        await first.stub.SubmitRun(diagnostic(ticks=2, tick_s=0.01, log_every=1, request_id=f"q-{i}"), timeout=5)
        for i in range(3)
    ]
    assert [run.state for run in queued] == [pb.QUEUED] * 3
    tree = descendants(first.proc.pid)
    grandchildren = [pid for pid in tree if _stat(pid)[1] in tree]
    assert grandchildren, f"expected a forkserver and its worker below the runner, got {tree}"

    first.proc.kill()
    assert first.proc.wait(10) == -signal.SIGKILL
    # Nothing of the dead runner lives on: its forkserver and workers exit with it.
    await until(lambda: not [pid for pid in tree if alive(pid)], 10, f"the runner's processes {tree} to exit")
    # Nobody could write anything more: the file still says RUNNING and QUEUED.
    assert stored_state(db, long.run_id) == pb.RUNNING
    assert [stored_state(db, run.run_id) for run in queued] == [pb.QUEUED] * 3

    second = await spawn(db)
    interrupted = await second.stub.GetRun(pb.GetRunRequest(run_id=long.run_id), timeout=5)
    assert interrupted.state == pb.INTERRUPTED
    info = detail_of(interrupted.error, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "INTERRUPTED"
    events = await events_of(second.stub, long.run_id)
    assert events[-1].state_change.state == pb.INTERRUPTED
    assert events[-1].state_change.previous == pb.RUNNING
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    for run in queued:  # taken up again by the new process
        events = await events_of(second.stub, run.run_id)
        assert final_state(events) == pb.SUCCEEDED, run.run_id
        assert [e.log.message for e in events if e.WhichOneof("event") == "log"] == ["tick 1", "tick 2"]
    listed = await second.stub.ListRuns(pb.ListRunsRequest(page_size=100), timeout=5)
    assert sorted(run.run_id for run in listed.runs) == sorted([long.run_id, *(run.run_id for run in queued)])
    # The idempotency key survived the crash: a retry returns the interrupted run.
    again = await second.stub.SubmitRun(long_request, timeout=5)
    assert again.run_id == long.run_id and again.state == pb.INTERRUPTED

    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(20) == 0, second.log_tail()


async def test_sigterm_drains_and_stores_the_running_run_interrupted(spawn, tmp_path):
    db = tmp_path / "r.db"
    runner = await spawn(db, RUNNER_DRAIN_PERIOD_S="1", RUNNER_SHUTDOWN_GRACE_S="0.5")
    long = await runner.stub.SubmitRun(diagnostic(**LONG), timeout=5)
    await wait_for_state(runner.stub, long.run_id, pb.RUNNING)
    await wait_stored_running(db, long.run_id)
    queued = await runner.stub.SubmitRun(diagnostic(ticks=1), timeout=5)  # the only worker is busy
    watcher = asyncio.create_task(events_of(runner.stub, long.run_id, timeout=30))
    health_watch = runner.health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=30)
    assert (await health_watch.read()).status == SERVING
    tree = descendants(runner.proc.pid)

    runner.proc.send_signal(signal.SIGTERM)
    assert (await health_watch.read()).status == NOT_SERVING
    health_watch.cancel()
    # During the drain period the process still answers, but is not ready and refuses work.
    for name in ("", "readiness", "runner.v1.RunnerService"):
        answer = await runner.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=1)
        assert answer.status == NOT_SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.SubmitRun(diagnostic(ticks=1), timeout=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rich_status(caught.value)
    assert detail_of(status, error_details_pb2.ErrorInfo).reason == "DRAINING"
    assert detail_of(status, error_details_pb2.RetryInfo) is not None

    # The watcher of the running run gets its final event before the process ends.
    events = await asyncio.wait_for(watcher, 20)
    assert events[-1].state_change.state == pb.INTERRUPTED
    assert runner.proc.wait(20) == 0, runner.log_tail()
    await until(lambda: not [pid for pid in tree if alive(pid)], 10, f"the runner's processes {tree} to exit")

    assert stored_state(db, long.run_id) == pb.INTERRUPTED == 7
    assert stored_state(db, queued.run_id) == pb.QUEUED  # left for the next start
    ((payload,),) = db_rows(
        db, "SELECT payload FROM run_events WHERE run_id = ? ORDER BY seq DESC LIMIT 1", long.run_id
    )
    last = pb.RunEvent.FromString(payload)
    assert last.state_change.state == pb.INTERRUPTED and last.state_change.previous == pb.RUNNING


async def test_a_second_runner_on_the_same_sqlite_file_is_refused_with_a_clear_message(spawn, tmp_path):
    db = tmp_path / "one.db"
    first = await spawn(db)
    env = runner_env(str(db), free_port())
    second = subprocess.run(
        [sys.executable, "-m", "runner_service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 1
    assert "another runner already uses the SQLite database" in second.stderr
    assert "PostgreSQL" in second.stderr
    # The first one serves on, untouched.
    run = await first.stub.SubmitRun(diagnostic(ticks=1), timeout=5)
    assert final_state(await events_of(first.stub, run.run_id)) == pb.SUCCEEDED


async def test_a_watcher_resuming_after_a_kill_9_gets_the_run_s_end(spawn, tmp_path):
    """Events are written behind, so a watcher may have seen events the dead
    process never stored. Resuming after the last one it saw still gets the state
    change that ends the run (it is stored well past any seq handed out)."""
    db = tmp_path / "r.db"
    first = await spawn(db)
    run = await first.stub.SubmitRun(diagnostic(log_every=1, progress_every=1, **LONG), timeout=5)
    seen = 0
    async for event in first.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=20):
        seen = event.seq
        if seen >= 30:
            break
    await wait_stored_running(db, run.run_id)
    first.proc.kill()
    first.proc.wait(10)
    second = await spawn(db)
    after = await events_of(second.stub, run.run_id, after_seq=seen)
    assert after and final_state(after) == pb.INTERRUPTED, [e.seq for e in after]
    assert all(e.seq > seen for e in after)
