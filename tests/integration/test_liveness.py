"""A run whose worker stops heartbeating is detected and ended, apart from its timeout."""

import os
import signal
import time

from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state


async def wait_running(stub, run_id):
    async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10):
        if event.state_change.state == pb.RUNNING:
            return


async def test_a_stuck_worker_is_killed_and_its_run_fails_worker_lost(start_runner):
    async with start_runner(workers=1, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0) as running:
        # A long job that heartbeats fine while it runs: not mistaken for a stuck one.
        run = await running.stub.SubmitRun(diagnostic(ticks=1000, tick_s=0.01, timeout=60))
        await wait_running(running.stub, run.run_id)
        (worker,) = running.app.scheduler.pool.alive_workers()
        started = time.monotonic()
        os.kill(worker.pid, signal.SIGSTOP)  # hung: no heartbeat, no progress
        try:
            events = await events_of(running.stub, run.run_id)
        finally:
            try:
                os.kill(worker.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        elapsed = time.monotonic() - started
        assert final_state(events) == pb.FAILED
        assert elapsed < 5.0  # detected within seconds, long before the 60 s timeout
        stored = await running.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        info = error_details_pb2.ErrorInfo()
        assert any(d.Unpack(info) for d in stored.error.details)
        assert info.reason == "WORKER_LOST"
        # The replacement worker takes the next run.
        after = await running.stub.SubmitRun(diagnostic(ticks=1))
        assert final_state(await events_of(running.stub, after.run_id)) == pb.SUCCEEDED


async def test_a_long_busy_job_keeps_heartbeating(start_runner):
    async with start_runner(workers=1, heartbeat_interval_s=0.1, heartbeat_timeout_s=1.0) as running:
        # CPU-bound ticks longer than the heartbeat timeout: the heartbeat thread keeps beating.
        run = await running.stub.SubmitRun(diagnostic(ticks=2, tick_s=1.2, mode=pb.DiagnosticSpec.CPU))
        assert final_state(await events_of(running.stub, run.run_id)) == pb.SUCCEEDED
