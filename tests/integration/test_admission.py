"""Bounded admission (QUEUE_FULL at max_queued + 1) and idempotent submission by request_id."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, diagnostic, events_of, final_state, rich_status, wait_for_state

LONG = dict(ticks=6000, tick_s=0.01)  # a minute of cooperative sleeping: cancelled at the end


async def all_runs(stub) -> list[pb.Run]:
    return list((await stub.ListRuns(pb.ListRunsRequest(page_size=500), timeout=5)).runs)


def assert_queue_full(err: grpc.aio.AioRpcError, pending: int) -> None:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert err.details() == f"Job queue full. {pending} jobs pending. Try again later."
    status = rich_status(err)
    info = detail_of(status, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "QUEUE_FULL"
    retry = detail_of(status, error_details_pb2.RetryInfo)
    assert retry is not None, "QUEUE_FULL must say when to retry"
    assert retry.retry_delay.ToNanoseconds() > 0


async def test_queue_full_at_max_queued_plus_one(start_runner):
    async with start_runner(workers=1, max_queued=3) as running:
        stub = running.stub
        blocker = await stub.SubmitRun(diagnostic(**LONG), timeout=5)
        await wait_for_state(stub, blocker.run_id, pb.RUNNING)
        queued = [await stub.SubmitRun(diagnostic(ticks=1, request_id=f"q-{i}"), timeout=5) for i in range(3)]
        assert [run.state for run in queued] == [pb.QUEUED] * 3

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        assert_queue_full(caught.value, 3)
        # The streaming submit is refused the same way.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _event in stub.ExecuteRun(diagnostic(ticks=1), timeout=5):
                pytest.fail("ExecuteRun streamed an event although the queue is full")
        assert_queue_full(caught.value, 3)
        # A retry of an accepted submission is not new work: same run, never QUEUE_FULL.
        retried = await stub.SubmitRun(diagnostic(ticks=1, request_id="q-1"), timeout=5)
        assert retried.run_id == queued[1].run_id

        runs = await all_runs(stub)
        assert {run.run_id for run in runs} == {blocker.run_id, *(run.run_id for run in queued)}

        for run in [*queued, blocker]:
            cancelled = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
            assert cancelled.cancel_requested
        for run in [*queued, blocker]:
            assert final_state(await events_of(stub, run.run_id)) == pb.CANCELLED
        # Room again: a new run is accepted and runs.
        after = await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        assert final_state(await events_of(stub, after.run_id)) == pb.SUCCEEDED


async def test_max_queued_zero_admits_only_what_a_worker_takes_at_once(start_runner):
    async with start_runner(workers=1, max_queued=0) as running:
        stub = running.stub
        blocker = await stub.SubmitRun(diagnostic(**LONG), timeout=5)
        await wait_for_state(stub, blocker.run_id, pb.RUNNING)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        assert_queue_full(caught.value, 0)
        await stub.CancelRun(pb.CancelRunRequest(run_id=blocker.run_id), timeout=5)
        assert final_state(await events_of(stub, blocker.run_id)) == pb.CANCELLED


async def test_a_duplicate_request_id_returns_the_same_run(runner):
    stub = runner.stub
    request = diagnostic(ticks=2, tick_s=0.01, request_id="dup-1", labels={"team": "a"})
    first = await stub.SubmitRun(request, timeout=5)
    again = await stub.SubmitRun(request, timeout=5)
    assert again.run_id == first.run_id
    assert again.request_id == "dup-1" and dict(again.labels) == {"team": "a"}
    assert final_state(await events_of(stub, first.run_id)) == pb.SUCCEEDED
    # After the run ended (no longer in memory), the store answers for the key.
    later = await stub.SubmitRun(request, timeout=5)
    assert later.run_id == first.run_id and later.state == pb.SUCCEEDED

    runs = await all_runs(stub)
    assert [run.run_id for run in runs] == [first.run_id]


async def test_concurrent_duplicates_store_one_run(runner):
    stub = runner.stub
    request = diagnostic(ticks=1, request_id="dup-concurrent")
    results = await asyncio.gather(*(stub.SubmitRun(request, timeout=5) for _ in range(8)))
    assert len({run.run_id for run in results}) == 1
    assert final_state(await events_of(stub, results[0].run_id)) == pb.SUCCEEDED
    runs = await all_runs(stub)
    assert [run.run_id for run in runs] == [results[0].run_id]
