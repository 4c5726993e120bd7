"""A run's own `timeout` (counted from submission) ends it DEADLINE_EXCEEDED, running or queued."""

from __future__ import annotations

import time

from google.rpc import code_pb2, error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, diagnostic, events_of, final_state, wait_for_state

LONG = dict(ticks=6000, tick_s=0.01)


def states(events: list[pb.RunEvent]) -> list[int]:
    return [e.state_change.state for e in events if e.WhichOneof("event") == "state_change"]


async def assert_deadline_exceeded(stub, run_id: str) -> None:
    stored = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
    assert stored.state == pb.DEADLINE_EXCEEDED
    assert stored.error.code == code_pb2.DEADLINE_EXCEEDED
    info = detail_of(stored.error, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "RUN_DEADLINE_EXCEEDED"


async def test_a_running_run_past_its_timeout_ends_deadline_exceeded(runner):
    stub = runner.stub
    submitted = time.monotonic()
    run = await stub.SubmitRun(diagnostic(timeout=0.5, **LONG), timeout=5)
    assert run.timeout.ToMilliseconds() == 500
    events = await events_of(stub, run.run_id)
    elapsed = time.monotonic() - submitted
    assert states(events) == [pb.QUEUED, pb.RUNNING, pb.DEADLINE_EXCEEDED]
    assert 0.4 <= elapsed < 2.0, elapsed
    await assert_deadline_exceeded(stub, run.run_id)


async def test_a_queued_run_past_its_timeout_ends_deadline_exceeded_without_running(start_runner):
    async with start_runner(workers=1) as running:
        stub = running.stub
        blocker = await stub.SubmitRun(diagnostic(**LONG), timeout=5)
        await wait_for_state(stub, blocker.run_id, pb.RUNNING)
        submitted = time.monotonic()
        queued = await stub.SubmitRun(diagnostic(ticks=1, timeout=0.3), timeout=5)
        events = await events_of(stub, queued.run_id)
        elapsed = time.monotonic() - submitted
        assert states(events) == [pb.QUEUED, pb.DEADLINE_EXCEEDED]
        assert 0.2 <= elapsed < 1.5, elapsed
        await assert_deadline_exceeded(stub, queued.run_id)
        # The run holding the worker is not affected.
        assert (await stub.GetRun(pb.GetRunRequest(run_id=blocker.run_id), timeout=5)).state == pb.RUNNING
        await stub.CancelRun(pb.CancelRunRequest(run_id=blocker.run_id), timeout=5)
        assert final_state(await events_of(stub, blocker.run_id)) == pb.CANCELLED


async def test_a_job_ignoring_its_deadline_is_killed_after_the_grace(start_runner):
    async with start_runner(workers=1, cancel_grace_s=1.0) as running:
        stub = running.stub
        submitted = time.monotonic()
        run = await stub.SubmitRun(
            diagnostic(timeout=0.3, ignore_cancellation=True, mode=pb.DiagnosticSpec.CPU, **LONG), timeout=5
        )
        events = await events_of(stub, run.run_id)
        elapsed = time.monotonic() - submitted
        assert final_state(events) == pb.DEADLINE_EXCEEDED
        assert elapsed < 0.3 + 1.0 + 1.5, elapsed
        await assert_deadline_exceeded(stub, run.run_id)
        after = await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        assert final_state(await events_of(stub, after.run_id)) == pb.SUCCEEDED


async def test_a_run_finishing_within_its_timeout_succeeds(runner):
    run = await runner.stub.SubmitRun(diagnostic(ticks=3, tick_s=0.01, timeout=30), timeout=5)
    assert final_state(await events_of(runner.stub, run.run_id)) == pb.SUCCEEDED
