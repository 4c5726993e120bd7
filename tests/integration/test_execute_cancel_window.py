"""An ExecuteRun call owns its run from the moment the run is stored: a call cancelled
at any moment, even while its submission is being committed, leaves no run that
goes on without it."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state

CALLS = 50
AT_ONCE = 5
LONG = dict(ticks=6000, tick_s=0.01)  # a minute, unless cancelled


async def execute_then_cancel(stub, delay_s: float) -> None:
    call = stub.ExecuteRun(diagnostic(**LONG), timeout=30)
    await asyncio.sleep(delay_s)  # the moment of the cancel is what varies, not a wait for something
    call.cancel()
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:  # refused before the cancel (e.g. QUEUE_FULL): no run
        assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED), err
    except asyncio.CancelledError:
        pass


async def test_execute_calls_cancelled_at_random_moments_leave_only_cancelled_runs(start_runner):
    rng = random.Random(1234)
    async with start_runner(workers=2, cancel_grace_s=1.0) as running:
        stub = running.stub
        for _ in range(CALLS // AT_ONCE):
            await asyncio.gather(*(execute_then_cancel(stub, rng.uniform(0, 0.005)) for _ in range(AT_ONCE)))
        # Submissions commit in order: once a later one is stored, every earlier one is too.
        try:
            marker = await stub.SubmitRun(diagnostic(ticks=0), timeout=10)
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"runs of cancelled calls are still held: {err.details()}")
        assert final_state(await events_of(stub, marker.run_id)) == pb.SUCCEEDED

        listed = await stub.ListRuns(pb.ListRunsRequest(page_size=500), timeout=10)
        runs = [run for run in listed.runs if run.run_id != marker.run_id]
        assert len(runs) <= CALLS
        # A run nobody owns would run on for a minute: the watch would time out.
        ends = await asyncio.gather(*(events_of(stub, run.run_id, timeout=15) for run in runs))
        finals = {run.run_id: pb.RunState.Name(final_state(events)) for run, events in zip(runs, ends)}
        assert set(finals.values()) <= {"CANCELLED"}, finals
