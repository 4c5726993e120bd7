"""Bytes that are not a request, and failures nobody planned for.

Malformed protobuf bytes (and invalid UTF-8 in a string field) sent to any method are
INVALID_ARGUMENT with at most one log line per interval however many arrive; an
unexpected exception in a handler is INTERNAL with a reference, never a class name,
a path or a traceback, and the log has the traceback under that reference.

The services are registered as the runner registers them (servicer.add_to_server),
on a server of their own over the parts of a real runner (real store, real workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re

import grpc
import pytest
from grpc_health.v1 import health_pb2

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service import servicer as servicer_mod
from runner_service.jobs.catalog import Catalog
from tests.conftest import diagnostic

SERVICES = [pb.DESCRIPTOR.services_by_name[name] for name in ("RunnerService", "AdminService")]
METHODS = [method for service in SERVICES for method in service.methods]
# Bytes no message parses: a field tag with wire type 7 (there is none).
GARBAGE = b"\x0f\xff\xff\xff"


@dataclasses.dataclass
class Served:
    channel: grpc.aio.Channel
    stub: runner_pb2_grpc.RunnerServiceStub


@contextlib.asynccontextmanager
async def serve(app, runner_servicer=None):
    """The runner's services over `app`'s parts, registered with add_to_server."""
    settings = app.settings
    if runner_servicer is None:
        runner_servicer = servicer_mod.RunnerServicer(
            app.scheduler, app.store, Catalog(settings.scenario_dir), settings
        )
    admin = servicer_mod.AdminServicer(app.scheduler, settings, app.audit)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer_mod.add_to_server(server, runner_servicer, admin)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(channel, runner_pb2_grpc.RunnerServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
async def served(runner):
    async with serve(runner.app) as served:
        yield served


def path_of(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def raw_call(channel: grpc.aio.Channel, method, payload: bytes) -> grpc.aio.AioRpcError:
    """Send `payload` as the request of `method`; the error it ends with."""
    path = path_of(method)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method.server_streaming:
            call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            async for _ in call(payload, timeout=5):
                pytest.fail("no message for a malformed request")
        else:
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            await call(payload, timeout=5)
    return caught.value


def assert_clean(message: str) -> None:
    """No traceback, Python class name or server path in a client-facing message."""
    assert "Traceback" not in message and "<class" not in message
    assert not re.search(r"\b[A-Z][a-z]+(Error|Exception)\b", message), message
    assert "/" not in message and ".py" not in message, message


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
async def test_malformed_bytes_are_invalid_argument_on_every_method(served, method):
    err = await raw_call(served.channel, method, GARBAGE)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details().startswith(f"request is not a valid {method.input_type.full_name} message")
    assert_clean(err.details())


def with_bad_utf8(request, text: str) -> bytes:
    """`request` serialized, with `text` (ASCII) replaced by invalid UTF-8 of the same length."""
    raw = request.SerializeToString()
    assert raw.count(text.encode()) == 1
    return raw.replace(text.encode(), b"\xff" * len(text))


BAD_UTF8 = {
    "request_id": (diagnostic(ticks=1, request_id="KEY"), "KEY"),
    "label value": (diagnostic(ticks=1, labels={"team": "VAL"}), "VAL"),
    "label key": (diagnostic(ticks=1, labels={"KEY": "v"}), "KEY"),
    "struct key in plugin parameters": (
        pb.SubmitRunRequest(spec=pb.RunSpec(plugin=pb.PluginSpec(kind="k", parameters={"KEY": 1}))),
        "KEY",
    ),
    "string value deep in a struct": (
        pb.SubmitRunRequest(spec=pb.RunSpec(plugin=pb.PluginSpec(kind="k", parameters={"a": {"b": ["VAL"]}}))),
        "VAL",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UTF8))
async def test_invalid_utf8_in_a_string_field_is_invalid_argument_and_stores_nothing(served, case):
    request, text = BAD_UTF8[case]
    payload = with_bad_utf8(request, text)
    submit, execute = (
        pb.DESCRIPTOR.services_by_name["RunnerService"].methods_by_name[n] for n in ("SubmitRun", "ExecuteRun")
    )
    for method in (submit, execute):
        err = await raw_call(served.channel, method, payload)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert "not a valid runner.v1.SubmitRunRequest message" in err.details()
        assert "UTF-8" in err.details()
        assert_clean(err.details())
    listed = await served.stub.ListRuns(pb.ListRunsRequest(), timeout=5)
    assert list(listed.runs) == []


async def test_a_hundred_malformed_calls_log_one_line(served, caplog):
    caplog.set_level(logging.INFO)
    submit = pb.DESCRIPTOR.services_by_name["RunnerService"].methods_by_name["SubmitRun"]
    watch = pb.DESCRIPTOR.services_by_name["RunnerService"].methods_by_name["WatchRun"]
    caplog.clear()
    for index in range(100):
        method = submit if index % 2 else watch
        err = await raw_call(served.channel, method, GARBAGE + bytes([index]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    assert "malformed request" in line.getMessage() and line.exc_info is None
    # The server still answers well-formed requests as usual.
    run = await served.stub.SubmitRun(diagnostic(ticks=0), timeout=5)
    assert run.run_id


def test_the_rate_limited_log_counts_what_it_left_out(caplog):
    now = [0.0]
    report = servicer_mod.RateLimitedLog(logging.getLogger("test.rate"), 10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.rate")
    assert report.warning("bad request")
    for _ in range(41):
        now[0] += 0.2
        assert not report.warning("bad request")
    now[0] = 10.0
    assert report.warning("bad request")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad request", "bad request (41 more since the previous report, not logged)"]
    assert [r.suppressed for r in caplog.records] == [0, 41]


# ------------------------------------------------------------ unexpected errors


class FaultyServicer(servicer_mod.RunnerServicer):
    """A RunnerService whose GetRun and WatchRun meet errors nobody planned for."""

    @servicer_mod.unary
    async def GetRun(self, request, context):
        raise OverflowError("Python int too large to convert to SQLite INTEGER in /srv/runner/store.py")

    @servicer_mod.stream
    async def WatchRun(self, request, context):
        yield pb.RunEvent(run_id=request.run_id, seq=1)
        raise KeyError("/etc/runner/secret")


def reference_of(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    match = re.fullmatch(r"internal error \(reference ([0-9a-f]+)\)", err.details())
    assert match, err.details()
    return match.group(1)


def logged_under(caplog, reference: str) -> logging.LogRecord:
    records = [r for r in caplog.records if getattr(r, "reference", None) == reference]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    return records[0]


async def test_an_unexpected_error_is_internal_with_a_reference_and_logged_once(runner, caplog):
    caplog.set_level(logging.INFO)
    app = runner.app
    faulty = FaultyServicer(app.scheduler, app.store, Catalog(app.settings.scenario_dir), app.settings)
    async with serve(app, faulty) as served:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.GetRun(pb.GetRunRequest(run_id="r1"), timeout=5)
        reference = reference_of(caught.value)
        record = logged_under(caplog, reference)
        assert record.exc_info is not None and record.exc_info[0] is OverflowError
        assert record.run_id == "r1" and reference in record.getMessage()

        # A stream that already sent an event ends with the same kind of status.
        events = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in served.stub.WatchRun(pb.WatchRunRequest(run_id="r2"), timeout=5):
                events.append(event)
        assert [e.seq for e in events] == [1]
        reference = reference_of(caught.value)
        record = logged_under(caplog, reference)
        assert record.exc_info is not None and record.exc_info[0] is KeyError and record.run_id == "r2"

        # The rest of the service is unaffected.
        run = await served.stub.SubmitRun(diagnostic(ticks=0), timeout=5)
        listed = await served.stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert [r.run_id for r in listed.runs] == [run.run_id]


@pytest.mark.parametrize("path", ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"])
async def test_malformed_bytes_to_health_on_the_runners_own_port_are_invalid_argument(runner, path, caplog):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if path.endswith("Watch"):
            call = runner.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            async for _ in call(GARBAGE, timeout=5):
                pytest.fail("no message for a malformed request")
        else:
            call = runner.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            await call(GARBAGE, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request is not a valid grpc.health.v1.HealthCheckRequest message")
    assert_clean(caught.value.details())
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged
    # And a well-formed check still answers.
    reply = await runner.health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_malformed_bytes_on_the_runners_own_port_are_invalid_argument(runner):
    err = await raw_call(
        runner.channel, pb.DESCRIPTOR.services_by_name["RunnerService"].methods_by_name["SubmitRun"], GARBAGE
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
