"""Shared fixtures: a real runner on a loopback port with a real SQLite file."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service import settings as settings_mod
from runner_service.server import RunnerApp

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@dataclasses.dataclass
class RunningRunner:
    app: RunnerApp
    address: str
    channel: grpc.aio.Channel
    stub: runner_pb2_grpc.RunnerServiceStub
    health: health_pb2_grpc.HealthStub
    admin: runner_pb2_grpc.AdminServiceStub


@pytest.fixture
def make_settings(tmp_path):
    """Settings for a test runner: testing profile, port 0, a SQLite file in tmp_path."""

    def make(**overrides) -> settings_mod.Settings:
        values = dict(
            listen="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path}/runner.db",
            replica="test-replica",
            workers=2,
            cancel_grace_s=1.0,
            shutdown_grace_s=1.0,
            # RUNNER_TEST_SHARED_QUEUE=on runs the suite with the queue in the database on SQLite too.
            shared_queue=os.environ.get("RUNNER_TEST_SHARED_QUEUE", "auto"),
        )
        values.update(overrides)
        return settings_mod.from_env({"RUNNER_PROFILE": "testing"}, **values)

    return make


@pytest.fixture
def start_runner(make_settings):
    """An async context manager starting a runner; stopped gracefully on exit."""

    @contextlib.asynccontextmanager
    async def start(**overrides):
        app = RunnerApp(make_settings(**overrides))
        port = await app.start()
        address = f"127.0.0.1:{port}"
        channel = grpc.aio.insecure_channel(address)
        try:
            yield RunningRunner(
                app,
                address,
                channel,
                runner_pb2_grpc.RunnerServiceStub(channel),
                health_pb2_grpc.HealthStub(channel),
                runner_pb2_grpc.AdminServiceStub(channel),
            )
        finally:
            await channel.close()
            await app.stop()

    return start


@pytest.fixture
async def runner(start_runner):
    async with start_runner() as running:
        yield running


def diagnostic(**fields) -> pb.SubmitRunRequest:
    """A SubmitRunRequest for a diagnostic run; `timeout` (seconds), `request_id`
    and `labels` go on the request, the rest on the spec."""
    request = pb.SubmitRunRequest()
    timeout = fields.pop("timeout", None)
    if timeout is not None:
        request.timeout.FromNanoseconds(int(timeout * 1e9))
    request.request_id = fields.pop("request_id", "")
    for key, value in fields.pop("labels", {}).items():
        request.labels[key] = value
    tick_s = fields.pop("tick_s", None)
    spec = request.spec.diagnostic
    spec.SetInParent()
    if tick_s is not None:
        spec.tick_duration.FromNanoseconds(int(tick_s * 1e9))
    for key, value in fields.items():
        setattr(spec, key, value)
    return request


async def events_of(stub, run_id: str, after_seq: int = 0, timeout: float = 20.0) -> list[pb.RunEvent]:
    """Every event WatchRun delivers for a run until the stream ends."""
    out = []
    async for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq), timeout=timeout):
        out.append(event)
    return out


def final_state(events: list[pb.RunEvent]) -> int:
    changes = [e.state_change.state for e in events if e.WhichOneof("event") == "state_change"]
    return changes[-1] if changes else pb.RUN_STATE_UNSPECIFIED


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the server scripts/test started
    (RUNNER_TEST_POSTGRES_URL); dropped afterwards. Skipped when no server was
    started, unless RUNNER_TEST_REQUIRE_POSTGRES=1 (as in scripts/test)."""
    base = os.environ.get("RUNNER_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("RUNNER_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("RUNNER_TEST_POSTGRES_URL is not set but PostgreSQL is required")
        pytest.skip("no PostgreSQL server (run scripts/test)")
    import uuid

    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """Each test using it runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("postgres_url")


# ------------------------------------------------------------ helpers for integration and e2e tests


def runner_env(database: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of a runner process for a test: this environment without any
    RUNNER_* variable, then a loopback port, a SQLite file, the testing profile and
    one worker; `extra` wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(
        RUNNER_LISTEN=f"127.0.0.1:{port}",
        RUNNER_DATABASE_URL=f"sqlite:///{database}",
        RUNNER_PROFILE="testing",
        RUNNER_WORKERS="1",
        GRPC_VERBOSITY="ERROR",
    )
    env.update(extra)
    return env


def rich_status(err: grpc.aio.AioRpcError):
    """The google.rpc.Status an error carries in its trailers (fails the test if none)."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)
    assert status is not None, f"no google.rpc.Status details in {err.code()}: {err.details()}"
    return status


def detail_of(status, message_type):
    """The first detail of `message_type` packed in a google.rpc.Status, or None."""
    for packed in status.details:
        if packed.Is(message_type.DESCRIPTOR):
            out = message_type()
            packed.Unpack(out)
            return out
    return None


def non_progress(events: list[pb.RunEvent]) -> list[pb.RunEvent]:
    """Events a watcher may never skip: state changes, logs and results."""
    return [e for e in events if e.WhichOneof("event") != "progress"]


async def wait_for_state(stub, run_id: str, state: int, timeout: float = 20.0) -> list[pb.RunEvent]:
    """Watch a run until it reaches `state`; returns the events seen up to it.
    Fails when the stream ends before (the run ended in another state)."""
    seen: list[pb.RunEvent] = []
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout)
    try:
        async for event in call:
            seen.append(event)
            if event.WhichOneof("event") == "state_change" and event.state_change.state == state:
                return seen
    finally:
        call.cancel()
    raise AssertionError(f"run {run_id} ended {pb.RunState.Name(final_state(seen))}, never {pb.RunState.Name(state)}")
