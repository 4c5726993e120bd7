"""A full disk under a running run (SQLite on a small tmpfs, filled for real): no
watcher or caller is told a final state the store does not hold, writes are held
and retried, readiness is NOT_SERVING meanwhile, and once space is freed the run
reaches its true final state with every event it emitted stored."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_service.runs import RunState
from runner_service.sql_store import SqlStore
from runner_service.store import RunRecord, StoredEvent, now_us
from tests.conftest import diagnostic, events_of, final_state, non_progress

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the test machines run as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path) -> None:
    """Write zeros until the file system says ENOSPC."""
    block = b"\0" * 4096
    with open(path, "wb", buffering=0) as ballast:
        while True:
            try:
                ballast.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


async def readiness(running) -> int:
    check = await running.health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
    return check.status


async def wait_readiness(running, status: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await readiness(running) != status:
        assert loop.time() < deadline, f"readiness never became {status}"
        await asyncio.sleep(0.1)


async def test_a_full_disk_never_reports_what_is_not_stored(start_runner, small_disk):
    database = f"sqlite:///{small_disk}/runner.db"
    ballast = small_disk / "ballast"
    async with start_runner(database_url=database) as running:
        stub = running.stub
        request = diagnostic(ticks=1500, tick_s=0.004, log_every=10, progress_every=1)
        run = await stub.SubmitRun(request, timeout=5)
        seen: list[pb.RunEvent] = []
        first_progress = asyncio.Event()

        async def watch():
            async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=60):
                seen.append(event)
                if event.WhichOneof("event") == "progress":
                    first_progress.set()

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(first_progress.wait(), 10)
        await asyncio.to_thread(fill, ballast)

        await wait_readiness(running, NOT_SERVING, 15)
        # The job needs about 6 s; stay full well past its end.
        await asyncio.sleep(8)
        assert final_state(seen) != pb.SUCCEEDED
        assert not any(e.WhichOneof("event") == "result" for e in seen)
        stored = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        assert stored.state == pb.RUNNING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        os.unlink(ballast)
        await asyncio.wait_for(watcher, 30)
        assert final_state(seen) == pb.SUCCEEDED
        await wait_readiness(running, SERVING, 15)
        finished = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        assert finished.state == pb.SUCCEEDED and finished.result["ticks"] == 1500
        replayed = await events_of(stub, run.run_id)
    # Every log line the job emitted, in order, and the terminal event, were stored.
    logs = [e.log.message for e in non_progress(replayed) if e.WhichOneof("event") == "log"]
    assert logs == [f"tick {tick}" for tick in range(10, 1501, 10)]
    seqs = [e.seq for e in replayed]
    assert seqs == sorted(set(seqs))
    assert final_state(replayed) == pb.SUCCEEDED

    # And the database file itself holds it after the process is gone.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ballast)
    async with start_runner(database_url=database) as again:
        reread = await again.stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        assert reread.state == pb.SUCCEEDED and reread.result["ticks"] == 1500


async def test_closing_the_store_commits_every_held_write_the_database_takes_again(make_settings, small_disk):
    """More writes held than one batch (1000), space freed, then close(): the last
    attempt goes on batch after batch, so all of them are stored."""
    settings = make_settings(database_url=f"sqlite:///{small_disk}/store.db", db_write_retry_max_s=0.5)
    store = SqlStore(settings)
    await store.start()
    now = now_us()
    record = RunRecord(run_id="r1", kind="x", spec=b"", state=RunState.RUNNING, create_us=now, update_us=now)
    await store.submit(record, StoredEvent("r1", 1, now, "state", b"s"))
    ballast = small_disk / "ballast"
    await asyncio.to_thread(fill, ballast)
    writes = [
        store.write("r1", {"update_us": now + i}, [StoredEvent("r1", i + 2, now, "log", b"x" * 400)])
        for i in range(2500)
    ]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while store.status().held_writes < 2500:
        assert loop.time() < deadline, f"only {store.status().held_writes} writes held"
        await asyncio.sleep(0.05)
    assert store.backlog() == 2500
    os.unlink(ballast)
    await store.close()
    await asyncio.sleep(0)
    assert all(w.done() and w.exception() is None for w in writes)
    reopened = SqlStore(settings)
    await reopened.start()
    try:
        assert len(await reopened.list_events("r1", 0, None, 10_000)) == 2501
    finally:
        await reopened.close()
