"""`python -m runner_service.probe`, the containers' health check, as a real process against a
real runner: exit 0 on SERVING, 1 on anything else with one line on stderr saying why."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runner_service.probe import default_target
from tests.pki import OTHER_NAME, Pki, make_pki, read

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


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


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


@contextlib.asynccontextmanager
async def tls_health_server(cert: str, key: str, client_ca: str = ""):
    """A grpc.aio server with TLS (mTLS with `client_ca`) serving grpc.health.v1, readiness
    SERVING: the probe's TLS side on its own, whatever serves the port."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("readiness", SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(read(key), read(cert))],
        root_certificates=read(client_ca) if client_ca else None,
        require_client_auth=bool(client_ca),
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_tls_and_mtls_pass_with_the_ca_and_the_client_certificate(pki):
    async with tls_health_server(pki.server_cert, pki.server_key) as address:
        code, out, err = await probe("--target", address, "--tls-ca", pki.ca)
        assert (code, err) == (0, ""), err
        assert "SERVING" in one_line(out)
        code, out, err = await probe("--target", address)  # plaintext to a TLS port
        assert (code, out) == (1, "")
        assert "UNAVAILABLE" in one_line(err)
        code, out, err = await probe("--target", address, "--tls-ca", pki.other_ca)  # a CA it does not chain to
        assert (code, out) == (1, "")
        assert "UNAVAILABLE" in one_line(err)
    async with tls_health_server(pki.other_name_cert, pki.other_name_key, client_ca=pki.ca) as address:
        tls = ["--tls-ca", pki.ca, "--tls-server-name", OTHER_NAME]
        code, out, err = await probe(
            "--target", address, *tls, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key
        )
        assert (code, err) == (0, ""), err
        code, out, err = await probe("--target", address, *tls)  # no client certificate
        assert (code, out) == (1, "")
        assert "UNAVAILABLE" in one_line(err)
        code, out, err = await probe(
            "--target", address, "--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key
        )
        assert (code, out) == (1, "")  # the certificate does not name 127.0.0.1
        assert "UNAVAILABLE" in one_line(err)


async def test_a_tls_runner_with_client_certificates_passes_only_with_them(start_runner, pki):
    async with start_runner(
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca
    ) as runner:
        tls = ["--target", runner.address, "--tls-ca", pki.ca]
        code, out, err = await probe(*tls, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key)
        assert (code, err) == (0, ""), err
        assert "'readiness': SERVING" in one_line(out)
        for args in (tls, ["--target", runner.address]):  # no client certificate; plaintext
            code, out, err = await probe(*args)
            assert (code, out) == (1, "")
            assert "UNAVAILABLE" in one_line(err)


@pytest.mark.parametrize(
    "args, env",
    [
        (["--timeout", "soon"], {}),
        (["--timeout", "0"], {}),
        (["--no-such-flag"], {}),
        (["a", "b"], {}),
        ([], {"RUNNER_LISTEN": "no-port"}),
        (["--tls-ca", "/no/such/ca.pem"], {}),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], {}),
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
