"""Native TLS and mTLS on the runner's gRPC port (RUNNER_TLS_CERT_FILE, RUNNER_TLS_KEY_FILE,
RUNNER_TLS_CLIENT_CA_FILE): real runners on loopback, real TLS clients with certificates made at
run time (tests/pki.py), and runner processes refusing a half or broken configuration."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service import settings as settings_mod
from tests.conftest import diagnostic, events_of, final_state, runner_env
from tests.pki import Pki, make_pki, read

REPO = pathlib.Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_channel(address: str, ca: str, cert: str | None = None, key: str | None = None) -> grpc.aio.Channel:
    """A channel trusting ``ca``, with a client certificate when given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    return grpc.aio.secure_channel(address, credentials)


async def check(channel: grpc.aio.Channel) -> int:
    """The runner's readiness through ``channel`` (raises AioRpcError when refused)."""
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="readiness"), timeout=5
    )
    return reply.status


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The code of a call the runner must refuse at the connection (no TLS, or an unaccepted
    certificate): UNAVAILABLE, the call never reaching a handler."""
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(channel)
    return caught.value.code()


# ------------------------------------------------------------------ TLS


async def test_a_client_trusting_the_ca_calls_a_tls_runner(start_runner, pki):
    async with start_runner(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key) as runner:
        assert runner.app.tls_mode == "tls"
        async with tls_channel(runner.address, pki.ca) as channel:
            assert await check(channel) == SERVING
            stub = runner_pb2_grpc.RunnerServiceStub(channel)
            run = await stub.SubmitRun(diagnostic(ticks=3), timeout=5)
            assert final_state(await events_of(stub, run.run_id)) == pb.SUCCEEDED
        # The certificate names localhost too.
        port = runner.address.rsplit(":", 1)[1]
        async with tls_channel(f"localhost:{port}", pki.ca) as channel:
            assert await check(channel) == SERVING


async def test_a_tls_runner_refuses_plaintext_and_unknown_cas(start_runner, pki):
    async with start_runner(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key) as runner:
        assert await refused(grpc.aio.insecure_channel(runner.address)) == grpc.StatusCode.UNAVAILABLE
        # A client trusting another CA does not accept the runner's certificate.
        assert await refused(tls_channel(runner.address, pki.other_ca)) == grpc.StatusCode.UNAVAILABLE
        # Without a client CA, a client certificate is not needed (nor refused).
        async with tls_channel(runner.address, pki.ca, pki.client_cert, pki.client_key) as channel:
            assert await check(channel) == SERVING


# ------------------------------------------------------------------ mTLS


async def test_an_mtls_runner_needs_a_client_certificate_its_ca_signed(start_runner, pki):
    async with start_runner(
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca
    ) as runner:
        assert runner.app.tls_mode == "mtls"
        address = runner.address
        assert await refused(tls_channel(address, pki.ca)) == grpc.StatusCode.UNAVAILABLE
        intruder = tls_channel(address, pki.ca, pki.other_client_cert, pki.other_client_key)
        assert await refused(intruder) == grpc.StatusCode.UNAVAILABLE
        assert await refused(grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(address, pki.ca, pki.client_cert, pki.client_key) as channel:
            assert await check(channel) == SERVING
            scenarios = await runner_pb2_grpc.RunnerServiceStub(channel).ListScenarios(
                pb.ListScenariosRequest(), timeout=5
            )
            assert "duel" in {scenario.name for scenario in scenarios.scenarios}


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"tls_cert_file": "c.pem"}, "RUNNER_TLS_KEY_FILE"),
        ({"tls_key_file": "k.pem"}, "RUNNER_TLS_CERT_FILE"),
        ({"tls_client_ca_file": "ca.pem"}, "RUNNER_TLS_CLIENT_CA_FILE"),
    ],
)
def test_half_a_tls_configuration_is_refused(values, named):
    env = {"RUNNER_" + name.upper(): value for name, value in values.items()}
    with pytest.raises(ValueError, match=named):
        settings_mod.from_env(env)


def test_the_tls_settings_come_from_the_environment(pki):
    settings = settings_mod.from_env(
        {
            "RUNNER_TLS_CERT_FILE": pki.server_cert,
            "RUNNER_TLS_KEY_FILE": pki.server_key,
            "RUNNER_TLS_CLIENT_CA_FILE": pki.ca,
        }
    )
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) == (
        pki.server_cert,
        pki.server_key,
        pki.ca,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(tmp_path: pathlib.Path, **env: str) -> tuple[subprocess.Popen, pathlib.Path, int]:
    port = free_port()
    stderr = tmp_path / f"runner-{port}.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner_service"],
            cwd=REPO,
            env=runner_env(str(tmp_path / "runner.db"), port, **env),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return proc, stderr, port


def exit_of(tmp_path: pathlib.Path, **env: str) -> tuple[int, str]:
    """Start a runner process that must fail to start: (exit code, stderr)."""
    proc, stderr, _ = start_process(tmp_path, **env)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return code, stderr.read_text()


def test_a_certificate_without_its_key_stops_the_runner(tmp_path, pki):
    code, err = exit_of(tmp_path, RUNNER_TLS_CERT_FILE=pki.server_cert)
    assert code != 0
    assert "RUNNER_TLS_CERT_FILE and RUNNER_TLS_KEY_FILE go together" in err


@pytest.mark.parametrize(
    ("files", "said"),
    [
        (lambda p: dict(cert=p.server_cert, key="/nonexistent/server.key"), "RUNNER_TLS_KEY_FILE: cannot read"),
        (lambda p: dict(cert=p.garbage, key=p.server_key), "RUNNER_TLS_CERT_FILE: "),
        (lambda p: dict(cert=p.server_cert, key=p.client_key), "are not a PEM certificate and its private key"),
        (lambda p: dict(cert=p.server_cert, key=p.server_key, ca=p.garbage), "RUNNER_TLS_CLIENT_CA_FILE: "),
    ],
    ids=["unreadable key", "cert not PEM", "key of another cert", "client CA not PEM"],
)
def test_a_broken_tls_file_stops_the_runner_with_a_clear_message(tmp_path, pki, files, said):
    chosen = files(pki)
    env = dict(RUNNER_TLS_CERT_FILE=chosen["cert"], RUNNER_TLS_KEY_FILE=chosen["key"])
    if "ca" in chosen:
        env["RUNNER_TLS_CLIENT_CA_FILE"] = chosen["ca"]
    code, err = exit_of(tmp_path, **env)
    assert code == 1, err
    assert "runner failed to start" in err and said in err, err
    assert "Traceback" not in err


async def test_a_runner_process_serves_mtls_from_its_environment(tmp_path, pki):
    proc, stderr, port = start_process(
        tmp_path,
        RUNNER_TLS_CERT_FILE=pki.server_cert,
        RUNNER_TLS_KEY_FILE=pki.server_key,
        RUNNER_TLS_CLIENT_CA_FILE=pki.ca,
    )
    address = f"127.0.0.1:{port}"
    try:
        async with tls_channel(address, pki.ca, pki.client_cert, pki.client_key) as channel:
            deadline = time.monotonic() + 30
            while True:  # bounded: the process needs a moment to import, migrate and listen
                assert proc.poll() is None, stderr.read_text()[-3000:]
                try:
                    if await check(channel) == SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, stderr.read_text()[-3000:]
                await asyncio.sleep(0.1)
        assert await refused(tls_channel(address, pki.ca)) == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr.read_text()[-3000:]
