"""Hand-overs to worker processes: large parameters, large results, jobs that break
the protocol, workers that never take their run. The runner serves these on uvloop,
as in production: uvloop makes a socket it watches non-blocking, which is where a
large hand-over once failed half-way and wedged the pool."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap

import grpc
import pytest
import uvloop
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service.server import RunnerApp
from tests.conftest import detail_of, diagnostic, events_of, final_state, wait_for_state

JOBS = textwrap.dedent(
    """
    import os
    import time

    from runner_service import ipc

    def echo_sizes(params, ctx):
        ctx.progress(1, 1, "measured")
        return {key: len(value) for key, value in params.items()}

    def huge_result(params, ctx):
        return {"blob": "x" * int(params["chars"])}

    def open_missing(params, ctx):
        open("/srv/secret-area/config/settings.json")

    def odd_values(params, ctx):
        name = os.fsdecode(b"report-\\xff.csv")  # a file name that is not UTF-8
        ctx.log(f"processing {name}")
        ctx.progress(2**64, 2**64, "half\\x00way")
        ctx.log("after the odd values")
        return {"ok": True}

    def nul_behind_the_contexts_back(params, ctx):
        ctx._send(ipc.Progress(ctx._token, 1, 2, "half\\x00way"))
        return {"ok": True}

    def log_flood(params, ctx):
        line = "z" * 9000
        end = time.monotonic() + float(params["seconds"])
        lines = 0
        while time.monotonic() < end:
            ctx.log(line)
            lines += 1
        return {"lines": lines}

    def done_then_exit(params, ctx):
        from runner_service import worker_main

        time.sleep(float(params.get("delay_s", 0)))
        ctx._send(ipc.Done(ctx._token, worker_main.result_bytes({"ok": True})))
        os._exit(3)

    def oversized_message(params, ctx):
        # Bypasses the context's own truncation, as a broken job could.
        ctx._send(ipc.Log(ctx._token, "INFO", "y" * 3_000_000))
        ctx.sleep(30)
    """
)


@pytest.fixture
def job_module(tmp_path, monkeypatch):
    package = tmp_path / "handover_jobs"
    package.mkdir()
    (package / "hjobs.py").write_text(JOBS)
    monkeypatch.setenv("PYTHONPATH", str(package))
    monkeypatch.syspath_prepend(str(package))
    kinds = (
        "echo_sizes",
        "huge_result",
        "open_missing",
        "oversized_message",
        "odd_values",
        "nul_behind_the_contexts_back",
        "log_flood",
        "done_then_exit",
    )
    return ",".join(f"{kind}=hjobs:{kind}" for kind in kinds)


def plugin(kind: str, **parameters) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    request.spec.plugin.kind = kind
    request.spec.plugin.parameters.SetInParent()
    request.spec.plugin.parameters.update(parameters)
    return request


async def serve(settings, body) -> None:
    app = RunnerApp(settings)
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await body(app, runner_pb2_grpc.RunnerServiceStub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        await channel.close()
        await app.stop()


def on_uvloop(coro_fn, settings) -> None:
    uvloop.run(asyncio.wait_for(serve(settings, coro_fn), 90))


async def outcome(stub, run_id: str) -> pb.Run:
    events = await events_of(stub, run_id, timeout=30)
    run = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
    assert final_state(events) == run.state
    return run


def reason_of(run: pb.Run) -> str:
    info = detail_of(run.error, error_details_pb2.ErrorInfo)
    return info.reason if info is not None else ""


def test_runs_with_large_parameters_all_run_and_the_pool_stays_usable(make_settings, job_module):
    big = "a" * 100_000

    async def body(app, stub, health):
        runs = [await stub.SubmitRun(plugin("echo_sizes", a=big, b=big, c=big), timeout=10) for _ in range(6)]
        for run in runs:
            done = await outcome(stub, run.run_id)
            assert done.state == pb.SUCCEEDED, done.error.message
            assert dict(done.result) == {"a": 100_000, "b": 100_000, "c": 100_000}
        small = await outcome(stub, (await stub.SubmitRun(diagnostic(ticks=1), timeout=5)).run_id)
        assert small.state == pb.SUCCEEDED
        ready = await health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
        assert ready.status == health_pb2.HealthCheckResponse.SERVING
        assert len(app.scheduler.pool.alive_workers()) == 2

    on_uvloop(body, make_settings(jobs=job_module))


def test_a_result_over_its_limit_fails_the_run_and_every_read_still_works(make_settings, job_module):
    async def body(app, stub, health):
        run = await stub.SubmitRun(plugin("huge_result", chars=300_000), timeout=5)
        done = await outcome(stub, run.run_id)
        assert done.state == pb.FAILED
        assert reason_of(done) == "RESULT_TOO_LARGE"
        assert "over the limit of 100000 bytes" in done.error.message
        assert not done.HasField("result")
        listed = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert [r.run_id for r in listed.runs] == [run.run_id]
        cancelled = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        assert cancelled.state == pb.FAILED
        within = await outcome(stub, (await stub.SubmitRun(plugin("huge_result", chars=1000), timeout=5)).run_id)
        assert within.state == pb.SUCCEEDED and len(within.result["blob"]) == 1000

    on_uvloop(body, make_settings(jobs=job_module, max_result_bytes=100_000))


def test_a_failed_jobs_message_carries_no_server_path_or_traceback(make_settings, job_module):
    async def body(app, stub, health):
        done = await outcome(stub, (await stub.SubmitRun(plugin("open_missing"), timeout=5)).run_id)
        assert done.state == pb.FAILED and reason_of(done) == "JOB_FAILED"
        assert done.error.message.startswith("FileNotFoundError:")
        assert "secret-area" not in done.error.message and "<path>" in done.error.message
        assert "Traceback" not in done.error.message and ".py" not in done.error.message

    on_uvloop(body, make_settings(jobs=job_module))


def test_a_job_that_sends_an_oversized_message_loses_its_worker_and_nothing_else(make_settings, job_module):
    async def body(app, stub, health):
        done = await outcome(stub, (await stub.SubmitRun(plugin("oversized_message"), timeout=5)).run_id)
        assert done.state == pb.FAILED and reason_of(done) == "WORKER_PROTOCOL"
        after = await outcome(stub, (await stub.SubmitRun(diagnostic(ticks=2), timeout=5)).run_id)
        assert after.state == pb.SUCCEEDED

    on_uvloop(body, make_settings(jobs=job_module, max_result_bytes=100_000))


def test_a_run_whose_hand_over_keeps_failing_ends_failed_and_does_not_block_the_queue(make_settings):
    """Every worker is frozen (SIGSTOP) as soon as it exists: none ever confirms
    its run. Each is replaced; after three attempts the run ends FAILED, readiness
    says NOT_SERVING meanwhile, and once workers behave the next run runs."""

    async def body(app, stub, health):
        pool = app.scheduler.pool
        frozen: set[int] = set()
        dispatch = pool.on_idle

        def freeze_ready_workers():
            for worker in pool.alive_workers():
                if worker.ready and worker.pid not in frozen:
                    os.kill(worker.pid, signal.SIGSTOP)
                    frozen.add(worker.pid)

        def freeze_then_dispatch():  # a worker that hangs right after it said Ready
            freeze_ready_workers()
            dispatch()

        freeze_ready_workers()
        pool.on_idle = freeze_then_dispatch
        try:
            run = await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
            done = await outcome(stub, run.run_id)
        finally:
            pool.on_idle = dispatch
            for pid in frozen:  # the frozen ones were killed and replaced; wake any left
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        assert done.state == pb.FAILED and reason_of(done) == "HANDOVER_FAILED", done.error.message
        assert "3 attempts" in done.error.message
        assert len(frozen) >= 3
        states = [
            (pb.RunState.Name(e.state_change.previous), pb.RunState.Name(e.state_change.state))
            for e in await events_of(stub, run.run_id)
            if e.WhichOneof("event") == "state_change"
        ]
        if app.settings.queue_in_database:
            # Claimed from the database, the run stays this replica's (RUNNING) while
            # it tries the next worker: no other replica may take it meanwhile.
            assert states == [("RUN_STATE_UNSPECIFIED", "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "FAILED")]
        else:
            # Each failed hand-over puts the run back in the queue, and says so.
            assert states.count(("RUNNING", "QUEUED")) == 2 and states[-1] == ("RUNNING", "FAILED")
        after = await outcome(stub, (await stub.SubmitRun(diagnostic(ticks=1), timeout=5)).run_id)
        assert after.state == pb.SUCCEEDED

    settings = make_settings(
        workers=1,
        heartbeat_interval_s=0.1,
        heartbeat_timeout_s=0.5,
        watchdog_cooldown_threshold=100,
        watchdog_block_threshold=200,
    )
    on_uvloop(body, settings)


def test_readiness_is_not_serving_while_runs_wait_and_no_worker_can_take_them(make_settings):
    async def body(app, stub, health):
        pool = app.scheduler.pool
        statuses: list[int] = []
        killing = True

        async def kill_workers():
            while killing:
                for worker in pool.alive_workers():
                    os.kill(worker.pid, signal.SIGKILL)
                await asyncio.sleep(0.01)

        killer = asyncio.create_task(kill_workers())
        try:
            await asyncio.sleep(0.3)
            run = await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
            for _ in range(40):
                check = await health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
                statuses.append(check.status)
                if check.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.1)
        finally:
            killing = False
            await killer
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        done = await outcome(stub, run.run_id)
        assert done.state == pb.SUCCEEDED
        for _ in range(50):
            check = await health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
            if check.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

    on_uvloop(body, make_settings(workers=1, watchdog_cooldown_threshold=100, watchdog_block_threshold=200))


def test_odd_values_from_a_job_are_cleaned_and_nothing_is_lost(make_settings, job_module):
    """A log line with a lone surrogate (a non-UTF-8 file name), progress over int64
    and a NUL in a message: all stored and served, the run succeeds."""

    async def body(app, stub, health):
        done = await outcome(stub, (await stub.SubmitRun(plugin("odd_values"), timeout=5)).run_id)
        assert done.state == pb.SUCCEEDED, done.error.message
        assert done.progress.done == 2**63 - 1 and "\x00" not in done.progress.message
        logs = [e.log.message for e in await events_of(stub, done.run_id) if e.WhichOneof("event") == "log"]
        assert logs == ["processing report-\\udcff.csv", "after the odd values"]
        listed = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert [r.run_id for r in listed.runs] == [done.run_id]

    on_uvloop(body, make_settings(jobs=job_module))


def test_a_final_write_the_database_refuses_still_ends_the_run(make_settings, job_module, postgres_url):
    """PostgreSQL refuses a NUL in a text column for good: the run ends FAILED
    (FINAL_WRITE_REFUSED) instead of staying RUNNING, and the worker takes the next run."""

    async def body(app, stub, health):
        run = await stub.SubmitRun(plugin("nul_behind_the_contexts_back"), timeout=5)
        done = await outcome(stub, run.run_id)
        assert done.state == pb.FAILED and reason_of(done) == "FINAL_WRITE_REFUSED"
        assert not done.HasField("result")
        after = await outcome(stub, (await stub.SubmitRun(diagnostic(ticks=1), timeout=5)).run_id)
        assert after.state == pb.SUCCEEDED

    # Progress written with the final state, not before it (a separate progress
    # write would be the one refused, and the run would rightly succeed).
    on_uvloop(body, make_settings(jobs=job_module, database_url=postgres_url, progress_flush_s=30.0))


def test_a_job_logging_faster_than_the_store_writes_is_slowed_not_buffered(make_settings, job_module):
    """9 KB log lines as fast as a job can send them: the runner stops reading the
    worker while its writes are behind, so memory stays bounded, and every line is stored."""

    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    async def body(app, stub, health):
        before = rss_mb()
        peak = before
        run = await stub.SubmitRun(plugin("log_flood", seconds=4), timeout=5)
        # (A live watcher would be cut off as too slow, by design: poll instead.)
        done = run
        for _ in range(600):
            peak = max(peak, rss_mb())
            done = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
            if done.state not in (pb.QUEUED, pb.RUNNING):
                break
            await asyncio.sleep(0.05)
        assert done.state == pb.SUCCEEDED
        lines = int(done.result["lines"])
        stored = [e for e in await events_of(stub, run.run_id) if e.WhichOneof("event") == "log"]
        assert len(stored) == lines > 1000
        assert peak - before < 250, f"RSS grew {peak - before:.0f} MB"

    on_uvloop(body, make_settings(jobs=job_module))


def test_what_a_worker_wrote_before_it_died_is_delivered(make_settings, job_module):
    """A Done written just before the worker process exits: the run ends SUCCEEDED
    with its result, whichever of the exit and the message the runner notices first."""

    async def body(app, stub, health):
        pool = app.scheduler.pool
        for _ in range(3):
            done = await outcome(stub, (await stub.SubmitRun(plugin("done_then_exit"), timeout=5)).run_id)
            assert done.state == pb.SUCCEEDED, done.error.message
            assert dict(done.result) == {"ok": True}
        # The exit noticed first, for sure: the runner is not reading when the Done arrives.
        run = await stub.SubmitRun(plugin("done_then_exit", delay_s=0.5), timeout=5)
        await wait_for_state(stub, run.run_id, pb.RUNNING)
        pool.pause_reading()
        try:
            done = await outcome(stub, run.run_id)
        finally:
            pool.resume_reading()
        assert done.state == pb.SUCCEEDED, done.error.message
        after = await outcome(stub, (await stub.SubmitRun(diagnostic(ticks=1), timeout=5)).run_id)
        assert after.state == pb.SUCCEEDED

    on_uvloop(body, make_settings(jobs=job_module, watchdog_cooldown_threshold=100, watchdog_block_threshold=200))
