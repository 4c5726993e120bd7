"""Both clients against a real runner on a loopback port (in this process, on a real
SQLite file): every call, typed errors, paging, QUEUE_FULL retried within its
bounds, a watcher ended for falling behind resumed without a lost or repeated event."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest

from protos.runner.v1 import runner_pb2 as pb
from runner_client import (
    NO_RETRY,
    AsyncRunnerClient,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    RetryThrottle,
    RunnerClient,
    TlsFiles,
    Unauthenticated,
    Unavailable,
    specs,
)
from runner_client.errors import AlreadyExists
from tests.conftest import events_of, non_progress, wait_for_state
from tests.pki import OTHER_NAME, make_pki

LONG = specs.diagnostic(ticks=6000, tick_s=0.01)  # a minute of cooperative sleeping


class AttemptTimes(grpc.aio.UnaryUnaryClientInterceptor):
    """Records when each unary attempt leaves the client (asyncio channel)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        self.calls.append((name, time.monotonic()))
        return await continuation(client_call_details, request)

    def times(self, method: str) -> list[float]:
        return [t for name, t in self.calls if name == method]


class SyncAttemptTimes(grpc.UnaryUnaryClientInterceptor):
    """The same for the blocking channel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        self.calls.append((name, time.monotonic()))
        return continuation(client_call_details, request)

    def times(self, method: str) -> list[float]:
        return [t for name, t in self.calls if name == method]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_every_call_of_the_async_client(start_runner, tmp_path):
    async with (
        start_runner(admin_token="secret", audit_log_path=str(tmp_path / "audit.log")) as running,
        AsyncRunnerClient(running.address, admin_token="secret") as client,
    ):
        run = await client.submit_run(specs.diagnostic(ticks=3, log_every=1), labels={"who": "test"})
        assert run.state == pb.QUEUED and len(run.request_id) == 32 and dict(run.labels) == {"who": "test"}
        seen = [event async for event in client.watch_run(run.run_id)]
        assert seen[-1].state_change.state == pb.SUCCEEDED
        assert [e.log.message for e in seen if e.WhichOneof("event") == "log"] == ["tick 1", "tick 2", "tick 3"]
        # What a plain WatchRun gets, once each (its replay of the ended run gives the latest progress only).
        replayed = await events_of(running.stub, run.run_id)
        assert non_progress(seen) == non_progress(replayed)
        assert [e for e in replayed if e.WhichOneof("event") == "progress"] == [
            [e for e in seen if e.WhichOneof("event") == "progress"][-1]
        ]
        tail = [event async for event in client.watch_run(run.run_id, after_seq=seen[-3].seq)]
        assert tail == seen[-2:]
        assert (await client.get_run(run.run_id)).state == pb.SUCCEEDED

        executed = [event async for event in client.execute_run(specs.diagnostic(ticks=2))]
        assert executed[0].state_change.state == pb.QUEUED and executed[-1].state_change.state == pb.SUCCEEDED
        assert {e.run_id for e in executed} == {executed[0].run_id}

        long = await client.submit_run(LONG)
        await wait_for_state(running.stub, long.run_id, pb.RUNNING)
        cancelled = await client.cancel_run(long.run_id, reason="enough")
        assert cancelled.cancel_requested
        assert (await client.cancel_run(long.run_id)).cancel_requested  # idempotent
        assert [e async for e in client.watch_run(long.run_id)][-1].state_change.state == pb.CANCELLED

        assert {"duel", "skirmish", "marksman", "three_way"} <= {s.name for s in await client.list_scenarios()}
        summary = await client.get_summary()
        assert sum(c.count for c in summary.counts) == 3
        assert (await client.get_resilience()).recommendation
        status = await client.get_status()
        assert status.workers.size == 2
        restarted = await client.restart_workers(reason="test")
        assert restarted.status.workers.size == 2

        with pytest.raises(NotFound) as missing:
            await client.get_run("no-such-run")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and missing.value.attempts == 1
        with pytest.raises(InvalidArgument) as invalid:
            await client.submit_run(specs.diagnostic(ticks=-1))
        assert [v.field for v in invalid.value.field_violations] == ["spec.diagnostic.ticks"]
        with pytest.raises(AlreadyExists) as reused:
            await client.submit_run(specs.diagnostic(ticks=9), request_id=run.request_id)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        async with AsyncRunnerClient(running.address) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.get_status()
        async with AsyncRunnerClient(running.address, admin_token="wrong") as wrong:
            with pytest.raises(PermissionDenied):
                await wrong.get_status()


async def test_the_sync_client_and_paging_through_every_run(start_runner):
    async with start_runner() as running:

        def scenario() -> None:
            with RunnerClient(running.address) as client:
                made = [client.submit_run(specs.diagnostic(ticks=0), labels={"n": str(i)}) for i in range(7)]
                for run in made:
                    assert list(client.watch_run(run.run_id))[-1].state_change.state == pb.SUCCEEDED
                failed = client.submit_run(specs.diagnostic(ticks=3, fail_at_tick=2))
                events = list(client.watch_run(failed.run_id))
                assert events[-1].state_change.state == pb.FAILED
                # Pages of 3: every run once, newest first.
                listed = list(client.list_runs(page_size=3))
                assert [r.run_id for r in listed] == [failed.run_id] + [r.run_id for r in reversed(made)]
                assert [r.run_id for r in client.list_runs(limit=4)] == [r.run_id for r in listed[:4]]
                assert [r.run_id for r in client.list_runs(state=pb.FAILED)] == [failed.run_id]
                assert len(list(client.list_runs(kind="diagnostic", page_size=2, limit=5))) == 5
                assert list(client.list_runs(kind="batch")) == []
                executed = list(client.execute_run(specs.diagnostic(ticks=2, log_every=1)))
                assert executed[-1].state_change.state == pb.SUCCEEDED
                assert client.get_run(executed[-1].run_id).state == pb.SUCCEEDED

        await asyncio.wait_for(asyncio.to_thread(scenario), 30)


async def test_leaving_execute_run_early_cancels_the_run(start_runner):
    async with start_runner() as running, AsyncRunnerClient(running.address) as client:
        stream = client.execute_run(LONG)
        run_id = None
        async for event in stream:
            run_id = event.run_id
            if event.WhichOneof("event") == "progress":
                break
        await stream.aclose()
        assert run_id is not None
        ended = await wait_for_state(running.stub, run_id, pb.CANCELLED, timeout=10)
        assert ended[-1].state_change.state == pb.CANCELLED


async def test_queue_full_is_retried_honouring_retry_info_then_given_up_typed(start_runner):
    async with start_runner(workers=1, max_queued=0) as running:
        blocker = await running.stub.SubmitRun(pb.SubmitRunRequest(spec=LONG), timeout=5)
        await wait_for_state(running.stub, blocker.run_id, pb.RUNNING)
        recorder = AttemptTimes()
        policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, hint_jitter=0.2, deadline_s=30)
        async with AsyncRunnerClient(running.address, retry=policy, interceptors=[recorder]) as client:
            started = time.monotonic()
            with pytest.raises(ResourceExhausted) as refused:
                await client.submit_run(specs.diagnostic(ticks=1))
            took = time.monotonic() - started
        error = refused.value
        assert (error.reason, error.attempts, error.gave_up) == ("QUEUE_FULL", 3, "attempts")
        assert error.retry_after_s == 1.0 and "Job queue full" in error.message
        times = recorder.times("SubmitRun")
        assert len(times) == 3  # bounded
        for gap in gaps(times):  # RetryInfo (1 s) honoured, jitter at most 20 % above it
            assert 1.0 <= gap <= 1.2 + 0.3, gaps(times)
        assert took < 2 * 1.2 + 1.0
        listed = await running.stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert [r.run_id for r in listed.runs] == [blocker.run_id]  # nothing stored by the refused submits


async def test_queue_full_retried_by_the_sync_client_succeeds_once_a_slot_frees(start_runner):
    async with start_runner(workers=1, max_queued=0) as running:
        blocker = await running.stub.SubmitRun(pb.SubmitRunRequest(spec=LONG), timeout=5)
        await wait_for_state(running.stub, blocker.run_id, pb.RUNNING)
        loop = asyncio.get_running_loop()
        notices = []

        async def cancel_blocker() -> None:
            await running.stub.CancelRun(pb.CancelRunRequest(run_id=blocker.run_id), timeout=5)

        def free_the_slot(notice) -> None:  # called in the client's thread, before its first wait
            notices.append(notice)
            if len(notices) == 1:
                asyncio.run_coroutine_threadsafe(cancel_blocker(), loop).result(5)

        recorder = SyncAttemptTimes()

        def submit() -> pb.Run:
            policy = RetryPolicy(max_attempts=5, deadline_s=30)
            with RunnerClient(running.address, retry=policy, on_retry=free_the_slot, interceptors=[recorder]) as c:
                return c.submit_run(specs.diagnostic(ticks=1), request_id="after-the-blocker")

        run = await asyncio.wait_for(asyncio.to_thread(submit), 30)
        assert run.request_id == "after-the-blocker"
        assert notices[0].error.reason == "QUEUE_FULL" and notices[0].delay_s >= 1.0
        assert len(recorder.times("SubmitRun")) == len(notices) + 1 >= 2
        assert all(gap >= 1.0 for gap in gaps(recorder.times("SubmitRun")))
        listed = await running.stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert sorted(r.request_id for r in listed.runs) == sorted(["after-the-blocker", blocker.request_id])


async def test_the_total_deadline_and_the_throttle_bound_retries(start_runner):
    async with start_runner(workers=1, max_queued=0) as running:
        blocker = await running.stub.SubmitRun(pb.SubmitRunRequest(spec=LONG), timeout=5)
        await wait_for_state(running.stub, blocker.run_id, pb.RUNNING)
        # The deadline: a second wait of >= 1 s would end past 1.5 s from the start.
        short = RetryPolicy(max_attempts=10, deadline_s=1.5)
        async with AsyncRunnerClient(running.address, retry=short) as client:
            started = time.monotonic()
            with pytest.raises(ResourceExhausted) as late:
                await client.submit_run(specs.diagnostic(ticks=1))
            assert (late.value.attempts, late.value.gave_up) == (2, "deadline")
            assert time.monotonic() - started < 1.5
        # The throttle: 4 tokens, retries stop at half of them.
        throttle = RetryThrottle(max_tokens=4, token_ratio=0.5)
        async with AsyncRunnerClient(running.address, retry=RetryPolicy(max_attempts=10), throttle=throttle) as c:
            with pytest.raises(ResourceExhausted) as throttled:
                await c.submit_run(specs.diagnostic(ticks=1))
            assert (throttled.value.attempts, throttled.value.gave_up) == (2, "throttled")
            with pytest.raises(ResourceExhausted) as at_once:  # no token to spare: no retry at all
                await c.submit_run(specs.diagnostic(ticks=1))
            assert (at_once.value.attempts, at_once.value.gave_up) == (1, "throttled")
            for _ in range(3):  # successful calls give tokens back
                await c.get_run(blocker.run_id)
            assert throttle.allows_retry()


async def test_a_watcher_ended_for_falling_behind_resumes_without_losing_or_repeating(start_runner):
    """The watch's channel has a small fixed HTTP/2 window (as in test_watch), so a
    consumer that stops reading really blocks the runner's writes to it: the runner
    ends it with RESOURCE_EXHAUSTED / WATCHER_TOO_SLOW, and the client resumes."""
    async with start_runner(watcher_queue_size=50) as running:
        run = await running.stub.SubmitRun(
            pb.SubmitRunRequest(spec=specs.diagnostic(ticks=150, tick_s=0.01, log_every=1, progress_every=10)),
            timeout=5,
        )
        notices = []
        small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
        async with AsyncRunnerClient(running.address, options=small_window, on_retry=notices.append) as client:
            stream = client.watch_run(run.run_id, timeout_s=30)
            got = [await anext(stream)]
            await wait_for_state(running.stub, run.run_id, pb.SUCCEEDED)  # the consumer stalls meanwhile
            got += [event async for event in stream]
        assert [n.error.reason for n in notices] == ["WATCHER_TOO_SLOW"] and notices[0].resuming
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs))
        full = await events_of(running.stub, run.run_id)
        assert non_progress(got) == non_progress(full)
        assert got[-1] == full[-1] and got[-1].state_change.state == pb.SUCCEEDED


async def test_tls_and_mtls_from_files(start_runner, tmp_path):
    pki = make_pki(tmp_path / "pki")
    mtls = dict(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca)
    async with start_runner(**mtls) as running:
        with_cert = TlsFiles(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        async with AsyncRunnerClient(running.address, tls=with_cert) as client:
            assert await client.list_scenarios()
        without_cert = TlsFiles(ca_file=pki.ca)
        async with AsyncRunnerClient(running.address, tls=without_cert, retry=NO_RETRY) as client:
            with pytest.raises(Unavailable):
                await client.list_scenarios()
        async with AsyncRunnerClient(running.address, retry=NO_RETRY) as plaintext:
            with pytest.raises(Unavailable):
                await plaintext.list_scenarios()
    # A runner whose certificate names another host: checked against the name given.
    async with start_runner(tls_cert_file=pki.other_name_cert, tls_key_file=pki.other_name_key) as running:
        renamed = TlsFiles(ca_file=pki.ca, server_name=OTHER_NAME)
        async with AsyncRunnerClient(running.address, tls=renamed) as client:
            assert await client.list_scenarios()
        async with AsyncRunnerClient(running.address, tls=TlsFiles(ca_file=pki.ca), retry=NO_RETRY) as client:
            with pytest.raises(Unavailable):
                await client.list_scenarios()
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        TlsFiles(ca_file=pki.ca, cert_file=pki.client_cert)
