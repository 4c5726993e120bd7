"""`python -m runner_service.probe`, the containers' health check, as a real process against a
real runner: exit 0 on SERVING, 1 on anything else with one line on stderr saying why."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

import pytest
from grpc_health.v1 import health_pb2

from runner_service.probe import default_target

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


async def probe(*args: str, **env: str) -> tuple[int, str, str]:
    """Run the probe as a process (the runner keeps serving on this loop meanwhile)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner_service.probe",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serving_runner_passes_on_readiness_liveness_and_the_default_target(runner):
    code, out, err = await probe("--target", runner.address)
    assert (code, err) == (0, ""), err
    assert "'readiness': SERVING" in one_line(out)
    code, out, err = await probe("--target", runner.address, "liveness")
    assert (code, err) == (0, ""), err
    assert "'liveness': SERVING" in one_line(out)
    # The container's way: no --target, RUNNER_LISTEN with a wildcard host.
    port = runner.address.rsplit(":", 1)[1]
    code, out, err = await probe(RUNNER_LISTEN=f"0.0.0.0:{port}")
    assert (code, err) == (0, ""), err
    assert one_line(out).startswith(f"probe: 127.0.0.1:{port} ")


async def test_not_serving_and_unknown_service_fail_with_the_reason(runner):
    await runner.app.health.servicer.set("readiness", NOT_SERVING)
    try:
        code, out, err = await probe("--target", runner.address)
        assert (code, out) == (1, "")
        assert "'readiness': NOT_SERVING" in one_line(err)
        # Liveness is another question: the process still answers.
        code, _, err = await probe("--target", runner.address, "liveness")
        assert code == 0, err
    finally:
        await runner.app.health.servicer.set("readiness", SERVING)
    code, out, err = await probe("--target", runner.address, "no.such.Service")
    assert (code, out) == (1, "")
    assert "unknown service" in one_line(err)


async def test_nothing_listening_fails_fast_with_one_line():
    port = free_port()
    started = time.monotonic()
    code, out, err = await probe("--target", f"127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert "UNAVAILABLE" in one_line(err)
    assert time.monotonic() - started < 10


async def test_a_silent_server_fails_at_the_deadline():
    with socket.socket() as silent:  # accepts connections into its backlog, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        code, out, err = await probe("--target", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert (code, out) == (1, "")
    assert "DEADLINE_EXCEEDED" in one_line(err)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "args, env",
    [
        (["--timeout", "soon"], {}),
        (["--timeout", "0"], {}),
        (["--no-such-flag"], {}),
        (["a", "b"], {}),
        ([], {"RUNNER_LISTEN": "no-port"}),
    ],
)
async def test_bad_arguments_exit_1_not_dockers_reserved_2(args, env):
    code, out, err = await probe(*args, **env)
    assert (code, out) == (1, "")
    assert one_line(err).startswith("probe: ")


def test_default_target_replaces_wildcards_by_loopback():
    assert default_target({}) == "127.0.0.1:50051"
    assert default_target({"RUNNER_LISTEN": "0.0.0.0:6000"}) == "127.0.0.1:6000"
    assert default_target({"RUNNER_LISTEN": "[::]:6000"}) == "[::1]:6000"
    assert default_target({"RUNNER_LISTEN": "10.1.2.3:6000"}) == "10.1.2.3:6000"
