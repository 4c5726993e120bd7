"""grpc.health.v1 on the runner: the four names, unknown names, and answers under CPU load."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state, wait_for_state

SERVING = health_pb2.HealthCheckResponse.SERVING
NAMES = ["", "runner.v1.RunnerService", "liveness", "readiness"]


@pytest.mark.parametrize("name", NAMES, ids=["overall", "service", "liveness", "readiness"])
async def test_check_is_serving(runner, name):
    answer = await runner.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
    assert answer.status == SERVING


async def test_check_of_an_unknown_name_is_not_found(runner):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.health.Check(health_pb2.HealthCheckRequest(service="runner.v1.NoSuchService"), timeout=2)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_the_status_and_service_unknown_for_an_unknown_name(runner):
    call = runner.health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
    assert (await call.read()).status == SERVING
    call.cancel()
    call = runner.health.Watch(health_pb2.HealthCheckRequest(service="runner.v1.NoSuchService"), timeout=5)
    assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    call.cancel()


async def test_check_answers_while_every_worker_runs_a_cpu_bound_job(start_runner):
    async with start_runner(workers=2) as running:
        stub = running.stub
        runs = [
            await stub.SubmitRun(diagnostic(ticks=400, tick_s=0.05, mode=pb.DiagnosticSpec.CPU), timeout=5)
            for _ in range(2)
        ]
        for run in runs:
            await wait_for_state(stub, run.run_id, pb.RUNNING)
        for i in range(50):
            name = NAMES[i % len(NAMES)]
            answer = await running.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=1.0)
            assert answer.status == SERVING, name
        for run in runs:
            assert (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)).state == pb.RUNNING
            await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        for run in runs:
            assert final_state(await events_of(stub, run.run_id)) == pb.CANCELLED


async def test_a_background_task_that_dies_turns_readiness_not_serving(runner):
    """The progress flusher dies (an error nobody expected): the runner must not go
    on taking work without it."""
    journal = runner.app.scheduler.journal

    def broken() -> None:
        raise RuntimeError("the flusher broke")

    journal.flush = broken  # the next round of the flusher raises
    readiness = health_pb2.HealthCheckRequest(service="readiness")
    call = runner.health.Watch(readiness, timeout=10)
    statuses = []
    async for answer in call:
        statuses.append(answer.status)
        if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
    call.cancel()
    assert statuses[0] == SERVING and statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert runner.app.scheduler.status().dead_tasks == ("progress-flusher",)
    liveness = await runner.health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
    assert liveness.status == SERVING  # the process answers: an operator can look at it
    del journal.flush  # the runner still shuts down cleanly (its final flush works again)
