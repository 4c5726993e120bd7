"""Plugins: a tiny real distribution with an entry point in group runner_service.jobs,
built and installed with pip for this session, runs end to end in a real runner; an
unknown kind is INVALID_ARGUMENT at submission, listing the known kinds."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_service import jobs
from tests.conftest import detail_of, events_of, final_state, rich_status

DIST = "runner-test-echo-plugin"
MODULE = "runner_test_echo_plugin"
KIND = "test-echo"

PLUGIN_SOURCE = '''
"""A job kind from outside the runner: echoes its parameters."""
import os


def run(params, ctx):
    ctx.check_cancelled()
    ctx.log("echo plugin running")
    ctx.progress(1, 2, "half way")
    ctx.progress(2, 2, "done")
    return {"echo": params, "pid": os.getpid(), "module": __name__}
'''


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
    )


@pytest.fixture(scope="session")
def echo_plugin(tmp_path_factory):
    """Build and install the plugin distribution (no index, no build isolation);
    uninstalled at the end of the session."""
    source = tmp_path_factory.mktemp("plugin")
    (source / f"{MODULE}.py").write_text(PLUGIN_SOURCE)
    (source / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{DIST}"
        version = "1.0"

        [tool.setuptools]
        py-modules = ["{MODULE}"]

        [project.entry-points."runner_service.jobs"]
        {KIND} = "{MODULE}:run"
    """)
    )
    done = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    importlib.invalidate_caches()
    try:
        yield KIND
    finally:
        _pip("uninstall", "--yes", "--quiet", DIST)
        importlib.invalidate_caches()


def test_the_installed_plugin_is_discovered(echo_plugin):
    assert jobs.discover()[echo_plugin] == f"{MODULE}:run"
    assert importlib.metadata.distribution(DIST).version == "1.0"


async def test_a_plugin_run_end_to_end(echo_plugin, start_runner):
    # The runner discovers entry points when it is built: after the install.
    async with start_runner(workers=1) as running:
        request = pb.SubmitRunRequest()
        request.spec.plugin.kind = echo_plugin
        request.spec.plugin.parameters.update({"greeting": "hello", "n": 3})
        run = await running.stub.SubmitRun(request, timeout=5)
        assert run.kind == echo_plugin
        events = await events_of(running.stub, run.run_id)
        assert final_state(events) == pb.SUCCEEDED
        kinds = [e.WhichOneof("event") for e in events]
        assert "log" in kinds and "result" in kinds
        run = await running.stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
        result = json_format.MessageToDict(run.result)
        assert result["echo"] == {"greeting": "hello", "n": 3}
        assert result["module"] == MODULE
        assert result["pid"] != os.getpid(), "it ran in a worker process"
        assert (run.progress.done, run.progress.total) == (2, 2)


async def test_an_unknown_kind_is_invalid_argument_listing_the_known_ones(echo_plugin, start_runner):
    async with start_runner(workers=1) as running:
        request = pb.SubmitRunRequest()
        request.spec.plugin.kind = "no-such-kind"
        for call in ("SubmitRun", "ExecuteRun"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if call == "SubmitRun":
                    await running.stub.SubmitRun(request, timeout=5)
                else:
                    async for _ in running.stub.ExecuteRun(request, timeout=5):
                        pytest.fail("no event for a rejected run")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            bad = detail_of(rich_status(caught.value), error_details_pb2.BadRequest)
            (violation,) = bad.field_violations
            assert violation.field == "spec.plugin.kind"
            for known in ("batch", "compare", "diagnostic", "simulation", "sweep", echo_plugin):
                assert known in violation.description
        assert (await running.stub.ListRuns(pb.ListRunsRequest(), timeout=5)).runs == []
