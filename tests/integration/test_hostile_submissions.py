"""Submissions built to hurt: oversized specs, unknown fields, built-in kinds through
spec.plugin, forged page tokens, a reused request_id. Each is refused cleanly or
stored in a form every later read can serve; a refused request stores nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_service.jobs.specs import TYPED_KINDS
from tests.conftest import detail_of, diagnostic, events_of, final_state, rich_status, wait_for_state

MIB = 1024 * 1024
# A plugin kind of the operator's (RUNNER_JOBS) that runs the diagnostic job: it
# takes any Struct of parameters, and `ticks` among them.
ECHO = "echo"
ECHO_JOBS = f"{ECHO}=runner_service.jobs.diagnostic:run"


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def unknown_field(number: int, payload_bytes: int) -> bytes:
    """A length-delimited field of a number no message of the schema has."""
    return varint(number << 3 | 2) + varint(payload_bytes) + b"u" * payload_bytes


def plugin(parameters: dict, kind: str = ECHO, request_id: str = "") -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest(request_id=request_id)
    request.spec.plugin.kind = kind
    request.spec.plugin.parameters.update(parameters)
    return request


def padded(total_bytes: int, ticks: int = 0) -> dict:
    """Plugin parameters of about total_bytes: strings of 90,000 characters (each
    string is within the schema's limits; only the whole is large)."""
    chunk = 90_000
    params: dict = {"ticks": ticks}
    for index in range(total_bytes // chunk):
        params[f"pad{index}"] = "p" * chunk
    return params


async def all_runs(stub) -> list[pb.Run]:
    """Every stored run, over as many pages as it takes."""
    runs, token = [], ""
    for _ in range(100):
        page = await stub.ListRuns(pb.ListRunsRequest(page_size=500, page_token=token), timeout=10)
        runs.extend(page.runs)
        token = page.next_page_token
        if not token:
            return runs
    raise AssertionError("pagination never ended")


def violation_fields(err: grpc.aio.AioRpcError) -> list[str]:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    bad = detail_of(rich_status(err), error_details_pb2.BadRequest)
    assert bad is not None, err.details()
    return [v.field for v in bad.field_violations]


async def refused(stub, request: pb.SubmitRunRequest) -> list[grpc.aio.AioRpcError]:
    """The errors of SubmitRun and of ExecuteRun (before any event) for `request`."""
    out = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitRun(request, timeout=10)
    out.append(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.ExecuteRun(request, timeout=10):
            pytest.fail("no event for a refused run")
    out.append(caught.value)
    return out


# ------------------------------------------------------------ sizes and unknown fields


async def test_unknown_fields_are_dropped_before_the_run_is_stored(runner):
    stub = runner.stub
    clean = diagnostic(ticks=6000, tick_s=0.01, labels={"team": "a"})
    request = pb.SubmitRunRequest()
    request.CopyFrom(clean)
    # Unknown fields at three levels; about 4 MB in all, just under the message limit.
    request.spec.diagnostic.MergeFromString(unknown_field(900, 1000))
    request.spec.MergeFromString(unknown_field(1000, 4 * MIB - 2000))
    request.MergeFromString(unknown_field(77, 100))
    assert 4 * MIB - 1000 < request.ByteSize() <= 4 * MIB

    run = await stub.SubmitRun(request, timeout=10)
    assert run.spec == clean.spec and run.spec.ByteSize() == clean.spec.ByteSize()
    assert run.ByteSize() < 1000  # the answer carries the spec as stored

    # Every read of it works, and stays small.
    got = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
    assert got.spec == clean.spec and got.ByteSize() < 2000
    await wait_for_state(stub, run.run_id, pb.RUNNING)
    listed = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
    assert [r.run_id for r in listed.runs] == [run.run_id] and listed.ByteSize() < 2000
    cancelled = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
    assert cancelled.cancel_requested
    assert final_state(await events_of(stub, run.run_id)) == pb.CANCELLED


async def test_a_spec_over_max_spec_bytes_is_refused_and_nothing_is_stored(start_runner):
    async with start_runner(jobs=ECHO_JOBS) as running:
        limit = running.app.settings.max_spec_bytes
        request = plugin(padded(limit + 100_000))
        assert request.spec.ByteSize() > limit
        for err in await refused(running.stub, request):
            assert violation_fields(err) == ["spec"]
            assert f"at most {limit} bytes" in err.details()
        # Just under the bound is accepted.
        fits = plugin(padded(limit - 100_000))
        run = await running.stub.SubmitRun(fits, timeout=10)
        assert run.spec == fits.spec
        assert [r.run_id for r in await all_runs(running.stub)] == [run.run_id]


async def test_a_list_page_is_bounded_in_bytes_and_pages_past_large_runs(start_runner):
    async with start_runner(jobs=ECHO_JOBS) as running:
        stub, settings = running.stub, running.app.settings
        per_run = settings.max_list_page_bytes // 3 - 50_000  # three fit in a page, four do not
        assert per_run < settings.max_spec_bytes
        small = await stub.SubmitRun(diagnostic(ticks=0), timeout=5)
        large = []
        for _ in range(4):
            run = await stub.SubmitRun(plugin(padded(per_run)), timeout=10)
            assert final_state(await events_of(stub, run.run_id)) == pb.SUCCEEDED
            large.append(run.run_id)
        newest_first = list(reversed(large)) + [small.run_id]

        for page_size in (0, 500):  # the default page, and the largest
            first = await stub.ListRuns(pb.ListRunsRequest(page_size=page_size), timeout=10)
            assert first.ByteSize() <= settings.max_list_page_bytes
            assert [r.run_id for r in first.runs] == newest_first[:3]
            assert first.next_page_token
            second = await stub.ListRuns(
                pb.ListRunsRequest(page_size=page_size, page_token=first.next_page_token), timeout=10
            )
            assert [r.run_id for r in second.runs] == newest_first[3:]
            assert not second.next_page_token
        # The row bound still holds beside the byte bound.
        page = await stub.ListRuns(pb.ListRunsRequest(page_size=2), timeout=10)
        assert [r.run_id for r in page.runs] == newest_first[:2] and page.next_page_token


# ------------------------------------------------------------ built-in kinds through spec.plugin


@pytest.mark.parametrize("kind", sorted(TYPED_KINDS))
async def test_a_built_in_kind_is_reachable_only_through_its_typed_spec(runner, kind):
    # What the typed spec would refuse: an absurd max_ticks and a directory to read.
    request = plugin({"scenario": "skirmish", "max_ticks": 1e12, "ticks": 1e12, "scenario_dir": "/"}, kind=kind)
    for err in await refused(runner.stub, request):
        assert violation_fields(err) == ["spec.plugin.kind"]
        assert f"spec.{kind}" in err.details() and "typed field" in err.details()
    assert await all_runs(runner.stub) == []


def test_the_typed_kinds_are_the_built_in_job_kinds():
    assert {"simulation", "batch", "compare", "sweep", "diagnostic"} == TYPED_KINDS


# ------------------------------------------------------------ page tokens


@pytest.mark.parametrize(
    "cursor",
    [[2**70, "abc"], [-1, "abc"], [1.5, "abc"], [[[1]], "abc"], [1, 2**70], [1, "a\x00b"], [True, "abc"]],
    ids=["2^70", "negative", "float", "nested lists", "run id a number", "run id with NUL", "bool"],
)
async def test_a_forged_page_token_is_invalid_argument(runner, cursor):
    import base64
    import json

    token = base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.ListRuns(pb.ListRunsRequest(page_token=token), timeout=5)
    assert violation_fields(caught.value) == ["page_token"]


# ------------------------------------------------------------ request_id reuse


def assert_reused(err: grpc.aio.AioRpcError, request_id: str) -> None:
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, (err.code(), err.details())
    status = rich_status(err)
    info = detail_of(status, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "REQUEST_ID_REUSED" and info.domain == "runner.v1"
    assert detail_of(status, error_details_pb2.RetryInfo) is None  # a retry cannot succeed
    assert request_id in err.details() and "another request" in err.details()


async def test_a_request_id_reused_with_another_request_is_already_exists(start_runner):
    async with start_runner(jobs=ECHO_JOBS) as running:
        stub = running.stub
        # A live run (the scheduler still holds it).
        first = diagnostic(ticks=6000, tick_s=0.01, timeout=60, labels={"team": "a"}, request_id="live")
        run = await stub.SubmitRun(first, timeout=5)
        again = await stub.SubmitRun(first, timeout=5)
        assert again.run_id == run.run_id

        others = {
            "spec": diagnostic(ticks=5999, tick_s=0.01, timeout=60, labels={"team": "a"}, request_id="live"),
            "labels": diagnostic(ticks=6000, tick_s=0.01, timeout=60, labels={"team": "b"}, request_id="live"),
            "no labels": diagnostic(ticks=6000, tick_s=0.01, timeout=60, request_id="live"),
            "timeout": diagnostic(ticks=6000, tick_s=0.01, timeout=61, labels={"team": "a"}, request_id="live"),
            "no timeout": diagnostic(ticks=6000, tick_s=0.01, labels={"team": "a"}, request_id="live"),
            "kind": plugin({"ticks": 6000}, request_id="live"),
        }
        for name, other in others.items():
            for err in await refused(stub, other):
                assert_reused(err, "live"), name
        # The first run is untouched: a refused ExecuteRun did not take it over.
        still = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        assert still.state in (pb.QUEUED, pb.RUNNING) and not still.cancel_requested
        await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        assert final_state(await events_of(stub, run.run_id)) == pb.CANCELLED

        # A finished run (only the store knows it). Struct keys in another order and
        # unknown fields do not make another request.
        params = {"ticks": 1, "a": 1, "b": [1, "x", {"c": None}], "d": {"e": True, "f": "g"}}
        done = await stub.SubmitRun(plugin(params, request_id="done"), timeout=5)
        assert final_state(await events_of(stub, done.run_id)) == pb.SUCCEEDED
        reordered = pb.SubmitRunRequest(request_id="done")
        reordered.spec.plugin.kind = ECHO
        json_format.ParseDict(
            {"d": {"f": "g", "e": True}, "b": [1, "x", {"c": None}], "a": 1, "ticks": 1},
            reordered.spec.plugin.parameters,
        )
        reordered.spec.plugin.MergeFromString(unknown_field(500, 10))
        assert reordered.spec.SerializeToString() != plugin(params).spec.SerializeToString()
        same = await stub.SubmitRun(reordered, timeout=5)
        assert same.run_id == done.run_id and same.state == pb.SUCCEEDED
        for err in await refused(stub, plugin({**params, "a": 2}, request_id="done")):
            assert_reused(err, "done")

        assert sorted(r.run_id for r in await all_runs(stub)) == sorted([run.run_id, done.run_id])
