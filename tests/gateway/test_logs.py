"""Logs a person can read: every run transition is one line of the runner's, a request through
the gateway carries its trace context (``traceparent``, ``x-request-id``) into the runner's lines,
and the gateway writes the runner's JSON shape (its access line included) in production and
readable text in development."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import httpx
import pytest

from protos.runner.v1 import runner_pb2 as pb
from runner_service import logs
from tests.conftest import events_of, wait_for_state

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def log_lines():
    """logs.configure() (JSON lines, INFO) writing to a string, as the processes do; the logging
    state is restored afterwards. Returns a function giving the lines written so far."""
    root = logging.getLogger()
    names = [*logs.PROJECT_LOGGERS, "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    saved = (list(root.handlers), root.level, {name: logging.getLogger(name).level for name in names})
    stream = io.StringIO()
    logs.configure("INFO", json_lines=True, stream=stream)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield lines
    finally:
        logging.captureWarnings(False)
        handlers, level, levels = saved
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)


def transitions(lines: list[dict], run_id: str) -> list[dict]:
    return [line for line in lines if line["logger"] == "runner_service.runs" and line.get("run_id") == run_id]


async def test_a_traceparent_through_the_gateway_reaches_the_runners_log_lines(stack, log_lines):
    runner, gateway = stack
    answer = await gateway.client.post(
        "/v1/runs",
        json={"spec": {"diagnostic": {"ticks": 0}}, "requestId": "idem-1"},
        headers={"traceparent": TRACEPARENT, "x-request-id": "req-42"},
    )
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["runId"]
    await events_of(runner.stub, run_id)
    submitted = next(line for line in transitions(log_lines(), run_id) if line["message"] == "run submitted")
    assert submitted["trace_id"] == TRACE_ID and submitted["span_id"] == SPAN_ID
    assert submitted["x_request_id"] == "req-42"
    assert submitted["kind"] == "diagnostic" and submitted["request_id"] == "idem-1"
    assert submitted["level"] == "INFO"

    # A request without a traceparent still carries the gateway's request id, and nothing of
    # the previous request's trace leaks into it.
    answer = await gateway.client.post("/v1/runs", json={"spec": {"diagnostic": {"ticks": 0}}})
    other = answer.json()["runId"]
    await events_of(runner.stub, other)
    line = next(line for line in transitions(log_lines(), other) if line["message"] == "run submitted")
    assert "trace_id" not in line and line["x_request_id"] == answer.headers["x-request-id"]


async def test_every_run_transition_is_one_line(start_runner, log_lines):
    async with start_runner(workers=1) as running:
        stub = running.stub
        done = await stub.SubmitRun(pb.SubmitRunRequest(spec=pb.RunSpec(diagnostic=pb.DiagnosticSpec(ticks=2))))
        await events_of(stub, done.run_id)
        failing = pb.RunSpec(diagnostic=pb.DiagnosticSpec(ticks=3, fail_at_tick=2))
        failed = await stub.SubmitRun(pb.SubmitRunRequest(spec=failing))
        await events_of(stub, failed.run_id)
        long = pb.RunSpec(diagnostic=pb.DiagnosticSpec(ticks=10_000))
        long.diagnostic.tick_duration.FromMilliseconds(10)
        cancelled = await stub.SubmitRun(pb.SubmitRunRequest(spec=long))
        await wait_for_state(stub, cancelled.run_id, pb.RUNNING)
        await stub.CancelRun(pb.CancelRunRequest(run_id=cancelled.run_id))
        await events_of(stub, cancelled.run_id)

    lines = log_lines()
    assert [line["message"] for line in transitions(lines, done.run_id)] == [
        "run submitted",
        "run started",
        "run finished",
    ]
    _submitted, started, finished = transitions(lines, done.run_id)
    assert started["replica"] == "test-replica" and started["worker"] >= 0 and started["pid"] > 0
    assert started["queue_wait_s"] >= 0 and started["attempt"] >= 0
    assert finished["state"] == "SUCCEEDED" and finished["reason"] == "completed" and finished["level"] == "INFO"
    assert finished["duration_s"] >= 0 and finished["total_s"] >= finished["duration_s"]

    *_, failure = transitions(lines, failed.run_id)
    assert failure["state"] == "FAILED" and failure["level"] == "WARNING" and failure["error"]

    messages = [line["message"] for line in transitions(lines, cancelled.run_id)]
    assert messages == ["run submitted", "run started", "run cancel requested", "run finished"]
    *_, request, end = transitions(lines, cancelled.run_id)
    assert request["reason"] == "client request" and request["state"] == "RUNNING"
    assert end["state"] == "CANCELLED" and end["reason"] == "client request" and end["duration_s"] > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gateway_process(upstream: str, err_path: pathlib.Path, **env: str):
    """``python -m gateway`` in front of ``upstream``, its stderr in err_path; yields its URL."""
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "RUNNER_"))}
    environ.update(
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        GATEWAY_UPSTREAM=upstream,
        GATEWAY_METRICS_LISTEN="127.0.0.1:0",
        GRPC_VERBOSITY="ERROR",
        **env,
    )
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, err_path.read_text()
            try:
                if httpx.get(f"{url}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def test_the_gateway_logs_json_lines_in_production_with_its_access_line(start_runner, tmp_path):
    async with start_runner() as running:
        err_path = tmp_path / "gateway.err"
        with gateway_process(running.address, err_path) as url:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                answer = await client.post(
                    "/v1/runs",
                    json={"spec": {"diagnostic": {"ticks": 0}}},
                    headers={"traceparent": TRACEPARENT, "x-request-id": "req-7"},
                )
                assert answer.status_code == 200
                await events_of(running.stub, answer.json()["runId"])
        written = err_path.read_text().splitlines()
    records = [json.loads(line) for line in written]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert any(record["logger"] == "uvicorn.error" for record in records)  # the server's own lines
    metrics = next(record for record in records if record["message"] == "metrics served")
    assert metrics["url"].startswith("http://127.0.0.1:") and metrics["url"].endswith("/metrics")
    access = [record for record in records if record["logger"] == "uvicorn.access"]
    post = next(record for record in access if record["method"] == "POST")
    assert post["path"] == "/v1/runs" and post["status"] == 200 and post["http_version"] == "1.1"
    assert post["trace_id"] == TRACE_ID and post["x_request_id"] == "req-7"
    assert "POST /v1/runs" in post["message"]


async def test_the_gateway_logs_readable_text_in_development(start_runner, tmp_path):
    async with start_runner() as running:
        err_path = tmp_path / "gateway.err"
        with gateway_process(running.address, err_path, GATEWAY_PROFILE="development") as url:
            assert httpx.get(f"{url}/health/live", timeout=5).status_code == 200
        written = err_path.read_text().splitlines()
    assert written and not [line for line in written if line.startswith("{")]
    assert any("uvicorn.access" in line and "GET /health/live" in line for line in written)
