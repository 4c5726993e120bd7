"""Worker crashes, the watchdog's policy, and the token-protected admin API."""

import asyncio
import json
import os
import signal

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def reason_of(status) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return info.reason
    return ""


async def until(predicate, timeout_s: float = 10.0):
    """Poll an async predicate (bounded); the runner has no event for 'worker replaced'."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def wait_running(stub, run_id):
    async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10):
        if event.state_change.state == pb.RUNNING:
            return


@pytest.fixture
def admin_runner(start_runner, tmp_path):
    def start(**overrides):
        values = dict(admin_token=TOKEN, audit_log_path=str(tmp_path / "audit.log"), workers=1)
        values.update(overrides)
        return start_runner(**values)

    return start


async def test_a_worker_killed_mid_run_fails_the_run_worker_crashed_and_is_replaced(admin_runner):
    async with admin_runner() as running:
        run = await running.stub.SubmitRun(diagnostic(ticks=1000, tick_s=0.01))
        await wait_running(running.stub, run.run_id)
        (worker,) = running.app.scheduler.pool.alive_workers()
        os.kill(worker.pid, signal.SIGKILL)
        events = await events_of(running.stub, run.run_id)
        assert final_state(events) == pb.FAILED
        stored = await running.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        assert reason_of(stored.error) == "WORKER_CRASHED"
        nxt = await running.stub.SubmitRun(diagnostic(ticks=2))
        assert final_state(await events_of(running.stub, nxt.run_id)) == pb.SUCCEEDED
        status = await running.admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH)
        assert status.workers.restarts_total == 1 and status.watchdog.restarts_in_window == 1


@pytest.mark.parametrize(
    "metadata, code",
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_admin_calls_need_the_token(admin_runner, metadata, code):
    async with admin_runner() as running:
        for call, request in (
            (running.admin.GetStatus, pb.GetStatusRequest()),
            (running.admin.RestartWorkers, pb.RestartWorkersRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=metadata)
            assert err.value.code() == code


async def test_admin_is_disabled_without_a_configured_token(admin_runner):
    async with admin_runner(admin_token="") as running:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await running.admin.GetStatus(pb.GetStatusRequest(), metadata=(("authorization", "Bearer x"),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_churn_blocks_restarts_until_acknowledged_and_the_override_is_audited(admin_runner, tmp_path):
    settings = dict(watchdog_cooldown_threshold=1, watchdog_block_threshold=2, watchdog_cooldown_s=0.1)
    async with admin_runner(**settings) as running:
        pool = running.app.scheduler.pool

        async def one_worker_ready():
            alive = pool.alive_workers()
            return len(alive) == 1 and alive[0].ready and alive[0]

        for _ in range(2):
            worker = await until(one_worker_ready)
            os.kill(worker.pid, signal.SIGKILL)
            await until(lambda w=worker: _gone(w))
        status = await running.admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH)
        assert status.watchdog.policy_state == pb.BLOCKED
        assert status.watchdog.restarts_in_window == 2 and "acknowledge_override" in status.watchdog.recommended_action

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await running.admin.RestartWorkers(pb.RestartWorkersRequest(reason="try"), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert not (tmp_path / "audit.log").exists()

        await until(one_worker_ready)
        reply = await running.admin.RestartWorkers(
            pb.RestartWorkersRequest(acknowledge_override=True, reason="fixed the job"), metadata=AUTH
        )
        assert reply.override_used and reply.status.workers.alive == 1
        (entry,) = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        assert entry["action"] == "restart_workers" and entry["override"] is True
        assert entry["reason"] == "fixed the job" and entry["policy_state"] == "blocked"
        run = await running.stub.SubmitRun(diagnostic(ticks=1))
        assert final_state(await events_of(running.stub, run.run_id)) == pb.SUCCEEDED


async def _gone(worker) -> bool:
    return not worker.alive


async def test_restart_lets_a_short_run_finish_and_interrupts_a_long_one_after_the_grace(admin_runner):
    async with admin_runner(workers=2, shutdown_grace_s=0.5) as running:
        short = await running.stub.SubmitRun(diagnostic(ticks=3, tick_s=0.05))
        long = await running.stub.SubmitRun(diagnostic(ticks=1000, tick_s=0.01, ignore_cancellation=True))
        await wait_running(running.stub, short.run_id)
        await wait_running(running.stub, long.run_id)
        old = {w.pid for w in running.app.scheduler.pool.alive_workers()}
        reply = await running.admin.RestartWorkers(pb.RestartWorkersRequest(reason="deploy"), metadata=AUTH)
        assert not reply.override_used
        assert final_state(await events_of(running.stub, short.run_id)) == pb.SUCCEEDED
        assert final_state(await events_of(running.stub, long.run_id)) == pb.INTERRUPTED
        new = {w.pid for w in running.app.scheduler.pool.alive_workers()}
        assert len(new) == 2 and not (new & old)
