"""The `runner` command in a real pseudo-terminal (pexpect), against a runner process."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pexpect
import pytest

from tests.client.conftest import processes  # noqa: F401 - a fixture, for tests that restart their runner
from tests.client.processes import RunnerProc, RunnerProcesses

#: The console script installed next to the interpreter running the tests (scripts/install).
RUNNER_CLI = pathlib.Path(sys.executable).parent / "runner"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
ADMIN_TOKEN = "cli-test-token"


def plain(text: str) -> str:
    """Terminal output without colours and cursor movements, with \\n line ends."""
    return ANSI.sub("", text).replace("\r\n", "\n")


@dataclasses.dataclass
class Cli:
    runner: RunnerProc

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        env.update(RUNNER_TARGET=self.runner.address, TERM="xterm-256color", COLUMNS="120", LINES="40")
        # gRPC core's own log lines go to stderr, which the pseudo-terminal mixes in.
        env["GRPC_VERBOSITY"] = "NONE"
        env.pop("NO_COLOR", None)
        env.update(extra)
        return env

    def spawn(self, *args: str, timeout_s: float = 30, **env: str) -> pexpect.spawn:
        assert RUNNER_CLI.exists(), f"{RUNNER_CLI} is missing: run scripts/install --dev"
        return pexpect.spawn(
            str(RUNNER_CLI),
            list(args),
            env=self.env(**env),
            timeout=timeout_s,
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(40, 120),
        )

    def run_piped(self, *args: str, timeout_s: float = 30, **env: str) -> tuple[str, int]:
        """Run to the end as a script would, stdout in a pipe: (stdout, exit status).
        Standard error (where gRPC core may write a line of its own) is kept apart."""
        done = subprocess.run(
            [str(RUNNER_CLI), *args], env=self.env(**env), capture_output=True, text=True, timeout=timeout_s
        )
        return done.stdout, done.returncode

    def run(self, *args: str, timeout_s: float = 30, **env: str) -> tuple[str, int]:
        """Run to the end in a pseudo-terminal: (output without escapes, exit status)."""
        child = self.spawn(*args, timeout_s=timeout_s, **env)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
        return plain(child.before), child.exitstatus


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """One runner for a module's CLI tests: three workers, a long cancel grace (a
    run ignoring its cancellation keeps running for 30 s), an admin token."""
    started = RunnerProcesses(tmp_path_factory.mktemp("cli-runner"))
    try:
        runner = started.start("runner", RUNNER_WORKERS="3", RUNNER_CANCEL_GRACE_S="30", RUNNER_ADMIN_TOKEN=ADMIN_TOKEN)
        yield Cli(runner)
    finally:
        started.close()
