"""The operator's scenario directory as production sets it (RUNNER_SCENARIO_DIR in the
runner's environment): listed by the runner *and* loaded by the worker processes, which
inherit the environment through the forkserver."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from tests.conftest import events_of, final_state, runner_env

REPO = pathlib.Path(__file__).resolve().parents[2]

OPERATOR_SCENARIO = {
    "description": "one certain shot",
    "sides": {
        "east": {"units": [{"type": "gunner", "count": 1, "strength": 1, "attack": 1, "accuracy": 1.0}]},
        "west": {"units": [{"type": "target", "count": 1, "strength": 1, "attack": 0, "accuracy": 0.0}]},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_scenario_from_runner_scenario_dir_runs_in_a_worker(tmp_path):
    directory = tmp_path / "scenarios"
    directory.mkdir()
    (directory / "certain.json").write_text(json.dumps(OPERATOR_SCENARIO))
    port = free_port()
    env = runner_env(f"{tmp_path}/runner.db", port, RUNNER_SCENARIO_DIR=str(directory))
    stderr = tmp_path / "runner.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner_service"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:  # bounded: the process needs a moment to import, migrate and listen
            assert proc.poll() is None, stderr.read_text()[-3000:]
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, stderr.read_text()[-3000:]
            await asyncio.sleep(0.1)
        stub = runner_pb2_grpc.RunnerServiceStub(channel)
        listing = await stub.ListScenarios(pb.ListScenariosRequest(), timeout=5)
        assert "certain" in {s.name for s in listing.scenarios}
        request = pb.SubmitRunRequest()
        request.spec.batch.simulation.scenario = "certain"
        request.spec.batch.simulation.max_ticks = 5
        request.spec.batch.num_iterations = 10
        run = await stub.SubmitRun(request, timeout=5)
        events = await events_of(stub, run.run_id)
        run = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        assert final_state(events) == pb.SUCCEEDED, run.error.message
        assert json_format.MessageToDict(run.result)["sides"]["east"]["wins"] == 10
    finally:
        await channel.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
