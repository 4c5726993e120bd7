"""Hostile HTTP clients against a gateway process (``python -m gateway``, as deployed).

Huge and endless request heads, too many headers, slow heads (slowloris), bodies shorter than
their Content-Length or trickled, and more connections than the cap. Each test asserts what the
client got (status, JSON body, the connection closed) and that the gateway's memory stayed flat:
its VmRSS before and after, and its peak (VmHWM, reset before the attack), from ``/proc``.

No runner is needed: none of these requests reaches the upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.server import LINGER_S

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
#: What an attack may add to the gateway's resident memory, at its peak or after it.
GROWTH_LIMIT_KIB = 30 * 1024
#: Deadlines of the gateway under test (the defaults are 10 s and 30 s).
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
#: Room for a loaded machine between a deadline and the answer.
SLACK_S = 10.0


# ------------------------------------------------------------------ the gateway process


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class GatewayProcess:
    process: subprocess.Popen
    port: int
    log: Path

    def status_kib(self, field: str) -> int:
        """A ``/proc/<pid>/status`` figure in KiB (VmRSS: resident now; VmHWM: peak)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} for process {self.process.pid}")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
        try:
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            return False
        return True


@contextlib.contextmanager
def gateway_process(log_dir: Path, **env: str) -> Iterator[GatewayProcess]:
    """``python -m gateway`` on a free loopback port, in front of a port nobody listens on;
    ready once ``/health/live`` answers. Stopped with SIGTERM (SIGKILL after 10 s)."""
    port = free_port()
    log = log_dir / f"gateway-{port}.log"
    environ = {
        **os.environ,
        "GRPC_VERBOSITY": "ERROR",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_UPSTREAM": f"127.0.0.1:{free_port()}",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
        **env,
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    running = GatewayProcess(process, port, log)
    try:
        _wait_live(running, timeout_s=30.0)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_live(gateway: GatewayProcess, timeout_s: float) -> None:
    """Until ``GET /health/live`` answers 200. A process start has no event to wait on from
    outside: this polls, 50 ms apart, and fails at once if the process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if gateway.process.poll() is not None:
            raise AssertionError(f"the gateway exited ({gateway.process.returncode}): {gateway.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=2) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway did not answer within {timeout_s} s: {gateway.log.read_text()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[GatewayProcess]:
    """A gateway with the default settings (64 KiB heads, 100 headers, 10 s and 30 s deadlines)."""
    with gateway_process(tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture(scope="module")
def impatient_gateway(tmp_path_factory) -> Iterator[GatewayProcess]:
    """A gateway with 1 s read deadlines and room for 400 connections."""
    with gateway_process(
        tmp_path_factory.mktemp("gateway"),
        GATEWAY_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
        GATEWAY_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        GATEWAY_MAX_CONNECTIONS="400",
    ) as running:
        yield running


class Memory:
    """The gateway's resident memory across an attack, in KiB."""

    def __init__(self, gateway: GatewayProcess, attack: str) -> None:
        self._gateway = gateway
        self.attack = attack
        self.before = gateway.status_kib("VmRSS")
        self.peak_reset = gateway.reset_peak()
        self.during: list[int] = []

    def sample(self) -> None:
        self.during.append(self._gateway.status_kib("VmRSS"))

    def check(self) -> None:
        """Assert the peak and the end stayed within GROWTH_LIMIT_KIB of the start; print the
        figures (``pytest -s`` shows them)."""
        after = self._gateway.status_kib("VmRSS")
        peak = max([after, *self.during])
        if self.peak_reset:
            peak = max(peak, self._gateway.status_kib("VmHWM"))
        print(
            f"\n[memory] {self.attack}: RSS before {self.before / 1024:.1f} MiB, "
            f"peak {peak / 1024:.1f} MiB, after {after / 1024:.1f} MiB"
        )
        assert peak - self.before < GROWTH_LIMIT_KIB, (self.attack, self.before, peak)
        assert after - self.before < GROWTH_LIMIT_KIB, (self.attack, self.before, after)


# ------------------------------------------------------------------ a raw HTTP/1.1 client


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(lines[0].split(" ", 2)[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server ends the connection (EOF or reset) after its answer."""
    try:
        return await asyncio.wait_for(reader.read(), SLACK_S) == b""
    except ConnectionError:
        return True


async def send_while_unanswered(port: int, first: bytes, then: bytes, total: int, pause_s: float = 0.0):
    """Send ``first``, then ``then`` again and again (``pause_s`` apart) up to ``total`` bytes,
    until the server answers. Returns (answer, bytes sent, seconds to the answer, closed)."""
    started = time.monotonic()  # before the connection: the head deadline starts with it
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        writer.write(first)
        sent += len(first)
        while sent < total:
            await writer.drain()
            await asyncio.sleep(pause_s)  # 0: let the reader see an answer that has come
            writer.write(then)
            sent += len(then)

    sending = asyncio.create_task(pump())
    try:
        answer = await asyncio.wait_for(read_answer(reader), HEAD_TIMEOUT_S + BODY_TIMEOUT_S + SLACK_S)
        elapsed = time.monotonic() - started
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sending
    closed = await closed_by_server(reader)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return answer, sent, elapsed, closed


async def send_all(port: int, first: bytes, then: bytes, total: int) -> tuple[Answer, int]:
    """Send ``first`` and ``then`` again and again up to ``total`` bytes whatever the server
    answers (until it ends the connection); returns its answer and the bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answering = asyncio.create_task(read_answer(reader))
    sent = 0
    try:
        writer.write(first)
        sent += len(first)
        while sent < total:
            await writer.drain()
            writer.write(then)
            sent += len(then)
        await writer.drain()
    except ConnectionError:
        pass  # the server closed: what it answered before is read below
    try:
        return await asyncio.wait_for(answering, SLACK_S), sent
    finally:
        writer.close()


async def still_serves(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        assert (await client.get("/health/live")).status_code == 200


# ------------------------------------------------------------------ heads


async def test_a_100_mb_header_gets_431_after_64_kib(gateway):
    memory = Memory(gateway, "one 100 MB header")
    answer, sent, _, closed = await send_while_unanswered(
        gateway.port, b"GET /health/live HTTP/1.1\r\nhost: t\r\nx-big: ", b"a" * (256 * 1024), 100 * MIB
    )
    assert answer.status == 431 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {"code": 8, "message": "the request head is larger than the limit of 65536 bytes"}
    assert answer.headers["connection"] == "close" and closed
    assert sent < 100 * MIB, sent  # answered before the client was done
    memory.check()
    await still_serves(gateway)


async def test_20_connections_with_20_mb_of_unfinished_headers_get_431(gateway):
    memory = Memory(gateway, "20 connections x 20 MB of unfinished headers")
    start, line = b"GET /health/live HTTP/1.1\r\nhost: t\r\n", b"x-filler: " + b"b" * 1014 + b"\r\n"  # 1 KiB lines
    results = await asyncio.gather(*(send_while_unanswered(gateway.port, start, line, 20 * MIB) for _ in range(20)))
    assert [answer.status for answer, *_ in results] == [431] * 20
    assert all(closed for *_, closed in results)
    memory.check()
    await still_serves(gateway)


async def test_too_many_headers_get_431(gateway):
    memory = Memory(gateway, "101 headers, then 10,000 Grpc-Metadata-* headers")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        # 101 small headers: under the byte limit, over the count.
        response = await client.get("/health/live", headers={f"x-h{i}": "v" for i in range(101)})
        assert response.status_code == 431
        assert response.json() == {"code": 8, "message": "the request has more headers than the limit of 100"}
        # Just under both limits is served.
        response = await client.get("/health/live", headers={f"x-h{i}": "v" * 600 for i in range(95)})
        assert response.status_code == 200
    # 10,000 Grpc-Metadata-* headers (170 KB; httpx takes seconds to build such a request).
    many = b"".join(b"grpc-metadata-k%d: v\r\n" % i for i in range(10_000))
    answer, _, _, closed = await send_while_unanswered(
        gateway.port, b"GET /v1/runs/r1 HTTP/1.1\r\nhost: t\r\n" + many + b"\r\n", b"", 0
    )
    assert answer.status == 431 and answer.json()["code"] == 8 and closed
    memory.check()


async def test_slowloris_connections_get_408_at_the_head_deadline(impatient_gateway):
    """180 connections send a header line every 0.25 s and never end their head; 20 send
    nothing. The head deadline counts from the first byte (or the connection), not from the
    last: every one gets 408 about HEAD_TIMEOUT_S after it started, and is closed."""
    gateway = impatient_gateway
    memory = Memory(gateway, "200 slowloris connections")
    trickling = [
        send_while_unanswered(
            gateway.port, b"GET /health/live HTTP/1.1\r\nhost: t\r\n", b"x-a: b\r\n", 10 * MIB, pause_s=0.25
        )
        for _ in range(180)
    ]
    silent = [send_while_unanswered(gateway.port, b"", b"", 0) for _ in range(20)]
    results = await asyncio.gather(*trickling, *silent)
    assert [answer.status for answer, *_ in results] == [408] * 200
    assert {answer.json()["message"] for answer, *_ in results} == {"the request head did not arrive within 1 s"}
    assert all(closed for *_, closed in results)
    elapsed = [seconds for _, _, seconds, _ in results]
    assert min(elapsed) > HEAD_TIMEOUT_S * 0.9 and max(elapsed) < HEAD_TIMEOUT_S + SLACK_S, elapsed
    memory.check()
    await still_serves(gateway)


# ------------------------------------------------------------------ bodies


async def test_short_and_trickled_bodies_get_408_at_the_body_deadline(impatient_gateway):
    gateway = impatient_gateway
    memory = Memory(gateway, "short and trickled bodies")
    head = b"POST /v1/runs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    results = await asyncio.gather(
        # 10 bytes of the 1000 promised, then nothing.
        *(send_while_unanswered(gateway.port, head + b'{"spec": {', b"", 0) for _ in range(10)),
        # A byte every 0.2 s: never idle for long, still late.
        *(send_while_unanswered(gateway.port, head, b" ", 1000, pause_s=0.2) for _ in range(10)),
    )
    for answer, _, seconds, closed in results:
        assert answer.status == 408 and closed
        assert answer.json() == {"code": 4, "message": "the request body did not arrive within 1 s"}
        assert BODY_TIMEOUT_S * 0.9 < seconds < BODY_TIMEOUT_S + SLACK_S
    memory.check()
    await still_serves(gateway)


async def test_a_chunked_body_with_a_50_mb_trailer_is_cut_off(gateway):
    """httptools keeps a chunk trailer whole, as it does a header: past the body limit (plus
    room for framing and trailers) the gateway stops parsing, after the route's answer."""
    memory = Memory(gateway, "a chunked body with a 50 MB trailer")
    head = b"POST /health/live HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    answer, _ = await asyncio.wait_for(
        send_all(gateway.port, head + b"5\r\nhello\r\n0\r\nx-trailer: ", b"t" * (256 * 1024), 50 * MIB),
        LINGER_S + SLACK_S,
    )
    assert answer.status == 405  # the route's own answer, before the trailer
    # A body nobody reads, past the limit, without an answer yet: 413 from the server.
    answer, _, _, closed = await send_while_unanswered(
        gateway.port,
        b"POST /v1/runs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        b"40000\r\n" + b" " * 0x40000 + b"\r\n",
        50 * MIB,
    )
    assert answer.status == 413 and closed
    memory.check()
    await still_serves(gateway)


async def test_ordinary_clients_are_untouched(gateway):
    """Pipelined requests, a head in 1-byte reads, a head just under the limit, a body at the
    limit: all served as before (503: nothing listens upstream, so the request got that far)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nhost: t\r\n\r\n" * 3)
        assert [(await read_answer(reader)).status for _ in range(3)] == [200] * 3
        for byte in b"GET /health/live HTTP/1.1\r\nhost: t\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
        assert (await read_answer(reader)).status == 200
        big = b"x-big: " + b"a" * (60 * 1024) + b"\r\n"
        writer.write(b"GET /health/live HTTP/1.1\r\nhost: t\r\n" + big + b"\r\n")
        assert (await read_answer(reader)).status == 200
        body = b" " * (1024 * 1024 - 2) + b"{}"
        writer.write(
            b"POST /v1/runs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body
        )
        answer = await asyncio.wait_for(read_answer(reader), SLACK_S)
        assert answer.status == 400 and "spec" in answer.json()["message"]  # read, then refused for its content
        writer.write(b"GET /v1/runs/r1 HTTP/1.1\r\nhost: t\r\n\r\n")
        assert (await asyncio.wait_for(read_answer(reader), SLACK_S)).status == 503
    finally:
        writer.close()


# ------------------------------------------------------------------ connections


async def test_connections_past_the_cap_get_503(tmp_path):
    cap = 20
    with gateway_process(tmp_path, GATEWAY_MAX_CONNECTIONS=str(cap), GATEWAY_HEAD_TIMEOUT_S="60") as capped:
        memory = Memory(capped, f"{cap} connections held, more refused")
        held = []
        try:
            # Each held connection has had an answer, so the gateway counts it, then starts a
            # second head: held until the (60 s) head deadline, not the 5 s idle timeout.
            for _ in range(cap):
                reader, writer = await asyncio.open_connection("127.0.0.1", capped.port)
                writer.write(b"GET /health/live HTTP/1.1\r\nhost: t\r\n\r\n")
                assert (await asyncio.wait_for(read_answer(reader), SLACK_S)).status == 200
                writer.write(b"GET /health/live HTTP/1.1\r\n")
                held.append((reader, writer))
            for _ in range(5):
                answer, _, _, closed = await send_while_unanswered(
                    capped.port, b"GET /health/live HTTP/1.1\r\nhost: t\r\n\r\n", b"", 0
                )
                assert answer.status == 503 and answer.headers["retry-after"] == "1" and closed
                assert answer.json()["code"] == 14 and "20 connections" in answer.json()["message"]
        finally:
            for _, writer in held:
                writer.close()
        # Once the held connections are gone, there is room again. The gateway sees them close
        # a moment later: bounded retries.
        deadline = time.monotonic() + SLACK_S
        while True:
            answer, *_ = await send_while_unanswered(
                capped.port, b"GET /health/live HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n", b"", 0
            )
            if answer.status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert answer.status == 200
        memory.check()
