"""WatchRun: replay, resume with after_seq (finished and live runs), and slow watchers."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from tests.conftest import detail_of, diagnostic, events_of, final_state, non_progress, rich_status, wait_for_state


def kinds(events: list[pb.RunEvent]) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def logs(events: list[pb.RunEvent]) -> list[str]:
    return [e.log.message for e in events if e.WhichOneof("event") == "log"]


def assert_strictly_increasing(events: list[pb.RunEvent]) -> None:
    seqs = [e.seq for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"seqs out of order: {seqs}"


def assert_progress_monotonic(events: list[pb.RunEvent]) -> None:
    done = [e.progress.done for e in events if e.WhichOneof("event") == "progress"]
    assert done == sorted(done), "progress is cumulative"


async def read_some(stub, run_id: str, after_seq: int, count: int) -> list[pb.RunEvent]:
    """Read `count` events (fewer if the stream ends), then leave the stream."""
    got: list[pb.RunEvent] = []
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq), timeout=20)
    async for event in call:
        got.append(event)
        if len(got) == count:
            break
    call.cancel()
    return got


async def wait_for_log(stub, run_id: str, message: str) -> None:
    async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=20):
        if event.WhichOneof("event") == "log" and event.log.message == message:
            return
    raise AssertionError(f"the run ended without logging {message!r}")


async def test_after_seq_on_a_finished_run_replays_exactly_the_missing_events(runner):
    stub = runner.stub
    ticks = 20
    run = await stub.SubmitRun(diagnostic(ticks=ticks, log_every=1), timeout=5)
    await events_of(stub, run.run_id)  # until it ends
    full = await events_of(stub, run.run_id)  # the stored history
    assert_strictly_increasing(full)
    assert full[0].seq == 1 and all(e.run_id == run.run_id for e in full)
    assert [e.state_change.state for e in full if e.WhichOneof("event") == "state_change"] == [
        pb.QUEUED,
        pb.RUNNING,
        pb.SUCCEEDED,
    ]
    assert logs(full) == [f"tick {i}" for i in range(1, ticks + 1)]
    assert kinds(full)[-2:] == ["result", "state_change"]
    assert full[-2].result.fields["ticks"].number_value == ticks

    for after in [0] + [e.seq for e in full]:
        resumed = await events_of(stub, run.run_id, after_seq=after)
        assert resumed == [e for e in full if e.seq > after], f"after_seq={after}"
    assert await events_of(stub, run.run_id, after_seq=full[-1].seq + 100) == []


async def test_resuming_a_live_run_loses_no_event(runner):
    stub = runner.stub
    ticks = 600
    run = await stub.SubmitRun(diagnostic(ticks=ticks, tick_s=0.0025, log_every=1), timeout=5)

    first = await read_some(stub, run.run_id, 0, 20)
    assert len(first) == 20 and final_state(first) != pb.SUCCEEDED
    # Resume well behind the live edge (more than the in-memory history of recent
    # events has passed since): stored events, then unstored ones, then live ones.
    await wait_for_log(stub, run.run_id, "tick 350")
    assert (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)).state == pb.RUNNING
    second = await read_some(stub, run.run_id, first[-1].seq, 150)
    assert len(second) == 150
    third = await events_of(stub, run.run_id, after_seq=second[-1].seq)

    union = first + second + third
    assert_strictly_increasing(union)
    assert_progress_monotonic(union)
    full = await events_of(stub, run.run_id)  # after the end: the stored history
    assert non_progress(union) == non_progress(full)
    assert logs(union) == [f"tick {i}" for i in range(1, ticks + 1)]
    assert union[-1] == full[-1] and final_state(union) == pb.SUCCEEDED  # leaving never cancelled it


# (watcher_queue_size, ticks, tick_s, progress_every): a log line every tick. The
# default queue with a fast run, and a small queue with a run slow enough for the
# reading watcher (sharing this process and its event loop with the server) to
# stay within 50 events of the live edge.
SLOW_WATCHER_CASES = {
    "default queue": (1000, 2000, 0.001, 20),
    "queue of 50": (50, 150, 0.01, 10),
}


@pytest.mark.parametrize("case", list(SLOW_WATCHER_CASES))
async def test_a_watcher_that_never_reads_does_not_delay_another(start_runner, case):
    """One watcher opens the stream and reads nothing while the run emits its
    events; the other reads everything as it comes. The stalled one is ended with
    RESOURCE_EXHAUSTED once more than watcher_queue_size state changes and logs wait
    for it, and resumes with after_seq.

    On loopback, gRPC's HTTP/2 flow control would let a non-reading client absorb
    all of these events into its receive buffers (BDP probing grows the window), so
    the server would never see it as slow. Its channel therefore gets a small fixed
    window (no BDP probing, 1 KiB lookahead): the server's writes to it really
    block, as for a client that stopped reading on a slow network."""
    queue_size, ticks, tick_s, progress_every = SLOW_WATCHER_CASES[case]
    async with start_runner(watcher_queue_size=queue_size) as running:
        stub = running.stub
        request = diagnostic(ticks=ticks, tick_s=tick_s, log_every=1, progress_every=progress_every)
        run = await stub.SubmitRun(request, timeout=5)
        stalled_channel = grpc.aio.insecure_channel(
            running.address, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
        )
        try:
            stalled = runner_pb2_grpc.RunnerServiceStub(stalled_channel).WatchRun(
                pb.WatchRunRequest(run_id=run.run_id), timeout=30
            )
            await stalled.initial_metadata()  # subscribed (it got its first event), then never reads

            reader: list[pb.RunEvent] = []
            arrived = 0.0
            async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=30):
                reader.append(event)
                arrived = time.time()
            assert final_state(reader) == pb.SUCCEEDED
            assert logs(reader) == [f"tick {i}" for i in range(1, ticks + 1)]
            assert_strictly_increasing(reader)
            stored = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
            assert stored.state == pb.SUCCEEDED
            # The reader saw the terminal event about when the run ended, not after the stalled one.
            lag = arrived - reader[-1].time.ToMicroseconds() / 1e6
            assert lag < 1.0, f"the reader got the terminal event {lag:.2f} s after the run ended"

            # When the stalled watcher finally reads, it gets what was in flight, then
            # RESOURCE_EXHAUSTED telling where to resume; resuming completes the stream.
            got: list[pb.RunEvent] = []
            try:
                async for event in stalled:
                    got.append(event)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                info = detail_of(rich_status(err), error_details_pb2.ErrorInfo)
                assert info is not None and info.reason == "WATCHER_TOO_SLOW"
                after_seq = int(info.metadata["after_seq"])
            else:
                raise AssertionError(f"the stalled watcher was never ended ({len(got)} events, none missing)")
            assert got and got[-1].seq == after_seq
            assert final_state(got) != pb.SUCCEEDED
            assert len(non_progress(got)) < ticks - queue_size  # ended while far behind, not at the end
            rest = await events_of(stub, run.run_id, after_seq=after_seq)
            union = got + rest
            assert_strictly_increasing(union)
            assert non_progress(union) == non_progress(reader)
        finally:
            await stalled_channel.close()


async def test_watching_a_queued_run_follows_it_from_the_start(start_runner):
    async with start_runner(workers=1) as running:
        stub = running.stub
        blocker = await stub.SubmitRun(diagnostic(ticks=6000, tick_s=0.01), timeout=5)
        await wait_for_state(stub, blocker.run_id, pb.RUNNING)
        queued = await stub.SubmitRun(diagnostic(ticks=2, log_every=1), timeout=5)
        call = stub.WatchRun(pb.WatchRunRequest(run_id=queued.run_id), timeout=20)
        events = [await call.read()]
        assert events[0].state_change.state == pb.QUEUED
        await stub.CancelRun(pb.CancelRunRequest(run_id=blocker.run_id), timeout=5)
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
        assert logs(events) == ["tick 1", "tick 2"] and final_state(events) == pb.SUCCEEDED
        assert_strictly_increasing(events)


async def test_a_replay_from_the_store_gives_the_latest_progress_not_a_backlog(runner):
    stub = runner.stub
    run = await stub.SubmitRun(diagnostic(ticks=300, tick_s=0.002, log_every=100), timeout=5)
    await events_of(stub, run.run_id)  # until it ends: the replays below come from the store
    stored = await runner.app.store.list_events(run.run_id, 0, None, 10_000)
    assert sum(e.kind == "progress" for e in stored) > 3, "progress was stored as the run went"
    replayed = await events_of(stub, run.run_id)
    progress = [e for e in replayed if e.WhichOneof("event") == "progress"]
    assert len(progress) == 1 and progress[0].progress.done == 300  # where the run got to
    assert logs(replayed) == ["tick 100", "tick 200", "tick 300"]
    assert_strictly_increasing(replayed)


async def test_a_thousand_watchers_opened_at_once_on_a_busy_run_all_follow_it(runner):
    stub = runner.stub
    run = await stub.SubmitRun(diagnostic(ticks=6000, tick_s=0.01), timeout=5)
    await wait_for_state(stub, run.run_id, pb.RUNNING)
    calls = [stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=60) for _ in range(1000)]
    try:
        firsts = await asyncio.gather(*(call.read() for call in calls), return_exceptions=True)
        failed = [f.code() for f in firsts if isinstance(f, grpc.aio.AioRpcError)]
        assert not failed, f"{len(failed)} watchers failed: {set(failed)}"
        assert all(f.seq == 1 for f in firsts)
        seconds = [await call.read() for call in calls[:5]]
        assert all(event.seq > 1 for event in seconds)
    finally:
        for call in calls:
            call.cancel()
        await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)


async def test_a_burst_of_calls_past_grpcs_own_pending_limit_is_answered_not_cut(runner):
    # gRPC refuses a share of the calls a server has not taken up yet past 1,000
    # (CANCELLED, before any handler runs) unless the server raises the limit.
    async def watch_unknown() -> grpc.StatusCode:
        try:
            async for _ in runner.stub.WatchRun(pb.WatchRunRequest(run_id=uuid.uuid4().hex), timeout=60):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes = collections.Counter(await asyncio.gather(*(watch_unknown() for _ in range(2000))))
    # NOT_FOUND, or UNAVAILABLE (retryable) when the database reads are all busy
    assert set(codes) <= {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes[grpc.StatusCode.NOT_FOUND] > 1000
