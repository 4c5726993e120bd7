"""PostgreSQL stopped and started again under load, for real (a server of the
test's own): the circuit opens and callers get UNAVAILABLE with a retry hint,
readiness says NOT_SERVING, then everything closes again by itself, and every
submission that was acknowledged ends in the database with its final state."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import subprocess
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, diagnostic, rich_status

ROOT = pathlib.Path(__file__).resolve().parents[2]
TERMINAL = {pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.DEADLINE_EXCEEDED, pb.INTERRUPTED}


class OwnPostgres:
    """A throwaway server (scripts/postgres) this test may stop and start."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        self.url = subprocess.run(
            ["bash", str(ROOT / "scripts/postgres"), "start", str(directory)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()
        self.port = (directory / "port").read_text().strip()
        self.bin = pathlib.Path(sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]).parent

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._pg_ctl("-l", str(self.dir / "server.log"), "-w", "-o", options, "start")

    def close(self) -> None:
        subprocess.run(["bash", str(ROOT / "scripts/postgres"), "stop", str(self.dir)], check=False, timeout=60)


@pytest.fixture
def own_postgres(tmp_path_factory):
    if not list(pathlib.Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or not shutil.which("runuser"):
        if os.environ.get("RUNNER_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries are required (scripts/test installs them)")
        pytest.skip("no PostgreSQL binaries")
    directory = pathlib.Path(f"/tmp/runner-outage-{uuid.uuid4().hex[:8]}")
    server = OwnPostgres(directory)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


async def readiness(running) -> int:
    check = await running.health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
    return check.status


async def test_postgres_stopped_and_started_under_load(start_runner, own_postgres):
    settings = dict(
        database_url=own_postgres.url,
        db_breaker_failure_threshold=3,
        db_breaker_reset_timeout_s=1.0,
        max_queued=1000,
    )
    async with start_runner(**settings) as running:
        stub = running.stub
        acknowledged: dict[str, str] = {}  # request_id -> run_id
        reasons: list[str] = []
        retry_hints: list[float] = []
        loading = True

        async def submit_forever():
            while loading:
                request_id = uuid.uuid4().hex
                try:
                    run = await stub.SubmitRun(diagnostic(ticks=2, tick_s=0.005, request_id=request_id), timeout=5)
                    acknowledged[request_id] = run.run_id
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    status = rich_status(err)
                    info = detail_of(status, error_details_pb2.ErrorInfo)
                    hint = detail_of(status, error_details_pb2.RetryInfo)
                    reasons.append(info.reason)
                    assert hint is not None
                    retry_hints.append(hint.retry_delay.ToNanoseconds() / 1e9)
                await asyncio.sleep(0.01)

        loaders = [asyncio.create_task(submit_forever()) for _ in range(4)]
        await asyncio.sleep(1.0)
        before = len(acknowledged)
        assert before > 10
        await asyncio.to_thread(own_postgres.stop)
        deadline = asyncio.get_running_loop().time() + 15
        while "CIRCUIT_OPEN" not in reasons or await readiness(running) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert asyncio.get_running_loop().time() < deadline, f"circuit never opened: {set(reasons)}"
            await asyncio.sleep(0.1)
        during = await stub.GetResilience(pb.GetResilienceRequest(), timeout=5)
        assert during.recommendation == "recover" and during.reasons
        assert during.circuit.state in (pb.CIRCUIT_OPEN, pb.CIRCUIT_HALF_OPEN)
        assert during.circuit.failure_threshold == 3 and during.circuit.opened_total >= 1
        assert during.circuit.last_error and "[SQL" not in during.circuit.last_error
        await asyncio.to_thread(own_postgres.start)
        deadline = asyncio.get_running_loop().time() + 20
        while await readiness(running) != health_pb2.HealthCheckResponse.SERVING:
            assert asyncio.get_running_loop().time() < deadline, "readiness never came back"
            await asyncio.sleep(0.1)
        recovered_from = len(acknowledged)
        await asyncio.sleep(1.0)
        loading = False
        await asyncio.gather(*loaders)
        assert len(acknowledged) > recovered_from, "no submission accepted after the database came back"
        after = await stub.GetResilience(pb.GetResilienceRequest(), timeout=5)
        assert after.circuit.state == pb.CIRCUIT_CLOSED and not after.database.writes_failing
        assert set(reasons) <= {"CIRCUIT_OPEN", "DB_UNAVAILABLE", "DB_POOL_EXHAUSTED"}
        assert all(0 < hint <= 10 for hint in retry_hints)

        # Nothing acknowledged is lost: every run is stored and ends.
        reads = asyncio.Semaphore(4)

        async def final(run_id: str) -> pb.Run:
            for _ in range(300):
                async with reads:
                    run = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
                if run.state in TERMINAL:
                    return run
                await asyncio.sleep(0.1)
            raise AssertionError(f"run {run_id} never ended")

        runs = await asyncio.gather(*(final(run_id) for run_id in acknowledged.values()))
        assert {run.state for run in runs} == {pb.SUCCEEDED}
        for request_id, run_id in list(acknowledged.items())[:20]:
            again = await stub.SubmitRun(diagnostic(ticks=2, tick_s=0.005, request_id=request_id), timeout=5)
            assert again.run_id == run_id
