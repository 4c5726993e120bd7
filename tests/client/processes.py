"""Runner processes for the client and CLI tests: started on a chosen (or free)
port, so a runner can be killed and started again where its clients look for it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import runner_env
from tests.e2e.test_process import REPO, alive, descendants, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclasses.dataclass
class RunnerProc:
    name: str
    proc: subprocess.Popen
    port: int
    stderr: pathlib.Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


def wait_serving(address: str, proc: subprocess.Popen, log: pathlib.Path, timeout_s: float = 30.0) -> None:
    """Block until the runner at `address` answers readiness SERVING (bounded)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            assert proc.poll() is None, f"the runner exited with {proc.returncode}:\n{tail}"
            try:
                if health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=1).status == SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"the runner at {address} never became SERVING:\n{tail}"
            time.sleep(0.05)


class RunnerProcesses:
    """Starts `python -m runner_service` processes; `close()` kills whatever is left
    of them and of their worker processes (by pid)."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[RunnerProc] = []
        self._pids: set[int] = set()

    def start(self, name: str, *, port: int | None = None, db: pathlib.Path | None = None, **env: str) -> RunnerProc:
        port = port or free_port()
        database = db if db is not None else self.tmp_path / f"{name}.db"
        audit = str(self.tmp_path / f"{name}-audit.log")
        environment = runner_env(str(database), port, **{"RUNNER_AUDIT_LOG_PATH": audit, **env})
        n = len(self.started)
        stderr = self.tmp_path / f"{name}-{n}.err"
        with open(self.tmp_path / f"{name}-{n}.out", "wb") as out, open(stderr, "wb") as err:
            command = [sys.executable, "-m", "runner_service"]
            proc = subprocess.Popen(command, cwd=REPO, env=environment, stdout=out, stderr=err)
        running = RunnerProc(name, proc, port, stderr)
        self.started.append(running)
        wait_serving(running.address, proc, stderr)
        self._pids |= descendants(proc.pid)
        return running

    def kill(self, running: RunnerProc) -> None:
        """kill -9, and wait until it is gone (its workers exit with it)."""
        self._pids |= descendants(running.proc.pid)
        running.proc.kill()
        running.proc.wait(10)

    def terminate(self, running: RunnerProc, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful drain) and wait for the exit; returns the exit code."""
        self._pids |= descendants(running.proc.pid)
        running.proc.send_signal(signal.SIGTERM)
        return running.proc.wait(timeout_s)

    def close(self) -> None:
        for running in self.started:
            if running.proc.poll() is None:
                self._pids |= descendants(running.proc.pid)
                running.proc.kill()
            running.proc.wait(10)
        for pid in self._pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
