"""`scripts/cluster` as a real process on the test PostgreSQL: two runners and a gateway that
balances over them come up, runs submitted over REST succeed, both runners answer health, and
SIGTERM stops every process with exit status 0. A runner that dies stops the rest.

Which replica runs which run is not looked at here: only that runs complete."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "DEADLINE_EXCEEDED", "INTERRUPTED"}

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(START_TIMEOUT_S + STOP_TIMEOUT_S + 60)]


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports (the script numbers runners from its base)."""
    for _ in range(100):
        base = free_port()
        if base + count <= 65536 and all(bindable(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports")


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            found.setdefault(int(raw[raw.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] not in "ZX"


def cmdline(pid: int) -> list[str]:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def readiness(address: str) -> int | None:
    """The runner's readiness status, or None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=2.0
            )
        except grpc.RpcError:
            return None
    return reply.status


@dataclasses.dataclass
class Cluster:
    proc: subprocess.Popen
    output: pathlib.Path
    runners: list[str]
    url: str

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-6000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc.poll() is None, f"scripts/cluster exited with {self.proc.returncode}:\n{self.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", timeout=2.0).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"the gateway is not ready after {START_TIMEOUT_S} s:\n{self.log()}"
            time.sleep(0.2)

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"scripts/cluster still running {STOP_TIMEOUT_S} s later:\n{self.log()}") from None


@pytest.fixture
def start_cluster(tmp_path, postgres_url):
    """Start `scripts/cluster --replicas N` on a fresh database and free ports; whatever it
    leaves running at the end is killed."""
    started: list[Cluster] = []
    trees: list[set[int]] = []

    def start(replicas: int = 2) -> Cluster:
        base, gateway_port = free_ports_in_a_row(replicas), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "GATEWAY_"))}
        env.update(
            RUNNER_DATABASE_URL=postgres_url,
            RUNNER_LISTEN=f"127.0.0.1:{base}",
            RUNNER_PROFILE="testing",
            RUNNER_WORKERS="1",
            GATEWAY_LISTEN=f"127.0.0.1:{gateway_port}",
            GRPC_VERBOSITY="ERROR",
        )
        output = tmp_path / f"cluster-{len(started)}.out"
        with output.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "scripts/cluster", "--replicas", str(replicas), "--dir", str(tmp_path / "cluster")],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        cluster = Cluster(
            proc,
            output,
            [f"127.0.0.1:{base + i}" for i in range(replicas)],
            f"http://127.0.0.1:{gateway_port}",
        )
        started.append(cluster)
        return cluster

    def remember(cluster: Cluster) -> set[int]:
        tree = descendants(cluster.proc.pid)
        trees.append(tree)
        return tree

    yield start, remember

    for cluster in started:
        trees.append(descendants(cluster.proc.pid))
        if cluster.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(cluster.proc.pid, signal.SIGKILL)
            cluster.proc.wait(10)
    for pid in set().union(*trees):
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def submit_and_finish(client: httpx.Client, count: int) -> dict[str, str]:
    """Submit `count` short diagnostic runs over REST; {run_id: final state}."""
    run_ids = []
    for i in range(count):
        body = {"spec": {"diagnostic": {"ticks": 3, "tickDuration": "0.01s"}}, "requestId": f"cluster-{i}"}
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 200, response.text
        run_ids.append(response.json()["runId"])
    states: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(states) < count:
        for run_id in run_ids:
            if run_id not in states:
                response = client.get(f"/v1/runs/{run_id}")
                assert response.status_code == 200, response.text
                if response.json()["state"] in TERMINAL:
                    states[run_id] = response.json()["state"]
        assert time.monotonic() < deadline, f"runs not finished after 30 s: {set(run_ids) - set(states)}"
        time.sleep(0.1)
    return states


def test_two_replicas_and_a_gateway_serve_runs_and_stop_on_sigterm(start_cluster):
    start, remember = start_cluster
    cluster = start(replicas=2)
    cluster.wait_ready()
    text = cluster.output.read_text()
    assert "(given)" in text and "throwaway" not in text, text  # no PostgreSQL of its own
    for i, address in enumerate(cluster.runners, 1):
        assert f"runner-{i}: grpc://{address}" in text, text
    assert f"gateway: {cluster.url} " in text and "ipv4:" + ",".join(cluster.runners) in text, text

    with httpx.Client(base_url=cluster.url, timeout=20.0) as client:
        states = submit_and_finish(client, 6)
    assert set(states.values()) == {"SUCCEEDED"}, states
    for address in cluster.runners:
        assert readiness(address) == health_pb2.HealthCheckResponse.SERVING, address

    tree = remember(cluster)
    servers = sorted(args[2] for pid in tree if (args := cmdline(pid))[1:2] == ["-m"])
    assert servers == ["gateway", "runner_service", "runner_service"], servers

    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.wait_exit() == 0, cluster.log()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree if alive(pid)], f"left running: {[cmdline(p) for p in tree if alive(p)]}"
    for address in cluster.runners:
        assert readiness(address) is None, address
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{cluster.url}/health/live", timeout=2.0)


def test_a_runner_that_dies_stops_the_others(start_cluster):
    start, remember = start_cluster
    cluster = start(replicas=2)
    cluster.wait_ready()
    tree = remember(cluster)
    runner_pids = [pid for pid in tree if cmdline(pid)[1:3] == ["-m", "runner_service"]]
    assert len(runner_pids) == 2, [cmdline(p) for p in tree]
    os.kill(runner_pids[0], signal.SIGKILL)
    assert cluster.wait_exit() != 0, cluster.log()
    assert "a process exited" in cluster.log()
    deadline = time.monotonic() + 10  # the dead runner's forkserver and workers follow it
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree if alive(pid)], f"left running: {[cmdline(p) for p in tree if alive(p)]}"
