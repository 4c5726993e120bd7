"""The runner's /metrics, scraped over HTTP from a real runner: the values move as runs are
submitted, start, finish, fail and are cancelled, as RPCs are served and watchers come and go.
Each runner has a registry of its own, so two runners in one process do not mix their counts."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service.server import RunnerApp
from tests.conftest import diagnostic, events_of, final_state, wait_for_state

METRICS = "127.0.0.1:0"


class Scrape:
    """One scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.families = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample_name, labels in self.samples if sample_name == name]


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient(timeout=10.0) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return Scrape(answer.text)


async def until(port: int, check, timeout_s: float = 10.0) -> Scrape:
    """Scrape until check(scrape) holds (a value that moves on another task's time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await scrape(port)
        if check(got):
            return got
        assert time.monotonic() < deadline, "the metrics never reached the expected values"
        await asyncio.sleep(0.02)


async def test_metrics_are_off_in_the_testing_profile_and_served_on_port_zero_when_asked(start_runner):
    async with start_runner() as running:
        assert running.app.metrics_port is None and running.app.metrics_url == "off"
    async with start_runner(metrics_listen=METRICS) as running:
        port = running.app.metrics_port
        assert port and running.app.metrics_url == f"http://127.0.0.1:{port}/metrics"
        async with httpx.AsyncClient(timeout=10.0) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/other")).status_code == 404
        got = await scrape(port)
        # Every registered kind is there from the start, at zero; states of the runner too.
        assert {"kind": "diagnostic"} in got.labelled("runner_runs_submitted_total")
        assert got.value("runner_runs_finished_total", kind="batch", state="SUCCEEDED") == 0
        assert got.value("runner_db_circuit_state", state="closed") == 1
        assert got.value("runner_db_circuit_state", state="open") == 0
        assert got.value("runner_worker_churn_policy", state="allowed") == 1
        assert got.value("runner_workers", state="configured") == 2
        assert got.value("runner_workers", state="alive") == 2
        assert got.value("runner_worker_restarts_total") == 0
        assert got.value("runner_queue_depth") == 0 and got.value("runner_runs_running") == 0
        assert "database's queue" in got.families["runner_queue_depth"].documentation
    # Stopped: the port is released.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2.0) as client:
            await client.get(f"http://127.0.0.1:{port}/metrics")


async def test_runs_move_the_counters_gauges_and_histograms(start_runner):
    async with start_runner(metrics_listen=METRICS, workers=1) as running:
        port, stub = running.app.metrics_port, running.stub
        ok = await stub.SubmitRun(diagnostic(ticks=0), timeout=5)
        assert final_state(await events_of(stub, ok.run_id)) == pb.SUCCEEDED
        failing = await stub.SubmitRun(diagnostic(ticks=3, fail_at_tick=2), timeout=5)
        assert final_state(await events_of(stub, failing.run_id)) == pb.FAILED

        long = await stub.SubmitRun(diagnostic(ticks=10_000, tick_s=0.01), timeout=5)
        await wait_for_state(stub, long.run_id, pb.RUNNING)
        waiting = await stub.SubmitRun(diagnostic(ticks=0), timeout=5)  # the only worker is busy
        got = await scrape(port)
        assert got.value("runner_runs_running") == 1 and got.value("runner_queue_depth") == 1
        assert got.value("runner_workers", state="busy") == 1

        await stub.CancelRun(pb.CancelRunRequest(run_id=long.run_id), timeout=5)
        assert final_state(await events_of(stub, long.run_id)) == pb.CANCELLED
        assert final_state(await events_of(stub, waiting.run_id)) == pb.SUCCEEDED

        got = await until(port, lambda s: s.value("runner_runs_running") == 0)
        assert got.value("runner_queue_depth") == 0
        assert got.value("runner_runs_submitted_total", kind="diagnostic") == 4
        assert got.value("runner_runs_finished_total", kind="diagnostic", state="SUCCEEDED") == 2
        assert got.value("runner_runs_finished_total", kind="diagnostic", state="FAILED") == 1
        assert got.value("runner_runs_finished_total", kind="diagnostic", state="CANCELLED") == 1
        assert got.value("runner_runs_submitted_total", kind="batch") == 0
        # Every run started, so each has a queue wait and a duration; the cancelled one ran ~ for a while.
        assert got.value("runner_run_queue_wait_seconds_count", kind="diagnostic") == 4
        assert got.value("runner_run_duration_seconds_count", kind="diagnostic") == 4
        assert got.value("runner_run_duration_seconds_sum", kind="diagnostic") > 0
        # The waiting run waited for the long one: its wait is in a bucket above 10 ms.
        assert got.value("runner_run_queue_wait_seconds_bucket", kind="diagnostic", le="0.01") <= 3
        # The store's writer thread committed these runs.
        assert got.value("runner_store_commit_seconds_count") > 0
        assert got.value("runner_store_held_writes") == 0


async def test_runs_ended_in_the_database_without_their_owner_are_counted_and_logged(start_runner, caplog):
    # With the queue in the database a queued run is ended by a transaction (its own
    # timeout, a cancel), not by a replica that holds it: it still counts, and logs.
    caplog.set_level("INFO", logger="runner_service.runs")
    async with start_runner(metrics_listen=METRICS, workers=1, shared_queue="on", claim_poll_s=0.2) as running:
        port, stub = running.app.metrics_port, running.stub
        long = await stub.SubmitRun(diagnostic(ticks=10_000, tick_s=0.01), timeout=5)
        await wait_for_state(stub, long.run_id, pb.RUNNING)
        expiring = await stub.SubmitRun(diagnostic(ticks=0, timeout=0.3), timeout=5)  # the only worker is busy
        cancelled = await stub.SubmitRun(diagnostic(ticks=0), timeout=5)
        gone = await stub.CancelRun(pb.CancelRunRequest(run_id=cancelled.run_id), timeout=5)
        assert gone.state == pb.CANCELLED
        assert final_state(await events_of(stub, expiring.run_id)) == pb.DEADLINE_EXCEEDED
        got = await until(
            port, lambda s: s.value("runner_runs_finished_total", kind="diagnostic", state="DEADLINE_EXCEEDED") == 1
        )
        assert got.value("runner_runs_finished_total", kind="diagnostic", state="CANCELLED") == 1
        assert got.value("runner_run_duration_seconds_count", kind="diagnostic") == 0  # neither started
        await stub.CancelRun(pb.CancelRunRequest(run_id=long.run_id), timeout=5)
    ended = {
        (record.run_id, record.state, record.reason)
        for record in caplog.records
        if record.getMessage() == "run finished" and record.run_id in (expiring.run_id, cancelled.run_id)
    }
    assert ended == {
        (expiring.run_id, "DEADLINE_EXCEEDED", "deadline"),
        (cancelled.run_id, "CANCELLED", "client request"),
    }


async def test_a_retried_submission_is_not_counted_twice(start_runner):
    async with start_runner(metrics_listen=METRICS) as running:
        request = diagnostic(ticks=0, request_id="same-submission")
        first = await running.stub.SubmitRun(request, timeout=5)
        again = await running.stub.SubmitRun(request, timeout=5)
        assert first.run_id == again.run_id
        got = await scrape(running.app.metrics_port)
        assert got.value("runner_runs_submitted_total", kind="diagnostic") == 1


async def test_rpc_latency_by_service_method_and_code_streams_to_their_end(start_runner):
    async with start_runner(metrics_listen=METRICS) as running:
        port, stub = running.app.metrics_port, running.stub
        run = await stub.SubmitRun(diagnostic(ticks=5, tick_s=0.05), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetRun(pb.GetRunRequest(run_id="no-such-run"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        started = time.perf_counter()
        await events_of(stub, run.run_id)  # WatchRun until the run's end (about 0.25 s)
        watched_s = time.perf_counter() - started

        got = await until(port, lambda s: rpc(s, "WatchRun", "OK") == 1)
        assert rpc(got, "SubmitRun", "OK") == 1
        assert rpc(got, "GetRun", "NOT_FOUND") == 1
        assert rpc(got, "GetRun", "OK") == 0
        # The stream is timed to its end, not to its first message.
        assert rpc(got, "WatchRun", "OK", "sum") >= min(0.2, watched_s * 0.8)
        assert rpc(got, "WatchRun", "OK", "bucket", le="0.1") == 0
        codes = {labels["code"] for labels in got.labelled("runner_rpc_duration_seconds_count")}
        assert codes == {"OK", "NOT_FOUND"}

        # A call cancelled by its client is CANCELLED; health checks are timed too.
        long = await stub.SubmitRun(diagnostic(ticks=10_000, tick_s=0.01), timeout=5)
        call = stub.WatchRun(pb.WatchRunRequest(run_id=long.run_id), timeout=10)
        await call.read()
        call.cancel()
        await running.health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
        got = await until(port, lambda s: rpc(s, "WatchRun", "CANCELLED") == 1)
        health = {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"}
        assert got.value("runner_rpc_duration_seconds_count", **health) == 1
        await stub.CancelRun(pb.CancelRunRequest(run_id=long.run_id), timeout=5)


def rpc(got: Scrape, method: str, code: str, part: str = "count", **extra: str) -> float:
    """A sample of the RPC histogram of a RunnerService method."""
    name = f"runner_rpc_duration_seconds_{part}"
    return got.value(name, service="runner.v1.RunnerService", method=method, code=code, **extra)


async def test_watchers_appear_disappear_and_a_slow_one_is_counted_as_cut_off(start_runner):
    async with start_runner(metrics_listen=METRICS, watcher_queue_size=50) as running:
        port, stub = running.app.metrics_port, running.stub
        run = await stub.SubmitRun(diagnostic(ticks=150, tick_s=0.01, log_every=1, progress_every=10), timeout=5)
        assert (await scrape(port)).value("runner_watchers") == 0
        # A watcher that never reads, on a channel with a small fixed window (see test_watch.py).
        stalled_channel = grpc.aio.insecure_channel(
            running.address, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
        )
        try:
            stalled = runner_pb2_grpc.RunnerServiceStub(stalled_channel).WatchRun(
                pb.WatchRunRequest(run_id=run.run_id), timeout=30
            )
            await stalled.initial_metadata()
            reading = stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=30)
            await reading.initial_metadata()  # subscribed: it had its first event
            got = await scrape(port)
            assert got.value("runner_watchers") == 2
            events = [event async for event in reading]
            assert final_state(events) == pb.SUCCEEDED
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                async for _event in stalled:
                    pass
            assert cut.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await stalled_channel.close()
        got = await until(port, lambda s: s.value("runner_watchers") == 0)
        assert got.value("runner_watchers_cut_off_total") == 1
        assert (
            got.value(
                "runner_rpc_duration_seconds_count",
                service="runner.v1.RunnerService",
                method="WatchRun",
                code="RESOURCE_EXHAUSTED",
            )
            == 1
        )


async def test_two_runners_in_one_process_keep_their_own_counts(start_runner, tmp_path):
    async with (
        start_runner(metrics_listen=METRICS) as a,
        start_runner(metrics_listen=METRICS, database_url=f"sqlite:///{tmp_path}/b.db") as b,
    ):
        assert a.app.metrics_port != b.app.metrics_port
        run = await a.stub.SubmitRun(diagnostic(ticks=0), timeout=5)
        await events_of(a.stub, run.run_id)
        assert (await scrape(a.app.metrics_port)).value("runner_runs_submitted_total", kind="diagnostic") == 1
        assert (await scrape(b.app.metrics_port)).value("runner_runs_submitted_total", kind="diagnostic") == 0


async def test_a_metrics_address_in_use_fails_the_start_naming_the_setting(start_runner, make_settings, tmp_path):
    async with start_runner(metrics_listen=METRICS) as running:
        taken = f"127.0.0.1:{running.app.metrics_port}"
        second = RunnerApp(make_settings(metrics_listen=taken, database_url=f"sqlite:///{tmp_path}/second.db"))
        with pytest.raises(RuntimeError, match=f"RUNNER_METRICS_LISTEN={taken}"):
            await second.start()
        await second.abort()
        assert second.port is not None  # it had its gRPC port, but never served on it
