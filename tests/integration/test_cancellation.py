"""Cancellation: CancelRun (cooperative jobs, jobs that ignore it, queued and finished runs)
and the end of an ExecuteRun call that owns its run."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, diagnostic, events_of, final_state, non_progress, wait_for_state

LONG = dict(ticks=6000, tick_s=0.01)  # a minute, unless cancelled


def terminal_change(events: list[pb.RunEvent]) -> pb.StateChange:
    assert events and events[-1].WhichOneof("event") == "state_change", "a stream ends with its terminal event"
    return events[-1].state_change


def states(events: list[pb.RunEvent]) -> list[int]:
    return [e.state_change.state for e in events if e.WhichOneof("event") == "state_change"]


async def test_cooperative_cancel_ends_cancelled_quickly(runner):
    stub = runner.stub
    run = await stub.SubmitRun(diagnostic(**LONG), timeout=5)
    await wait_for_state(stub, run.run_id, pb.RUNNING)
    started = time.monotonic()
    answer = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
    assert answer.cancel_requested and answer.run_id == run.run_id
    events = await events_of(stub, run.run_id)
    elapsed = time.monotonic() - started
    change = terminal_change(events)
    assert change.state == pb.CANCELLED and change.previous == pb.RUNNING
    assert elapsed < 1.0  # the job stops at its next 10 ms tick
    stored = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
    assert stored.state == pb.CANCELLED and stored.cancel_requested
    assert stored.error.code == code_pb2.CANCELLED
    info = detail_of(stored.error, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "CANCELLED"
    assert stored.HasField("end_time")


@pytest.mark.parametrize("mode", [pb.DiagnosticSpec.CPU, pb.DiagnosticSpec.SLEEP], ids=["cpu", "sleep"])
async def test_a_job_ignoring_cancel_is_killed_after_the_grace_and_its_worker_replaced(start_runner, mode):
    grace = 1.0
    async with start_runner(workers=1, cancel_grace_s=grace) as running:
        stub = running.stub
        run = await stub.SubmitRun(diagnostic(ignore_cancellation=True, mode=mode, **LONG), timeout=5)
        await wait_for_state(stub, run.run_id, pb.RUNNING)
        (worker,) = running.app.scheduler.pool.alive_workers()
        started = time.monotonic()
        answer = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        assert answer.cancel_requested
        events = await events_of(stub, run.run_id)
        elapsed = time.monotonic() - started
        assert terminal_change(events).state == pb.CANCELLED
        assert grace - 0.1 <= elapsed < grace + 1.5, elapsed  # it ignored the flag until the kill
        # The killed worker was replaced: the next run completes on a new process.
        after = await stub.SubmitRun(diagnostic(ticks=2, tick_s=0.01), timeout=5)
        assert final_state(await events_of(stub, after.run_id)) == pb.SUCCEEDED
        pids = [w.pid for w in running.app.scheduler.pool.alive_workers()]
        assert len(pids) == 1 and pids[0] != worker.pid


async def test_cancelling_a_queued_run_ends_it_without_running(start_runner):
    async with start_runner(workers=1) as running:
        stub = running.stub
        blocker = await stub.SubmitRun(diagnostic(**LONG), timeout=5)
        await wait_for_state(stub, blocker.run_id, pb.RUNNING)
        queued = await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        await stub.CancelRun(pb.CancelRunRequest(run_id=queued.run_id), timeout=5)
        events = await events_of(stub, queued.run_id)
        assert states(events) == [pb.QUEUED, pb.CANCELLED]
        # The running run is untouched.
        still = await stub.GetRun(pb.GetRunRequest(run_id=blocker.run_id), timeout=5)
        assert still.state == pb.RUNNING and not still.cancel_requested
        await stub.CancelRun(pb.CancelRunRequest(run_id=blocker.run_id), timeout=5)
        assert final_state(await events_of(stub, blocker.run_id)) == pb.CANCELLED


async def test_cancel_is_idempotent(runner):
    stub = runner.stub
    run = await stub.SubmitRun(diagnostic(**LONG), timeout=5)
    await wait_for_state(stub, run.run_id, pb.RUNNING)
    for _ in range(3):
        answer = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        assert answer.cancel_requested
    events = await events_of(stub, run.run_id)
    assert states(events).count(pb.CANCELLED) == 1 and final_state(events) == pb.CANCELLED
    ended = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
    again = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
    assert again == ended


async def test_cancelling_a_finished_run_returns_it_unchanged(runner):
    stub = runner.stub
    run = await stub.SubmitRun(diagnostic(ticks=2, log_every=1), timeout=5)
    assert final_state(await events_of(stub, run.run_id)) == pb.SUCCEEDED
    history = await events_of(stub, run.run_id)  # the stored events
    before = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
    answer = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="too late"), timeout=5)
    assert answer == before
    assert answer.state == pb.SUCCEEDED and not answer.cancel_requested
    assert await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5) == before
    assert await events_of(stub, run.run_id) == history  # no event was added


@pytest.mark.parametrize(
    "method, request_",
    [("CancelRun", pb.CancelRunRequest(run_id="no-such-run")), ("GetRun", pb.GetRunRequest(run_id="no-such-run"))],
    ids=["CancelRun", "GetRun"],
)
async def test_unknown_run_is_not_found(runner, method, request_):
    request = request_
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(runner.stub, method)(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watching_an_unknown_run_is_not_found(runner):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events_of(runner.stub, "no-such-run")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------ ExecuteRun owns its run


async def test_a_cancelled_execute_call_cancels_its_run(runner):
    stub = runner.stub
    call = stub.ExecuteRun(diagnostic(**LONG), timeout=20)
    run_id = None
    async for event in call:
        run_id = event.run_id
        if event.WhichOneof("event") == "state_change" and event.state_change.state == pb.RUNNING:
            break
    assert run_id
    call.cancel()
    events = await events_of(stub, run_id)
    change = terminal_change(events)
    assert change.state == pb.CANCELLED
    stored = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
    assert stored.state == pb.CANCELLED and stored.cancel_requested


async def test_an_execute_call_past_its_deadline_ends_its_run_deadline_exceeded(runner):
    stub = runner.stub
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in stub.ExecuteRun(diagnostic(**LONG), timeout=1.0):
            seen.append(event)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen, "the call streamed the run's first events before its deadline"
    run_id = seen[0].run_id
    assert pb.RUNNING in states(seen)
    events = await events_of(stub, run_id)
    assert terminal_change(events).state == pb.DEADLINE_EXCEEDED
    stored = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
    assert stored.state == pb.DEADLINE_EXCEEDED
    assert stored.error.code == code_pb2.DEADLINE_EXCEEDED


async def test_an_execute_call_read_to_the_end_streams_the_whole_run(runner):
    events = [event async for event in runner.stub.ExecuteRun(diagnostic(ticks=3, log_every=1), timeout=10)]
    assert states(events) == [pb.QUEUED, pb.RUNNING, pb.SUCCEEDED]
    assert [e.log.message for e in events if e.WhichOneof("event") == "log"] == ["tick 1", "tick 2", "tick 3"]
    assert non_progress(await events_of(runner.stub, events[0].run_id)) == non_progress(events)
