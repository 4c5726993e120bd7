"""The gateway's TLS: its upstream channel to a TLS or mTLS runner (GATEWAY_UPSTREAM_TLS_*), and
HTTPS towards its clients (GATEWAY_TLS_*), client certificates included; the hostile-client
bounds over TLS (handshake and head deadlines, head size, the connection cap); and ``python -m
gateway`` configured from its environment. Real runners and gateways on loopback, certificates
made at run time (tests/pki.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn

from gateway import server as gateway_server
from gateway import settings as gateway_settings
from gateway.app import create_app
from tests.pki import OTHER_NAME, Pki, make_pki

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Room for a loaded machine between a deadline and what follows it.
SLACK_S = 10.0


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: Pki, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """What an HTTPS client uses: trust the test CA, present ``cert`` when given."""
    context = ssl.create_default_context(cafile=pki.ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def tls_runner(pki: Pki, mtls: bool = False, cert: str | None = None, key: str | None = None) -> dict:
    """start_runner overrides for a TLS runner (mTLS: client certificates of the test CA)."""
    values = dict(tls_cert_file=cert or pki.server_cert, tls_key_file=key or pki.server_key)
    if mtls:
        values["tls_client_ca_file"] = pki.ca
    return values


def upstream_tls(pki: Pki, client: bool = True) -> dict:
    """Gateway overrides for TLS to the runner, with the gateway's client certificate or not."""
    values = dict(upstream_tls_ca_file=pki.ca)
    if client:
        values.update(upstream_tls_cert_file=pki.client_cert, upstream_tls_key_file=pki.client_key)
    return values


@dataclasses.dataclass
class HttpsGateway:
    url: str
    port: int
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def https_gateway(upstream: str, pki: Pki, client_ca: bool = False, **overrides):
    """The gateway over HTTPS (the test CA's server certificate) on a loopback port, served by
    uvicorn in the test's loop as tests/gateway/conftest.py serves it over HTTP."""
    if client_ca:
        overrides["tls_client_ca_file"] = pki.ca
    settings = gateway_settings.from_env(
        {},
        listen="127.0.0.1:0",
        upstream=upstream,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        **overrides,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = gateway_server.config(
        create_app(settings), settings, lifespan="on", log_config=None, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        yield HttpsGateway(f"https://localhost:{port}", port, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def get(url: str, context: ssl.SSLContext | bool, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, verify=context, timeout=SLACK_S) as client:
        return await client.get(path)


# ------------------------------------------------------------------ the upstream channel


async def test_the_gateway_reaches_a_tls_runner(start_runner, start_gateway, pki):
    async with start_runner(**tls_runner(pki)) as runner:
        async with start_gateway(runner.address, **upstream_tls(pki, client=False)) as gateway:
            assert (await gateway.client.get("/health/ready")).status_code == 200
            listing = await gateway.client.get("/v1/scenarios")
            assert listing.status_code == 200, listing.text
            assert "duel" in {scenario["name"] for scenario in listing.json()["scenarios"]}
        # Plaintext to a TLS runner: not ready, and REST calls are 503.
        async with start_gateway(runner.address) as gateway:
            assert (await gateway.client.get("/health/ready")).status_code == 503
            assert (await gateway.client.get("/v1/scenarios")).status_code == 503


async def test_the_gateway_reaches_an_mtls_runner_with_its_client_certificate(start_runner, start_gateway, pki):
    async with start_runner(**tls_runner(pki, mtls=True)) as runner:
        async with start_gateway(runner.address, **upstream_tls(pki)) as gateway:
            ready = await gateway.client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            body = {"spec": {"diagnostic": {"ticks": 2}}}
            run = await gateway.client.post("/v1/runs", json=body)
            assert run.status_code == 200, run.text
            got = await gateway.client.get(f"/v1/runs/{run.json()['runId']}")
            assert got.status_code == 200, got.text
        # Without a client certificate, the runner refuses the connection.
        async with start_gateway(runner.address, **upstream_tls(pki, client=False)) as gateway:
            ready = await gateway.client.get("/health/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "UNAVAILABLE"
            assert (await gateway.client.post("/v1/runs", json={"spec": {"diagnostic": {}}})).status_code == 503
        # Nor does a certificate of another CA do.
        intruder = dict(
            upstream_tls_ca_file=pki.ca,
            upstream_tls_cert_file=pki.other_client_cert,
            upstream_tls_key_file=pki.other_client_key,
        )
        async with start_gateway(runner.address, **intruder) as gateway:
            assert (await gateway.client.get("/health/ready")).status_code == 503


async def test_the_name_checked_on_the_runner_certificate_may_be_set(start_runner, start_gateway, pki):
    """A runner whose certificate names only OTHER_NAME, dialled at 127.0.0.1."""
    async with start_runner(**tls_runner(pki, cert=pki.other_name_cert, key=pki.other_name_key)) as runner:
        async with start_gateway(runner.address, **upstream_tls(pki, client=False)) as gateway:
            assert (await gateway.client.get("/health/ready")).status_code == 503
        named = dict(upstream_tls(pki, client=False), upstream_tls_server_name=OTHER_NAME)
        async with start_gateway(runner.address, **named) as gateway:
            assert (await gateway.client.get("/health/ready")).status_code == 200
            assert (await gateway.client.get("/health/deep")).status_code == 200


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"tls_cert_file": "c.pem"}, "GATEWAY_TLS_KEY_FILE"),
        ({"tls_key_file": "k.pem"}, "GATEWAY_TLS_CERT_FILE"),
        ({"tls_client_ca_file": "ca.pem"}, "GATEWAY_TLS_CLIENT_CA_FILE"),
        ({"upstream_tls_ca_file": "ca.pem", "upstream_tls_cert_file": "c.pem"}, "GATEWAY_UPSTREAM_TLS_KEY_FILE"),
        ({"upstream_tls_cert_file": "c.pem", "upstream_tls_key_file": "k.pem"}, "GATEWAY_UPSTREAM_TLS_CA_FILE"),
        ({"upstream_tls_server_name": "runner"}, "GATEWAY_UPSTREAM_TLS_CA_FILE"),
    ],
)
def test_half_a_tls_configuration_is_refused(values, named):
    env = {"GATEWAY_" + name.upper(): value for name, value in values.items()}
    with pytest.raises(ValueError, match=named):
        gateway_settings.from_env(env)


# ------------------------------------------------------------------ HTTPS


async def test_the_gateway_answers_over_https(runner, pki):
    async with https_gateway(runner.address, pki) as gateway:
        assert (await get(gateway.url, client_context(pki), "/health/live")).status_code == 200
        listing = await get(gateway.url, client_context(pki), "/v1/scenarios")
        assert listing.status_code == 200, listing.text
        # By IP address too (the certificate names 127.0.0.1).
        assert (await get(f"https://127.0.0.1:{gateway.port}", client_context(pki), "/health/ready")).status_code == 200
        # A client trusting another CA refuses the gateway's certificate; plain HTTP gets no answer.
        with pytest.raises(httpx.ConnectError):
            await get(gateway.url, ssl.create_default_context(cafile=pki.other_ca), "/health/live")
        with pytest.raises(httpx.TransportError):
            await get(f"http://127.0.0.1:{gateway.port}", False, "/health/live")


async def test_with_a_client_ca_the_gateway_needs_a_client_certificate(runner, pki):
    async with https_gateway(runner.address, pki, client_ca=True) as gateway:
        # TLS 1.3 ends the client's side of the handshake first: the refusal comes as the end of
        # the connection where the answer would be.
        with pytest.raises(httpx.TransportError):
            await get(gateway.url, client_context(pki), "/health/live")
        # In TLS 1.2 the client's certificate is part of the handshake, which fails.
        tls12 = client_context(pki)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", gateway.port, ssl=tls12, server_hostname="localhost")
        with pytest.raises(httpx.TransportError):
            await get(gateway.url, client_context(pki, pki.other_client_cert, pki.other_client_key), "/health/live")
        answer = await get(gateway.url, client_context(pki, pki.client_cert, pki.client_key), "/v1/scenarios")
        assert answer.status_code == 200, answer.text


# ------------------------------------------------------------------ hostile clients over TLS


async def open_tls(port: int, pki: Pki) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost")


async def read_status(reader: asyncio.StreamReader) -> int:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK_S)
    return int(head.split(b" ", 2)[1])


async def ends(reader: asyncio.StreamReader) -> bool:
    """True when the server ends the connection (EOF, reset or a TLS error) within SLACK_S."""
    try:
        while await asyncio.wait_for(reader.read(65536), SLACK_S):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def test_head_bounds_hold_over_tls(runner, pki):
    async with https_gateway(runner.address, pki, head_timeout_s=0.5, max_header_bytes=4096) as gateway:
        # A head that never ends: 408 once head_timeout_s has passed.
        reader, writer = await open_tls(gateway.port, pki)
        writer.write(b"GET /health/live HTTP/1.1\r\nhost: t\r\n")
        started = time.monotonic()
        assert await read_status(reader) == 408
        assert time.monotonic() - started < SLACK_S
        assert await ends(reader)
        writer.close()
        # A head larger than the limit: 431.
        reader, writer = await open_tls(gateway.port, pki)
        writer.write(b"GET /health/live HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n")
        assert await read_status(reader) == 431
        assert await ends(reader)
        writer.close()


async def test_a_handshake_must_end_within_the_head_timeout(runner, pki):
    async with https_gateway(runner.address, pki, head_timeout_s=0.5) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)  # TCP only, no hello
        started = time.monotonic()
        assert await ends(reader)
        assert time.monotonic() - started < SLACK_S
        writer.close()


async def test_connections_in_their_handshake_count_towards_the_cap(runner, pki):
    async with https_gateway(runner.address, pki, max_connections=2) as gateway:
        silent = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(2)]
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.wait_for(open_tls(gateway.port, pki), SLACK_S)
            writer.write(b"GET /health/live HTTP/1.1\r\nhost: t\r\n\r\n")
            await read_status(reader)
        for _, writer in silent:
            writer.close()
        # Once they are gone, there is room again (the server sees the close in a moment).
        deadline = time.monotonic() + SLACK_S
        while True:
            try:
                answer = await get(gateway.url, client_context(pki), "/health/live")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the gateway never had room again"
                await asyncio.sleep(0.05)
        assert answer.status_code == 200


# ------------------------------------------------------------------ the gateway process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gateway_env(port: int, upstream: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_LISTEN=f"127.0.0.1:{port}", GATEWAY_UPSTREAM=upstream, GRPC_VERBOSITY="ERROR")
    env.update(GATEWAY_METRICS_LISTEN="127.0.0.1:0", **extra)
    return env


async def test_a_gateway_process_serves_https_to_an_mtls_runner(start_runner, pki, tmp_path):
    """``python -m gateway`` (uvloop, as deployed) with every TLS setting from its environment."""
    async with start_runner(**tls_runner(pki, mtls=True)) as runner:
        port = free_port()
        env = gateway_env(
            port,
            runner.address,
            GATEWAY_TLS_CERT_FILE=pki.server_cert,
            GATEWAY_TLS_KEY_FILE=pki.server_key,
            GATEWAY_TLS_CLIENT_CA_FILE=pki.ca,
            GATEWAY_UPSTREAM_TLS_CA_FILE=pki.ca,
            GATEWAY_UPSTREAM_TLS_CERT_FILE=pki.client_cert,
            GATEWAY_UPSTREAM_TLS_KEY_FILE=pki.client_key,
        )
        log = tmp_path / "gateway.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            context = client_context(pki, pki.client_cert, pki.client_key)
            deadline = time.monotonic() + 30
            while True:  # bounded: the process needs a moment to import and listen
                assert proc.poll() is None, log.read_text()
                try:
                    ready = await get(f"https://localhost:{port}", context, "/health/ready")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.1)
            assert ready.status_code == 200, ready.text
            with pytest.raises(httpx.TransportError):
                await get(f"https://localhost:{port}", client_context(pki), "/health/live")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        assert "TLS: clients mtls" in log.read_text()


@pytest.mark.parametrize(
    ("files", "said"),
    [
        (lambda p: dict(GATEWAY_TLS_CERT_FILE=p.server_cert), "GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE"),
        (
            lambda p: dict(GATEWAY_TLS_CERT_FILE=p.server_cert, GATEWAY_TLS_KEY_FILE=p.client_key),
            "are not a PEM certificate and its private key",
        ),
        (
            lambda p: dict(
                GATEWAY_TLS_CERT_FILE=p.server_cert, GATEWAY_TLS_KEY_FILE=p.server_key, GATEWAY_TLS_CLIENT_CA_FILE="/no"
            ),
            "GATEWAY_TLS_CLIENT_CA_FILE: cannot read",
        ),
        (lambda p: dict(GATEWAY_UPSTREAM_TLS_CA_FILE=p.garbage), "GATEWAY_UPSTREAM_TLS_CA_FILE: "),
        (
            lambda p: dict(
                GATEWAY_UPSTREAM_TLS_CA_FILE=p.ca,
                GATEWAY_UPSTREAM_TLS_CERT_FILE=p.client_cert,
                GATEWAY_UPSTREAM_TLS_KEY_FILE="/no/key",
            ),
            "GATEWAY_UPSTREAM_TLS_KEY_FILE: cannot read",
        ),
    ],
    ids=["cert without key", "key of another cert", "client CA unreadable", "upstream CA not PEM", "no upstream key"],
)
def test_a_broken_tls_configuration_stops_the_gateway(pki, files, said):
    env = gateway_env(free_port(), f"127.0.0.1:{free_port()}", **files(pki))
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "gateway: bad configuration" in done.stderr and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
