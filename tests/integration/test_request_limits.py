"""Schema limits over the wire: a request that breaks one is INVALID_ARGUMENT with a
google.rpc.BadRequest naming the field, on every RPC shape, and changes nothing.

A representative handful per RPC; tests/unit/test_validation.py covers every limit."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, diagnostic, events_of, final_state, rich_status


def simulation(config: dict) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    request.spec.simulation.scenario = "skirmish"
    request.spec.simulation.max_ticks = 10
    request.spec.simulation.config_overrides.update(config)
    return request


def nested(depth: int) -> dict:
    """A Struct of exactly `depth` levels: {"l1": {"l2": ... {"lN": 1}}}."""
    value: object = 1
    for level in range(depth, 0, -1):
        value = {f"l{level}": value}
    return value  # type: ignore[return-value]


def negative_timeout() -> pb.SubmitRunRequest:
    request = diagnostic(ticks=1)
    request.timeout.seconds = -1
    return request


INVALID_SUBMITS = {
    "spec missing": (pb.SubmitRunRequest(request_id="no-spec"), "spec"),
    "ticks over 1,000,000": (diagnostic(ticks=1_000_001), "spec.diagnostic.ticks"),
    "tick_duration over an hour": (diagnostic(ticks=1, tick_s=3601), "spec.diagnostic.tick_duration"),
    "request_id of 129 chars": (diagnostic(ticks=1, request_id="r" * 129), "request_id"),
    "33 labels": (diagnostic(ticks=1, labels={f"k{i}": "v" for i in range(33)}), "labels"),
    "negative timeout": (negative_timeout(), "timeout"),
    "config_overrides 6 deep": (simulation(nested(6)), "spec.simulation.config_overrides"),
}


def assert_invalid(err: grpc.aio.AioRpcError, field: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    status = rich_status(err)
    bad = detail_of(status, error_details_pb2.BadRequest)
    assert bad is not None, f"no BadRequest detail in {status}"
    fields = [v.field for v in bad.field_violations]
    assert field in fields, f"{field!r} not among the violations {fields}"
    assert all(v.description for v in bad.field_violations)
    assert field in err.details()  # the message names it too


async def run_count(stub) -> int:
    return len((await stub.ListRuns(pb.ListRunsRequest(page_size=500))).runs)


async def assert_stream_refused(call, field: str) -> None:
    """A server stream ends INVALID_ARGUMENT naming `field`, before any event."""
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            events.append(event)
    assert events == []
    assert_invalid(caught.value, field)


@pytest.mark.parametrize("case", list(INVALID_SUBMITS))
async def test_submit_and_execute_reject_a_broken_limit_naming_the_field(runner, case):
    request, field = INVALID_SUBMITS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.SubmitRun(request, timeout=5)
    assert_invalid(caught.value, field)
    # The streaming form validates the same request the same way, before any event.
    await assert_stream_refused(runner.stub.ExecuteRun(request, timeout=5), field)
    assert await run_count(runner.stub) == 0


async def test_the_limits_themselves_are_accepted(runner):
    at_limits = diagnostic(ticks=1, request_id="r" * 128, labels={f"k{i}": "v" for i in range(32)})
    run = await runner.stub.SubmitRun(at_limits, timeout=5)
    assert run.request_id == "r" * 128 and len(run.labels) == 32
    assert final_state(await events_of(runner.stub, run.run_id)) == pb.SUCCEEDED


INVALID_READS = {
    "GetRun empty run_id": ("GetRun", pb.GetRunRequest(), "run_id"),
    "GetRun run_id of 65 chars": ("GetRun", pb.GetRunRequest(run_id="x" * 65), "run_id"),
    "ListRuns page_size 501": ("ListRuns", pb.ListRunsRequest(page_size=501), "page_size"),
    "ListRuns negative page_size": ("ListRuns", pb.ListRunsRequest(page_size=-1), "page_size"),
    "ListRuns forged page_token": ("ListRuns", pb.ListRunsRequest(page_token="bm90LWEtdG9rZW4"), "page_token"),
    "ListRuns page_token of 513 chars": ("ListRuns", pb.ListRunsRequest(page_token="a" * 513), "page_token"),
    "CancelRun empty run_id": ("CancelRun", pb.CancelRunRequest(), "run_id"),
    "CancelRun reason of 1025 chars": ("CancelRun", pb.CancelRunRequest(run_id="abc", reason="r" * 1025), "reason"),
}


@pytest.mark.parametrize("case", list(INVALID_READS))
async def test_unary_rpcs_reject_a_broken_limit_naming_the_field(runner, case):
    method, request, field = INVALID_READS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(runner.stub, method)(request, timeout=5)
    assert_invalid(caught.value, field)


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.WatchRunRequest(), "run_id"),
        (pb.WatchRunRequest(run_id="y" * 65), "run_id"),
        (pb.WatchRunRequest(run_id="abc", after_seq=-1), "after_seq"),
    ],
    ids=["empty run_id", "run_id of 65 chars", "negative after_seq"],
)
async def test_watch_rejects_a_broken_limit_naming_the_field(runner, request_, field):
    await assert_stream_refused(runner.stub.WatchRun(request_, timeout=5), field)


async def test_several_violations_are_all_listed(runner):
    request = diagnostic(ticks=-1, fail_at_tick=-2, request_id="r" * 200)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.SubmitRun(request, timeout=5)
    bad = detail_of(rich_status(caught.value), error_details_pb2.BadRequest)
    assert {v.field for v in bad.field_violations} == {
        "spec.diagnostic.ticks",
        "spec.diagnostic.fail_at_tick",
        "request_id",
    }


async def test_an_invalid_request_changes_nothing(start_runner):
    async with start_runner(workers=1) as running:
        stub = running.stub
        run = await stub.SubmitRun(diagnostic(ticks=6000, tick_s=0.01, request_id="keep"), timeout=5)
        before = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert [r.run_id for r in before.runs] == [run.run_id]

        for request, _field in INVALID_SUBMITS.values():
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SubmitRun(request, timeout=5)
        # The same request_id on an invalid request neither creates nor returns a run.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitRun(diagnostic(ticks=1_000_001, request_id="keep"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A cancel with a broken limit does not cancel the run it names.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="r" * 1025), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        after = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert [r.run_id for r in after.runs] == [run.run_id]
        current = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        assert not current.cancel_requested
        assert current.state in (pb.QUEUED, pb.RUNNING)
        await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        assert final_state(await events_of(stub, run.run_id)) == pb.CANCELLED
