"""Fixtures of the client tests: runner processes that can be killed and restarted."""

from __future__ import annotations

import pytest

from tests.client.processes import RunnerProcesses


@pytest.fixture
def processes(tmp_path):
    started = RunnerProcesses(tmp_path)
    try:
        yield started
    finally:
        started.close()
