"""A bounded schemathesis run (its own process) against the live gateway and a real runner."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway import rules
from protos.runner.v1 import runner_pb2 as pb

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.timeout(90)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack, tmp_path):
    _, gw = stack
    # RPCs the runner answers UNIMPLEMENTED today are 501 by design (test_http checks that);
    # they are probed here rather than listed, so they join the run once implemented.
    excluded = []
    for rule in rules.load([pb.DESCRIPTOR]):
        if rule.variables or rule.server_streaming:
            continue
        probe = await gw.client.request(rule.verb, rule.template, json={} if rule.body else None)
        if probe.status_code == 501:
            excluded += ["--exclude-operation-id", f"{rule.service.rsplit('.', 1)[1]}_{rule.method}"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{gw.url}/openapi.json",
        "--checks",
        CHECKS,
        # Examples and fuzzing only: schemathesis 4.32's coverage phase needs minutes to build
        # cases for SubmitRunRequest and hits an internal error on others.
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        "20",
        "--max-time",
        "15",
        "--seed",
        "1",
        "--workers",
        "2",
        "--request-timeout",
        "15",
        # Bound every call, streams included (an ExecuteRun of a random long run ends at 2 s).
        "--header",
        "Grpc-Timeout: 2S",
        *excluded,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 70)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "passed" in text
