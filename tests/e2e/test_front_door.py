"""The README's front door on a fresh clone: `scripts/run` with only the system's own Python
(Debian's /usr/bin/python3, "externally managed") first on PATH creates the project's .venv,
installs into it, and starts a runner that answers grpc.health.v1 and a gateway whose
/health/ready answers 200; SIGTERM stops both.

It creates a virtual environment and installs the runtime dependencies with the machine's
pip configuration: about a minute, so it is one test."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = pathlib.Path("/usr/bin/python3")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT_S = 420.0  # creating .venv and installing is about 20-60 s; slow indexes take longer
STOP_TIMEOUT_S = 30.0


def _skip_reason() -> str | None:
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing: this test runs scripts/run on the system's own Python"
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import venv, ensurepip"], capture_output=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} has no venv/ensurepip module (Debian: apt-get install python3-venv)"
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return "needs git and a git checkout of the project to clone"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(raw[raw.rindex(")") + 2 :].split()[1])
        found.setdefault(parent, []).append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"


def runner_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def gateway_ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health/ready", timeout=2.0) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.mark.timeout(START_TIMEOUT_S + STOP_TIMEOUT_S + 120)
def test_scripts_run_on_a_fresh_clone_with_the_system_python(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    runner_port, gateway_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RUNNER_", "GATEWAY_", "PYTHON")) and k not in ("VIRTUAL_ENV", "PYTEST_CURRENT_TEST")
    }
    env.update(
        PATH=SYSTEM_PATH,
        RUNNER_LISTEN=f"127.0.0.1:{runner_port}",
        GATEWAY_LISTEN=f"127.0.0.1:{gateway_port}",
        RUNNER_METRICS_LISTEN="127.0.0.1:0",
        GATEWAY_METRICS_LISTEN="127.0.0.1:0",
        GRPC_VERBOSITY="ERROR",
    )
    output = tmp_path / "run.out"
    started = time.monotonic()
    with output.open("wb") as out:
        proc = subprocess.Popen(
            ["scripts/run"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = started + START_TIMEOUT_S
        serving = ready = False
        while time.monotonic() < deadline and not (serving and ready):
            assert proc.poll() is None, f"scripts/run exited with {proc.returncode}:\n{output.read_text()[-5000:]}"
            serving = serving or runner_serving(f"127.0.0.1:{runner_port}")
            ready = serving and gateway_ready(f"http://127.0.0.1:{gateway_port}")
            if not (serving and ready):
                time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert serving and ready, f"not up after {elapsed:.0f} s:\n{output.read_text()[-5000:]}"
        print(f"fresh clone: runner SERVING and gateway ready after {elapsed:.1f} s")

        # Everything ran from the clone's own .venv, made from the system's Python.
        assert "home = /usr/bin" in (clone / ".venv" / "pyvenv.cfg").read_text()
        processes = {pid: cmdline(pid) for pid in descendants(proc.pid)}
        servers = {
            pid: args for pid, args in processes.items() if args[1:3] in (["-m", "runner_service"], ["-m", "gateway"])
        }
        assert sorted(args[2] for args in servers.values()) == ["gateway", "runner_service"], processes
        system_python = SYSTEM_PYTHON.resolve()
        for pid, args in servers.items():
            assert args[0] == ".venv/bin/python", args
            assert pathlib.Path(os.readlink(f"/proc/{pid}/cwd")) == clone.resolve()
            assert pathlib.Path(os.readlink(f"/proc/{pid}/exe")) == system_python
        text = output.read_text()
        assert "creating .venv" in text and "installing runtime dependencies into .venv" in text, text[-3000:]
        assert "externally-managed-environment" not in text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 0, output.read_text()[-5000:]
        stop_deadline = time.monotonic() + 5.0
        while any(alive(pid) for pid in processes) and time.monotonic() < stop_deadline:
            time.sleep(0.1)
        left = {pid: processes[pid] for pid in processes if alive(pid)}
        assert not left, f"still running after scripts/run stopped: {left}"
        assert not runner_serving(f"127.0.0.1:{runner_port}")
        assert not gateway_ready(f"http://127.0.0.1:{gateway_port}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(clone, ignore_errors=True)
