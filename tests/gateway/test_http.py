"""The gateway over real HTTP (uvicorn on loopback) in front of a real runner (gRPC on loopback)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import grpc
from google.api import annotations_pb2
from openapi_spec_validator import validate as validate_openapi

from gateway import errors, rules, transcode
from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import events_of, final_state


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def diagnostic_body(**spec) -> dict:
    return {"spec": {"diagnostic": spec}}


def details_by_type(body: dict) -> dict:
    return {d["@type"].rsplit(".", 1)[-1]: d for d in body.get("details", [])}


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


def sse_events(text: str) -> list[dict]:
    """SSE blocks as dicts of their fields; comment lines under the key ":"."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields: dict = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                fields[":"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        out.append(fields)
    return out


async def wait_for_state(runner, run_id: str, state: int, timeout: float = 10.0) -> pb.Run:
    """Follow the run's events until it reaches ``state``; the run as then stored."""

    async def follow():
        async for event in runner.stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
            if event.WhichOneof("event") == "state_change" and event.state_change.state == state:
                return

    await asyncio.wait_for(follow(), timeout)
    return await runner.stub.GetRun(pb.GetRunRequest(run_id=run_id))


# ------------------------------------------------------------------ every RPC


async def test_every_rpc_in_the_descriptors_answers_on_its_rest_route(stack):
    """Each annotated RPC's REST route reaches the runner and answers what the runner's gRPC
    answer maps to (UNIMPLEMENTED RPCs: 501 today)."""
    runner, gw = stack
    created = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1))
    assert created.status_code == 200
    run_id = created.json()["runId"]
    bodies = {"SubmitRun": diagnostic_body(ticks=1), "ExecuteRun": diagnostic_body(ticks=1)}
    seen = set()
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            http = method.GetOptions().Extensions[annotations_pb2.http]
            verb = http.WhichOneof("pattern")
            rule = next(
                r for r in rules.load([pb.DESCRIPTOR]) if (r.service, r.method) == (service.full_name, method.name)
            )
            path = re.sub(r"\{[^}]*\}", run_id, getattr(http, verb))
            body = bodies.get(method.name, {}) if http.body else None
            # What the runner says to the same request over gRPC, mapped through the one table.
            message = transcode.build_request(
                rule, dict.fromkeys(rule.variables, run_id), [], json.dumps(body or {}).encode()
            )
            expected = await _grpc_status(runner, rule, message)
            response = await gw.client.request(verb.upper(), path, json=body)
            assert response.status_code == expected, (method.full_name, response.text)
            if response.status_code == 200 and rule.server_streaming:
                lines = ndjson(response.text)
                assert lines and all("result" in line for line in lines)
            elif response.status_code != 200:
                assert response.json()["code"] != 0 and response.json()["message"]
            seen.add(method.full_name)
    assert seen == {f"{rule.service}.{rule.method}" for rule in rules.load([pb.DESCRIPTOR])}


async def _grpc_status(runner, rule, message) -> int:
    factory = runner.channel.unary_stream if rule.server_streaming else runner.channel.unary_unary
    call = factory(
        rule.grpc_path,
        request_serializer=type(message).SerializeToString,
        response_deserializer=rule.output_type.FromString,
    )
    try:
        if rule.server_streaming:
            async for _ in call(message, timeout=20):
                pass
        else:
            await call(message, timeout=20)
    except grpc.aio.AioRpcError as err:
        return errors.http_status_of(err.code().value[0])
    return 200


# ------------------------------------------------------------------ SPEC §3 rows


async def test_400_field_violations_come_from_the_validator_before_any_upstream_call(start_gateway):
    # Nothing listens upstream: a 400 proves the request never left the gateway (else 503).
    async with start_gateway(f"127.0.0.1:{free_port()}") as gw:
        response = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=-1, failAtTick=2_000_000))
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == 3
        violations = details_by_type(body)["BadRequest"]["fieldViolations"]
        assert {v["field"] for v in violations} == {"spec.diagnostic.ticks", "spec.diagnostic.fail_at_tick"}

        response = await gw.client.post("/v1/runs", json={})
        assert response.status_code == 400 and "spec" in response.text

        response = await gw.client.post("/v1/runs", json={"spec": {"diagnostic": {}}, "surprise": 1})
        assert response.status_code == 400
        assert details_by_type(response.json())["BadRequest"]["fieldViolations"][0]["field"] == "surprise"

        response = await gw.client.get("/v1/runs", params={"page_size": "600"})
        assert response.status_code == 400 and "page_size" in response.text
        response = await gw.client.get("/v1/runs", params={"no_such_param": "1"})
        assert response.status_code == 400
        response = await gw.client.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400
        response = await gw.client.get("/v1/runs", headers={"grpc-timeout": "soon"})
        assert response.status_code == 400 and "Grpc-Timeout" in response.json()["message"]
        # ... and the same gateway does answer 503 once a request gets past validation.
        assert (await gw.client.get("/v1/runs")).status_code == 503


async def test_404_unknown_run(stack):
    _, gw = stack
    for method, path in [("GET", "/v1/runs/nope"), ("GET", "/v1/runs/nope/events"), ("POST", "/v1/runs/nope:cancel")]:
        response = await gw.client.request(method, path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["code"] == 5 and "nope" in response.json()["message"]
    response = await gw.client.get("/v1/no/such/route")
    assert response.status_code == 404 and response.json()["code"] == 5
    response = await gw.client.delete("/v1/runs")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"


async def test_429_queue_full_with_retry_after(start_runner, start_gateway):
    async with start_runner(workers=1, max_queued=1) as runner, start_gateway(runner.address) as gw:
        long = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1, tickDuration="30s"))
        assert long.status_code == 200
        await wait_for_state(runner, long.json()["runId"], pb.RUNNING)
        queued = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1))
        assert queued.status_code == 200 and queued.json()["state"] == "QUEUED"
        full = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1))
        assert full.status_code == 429, full.text
        body = full.json()
        assert body["code"] == 8 and body["message"].startswith("Job queue full.")
        details = details_by_type(body)
        assert details["ErrorInfo"]["reason"] == "QUEUE_FULL"
        assert int(full.headers["retry-after"]) >= 1 and "RetryInfo" in details
        # A stream refused at admission gets the same HTTP status, not a 200 with an error line.
        streamed = await gw.client.post("/v1/runs:execute", json=diagnostic_body(ticks=1))
        assert streamed.status_code == 429 and "retry-after" in streamed.headers
        await runner.stub.CancelRun(pb.CancelRunRequest(run_id=long.json()["runId"]))


async def test_503_when_the_runner_is_unreachable_fast_and_clear(start_gateway):
    address = f"127.0.0.1:{free_port()}"
    async with start_gateway(address) as gw:
        started = time.monotonic()
        for method, path in [("GET", "/v1/runs/x"), ("GET", "/v1/runs/x/events"), ("POST", "/v1/runs:execute")]:
            body = diagnostic_body(ticks=1) if method == "POST" else None
            response = await gw.client.request(method, path, json=body)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == 14 and address in response.json()["message"]
        assert time.monotonic() - started < 5
        assert (await gw.client.get("/health/ready")).status_code == 503
        assert (await gw.client.get("/health/live")).status_code == 200


async def test_504_when_the_deadline_passes(stack):
    runner, gw = stack
    # A watch with nothing to deliver before its deadline: 504 before the stream starts.
    run = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1, tickDuration="30s"))
    run_id = run.json()["runId"]
    response = await gw.client.get(
        f"/v1/runs/{run_id}/events", params={"after_seq": 1000}, headers={"grpc-timeout": "300m"}
    )
    assert response.status_code == 504 and response.json()["code"] == 4
    await runner.stub.CancelRun(pb.CancelRunRequest(run_id=run_id))


async def test_deadline_mid_stream_is_the_last_ndjson_line_and_ends_the_executed_run(stack):
    runner, gw = stack
    response = await gw.client.post(
        "/v1/runs:execute", json=diagnostic_body(ticks=100, tickDuration="0.1s"), headers={"grpc-timeout": "1500m"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response.text)
    assert all("result" in line for line in lines[:-1]) and lines[-1]["error"]["code"] == 4
    run = await wait_for_state(runner, lines[0]["result"]["runId"], pb.DEADLINE_EXCEEDED)
    assert run.state == pb.DEADLINE_EXCEEDED


async def test_413_body_over_the_limit(stack):
    _, gw = stack
    limit = 1024 * 1024
    big = b'{"requestId": "' + b"x" * limit + b'"}'
    response = await gw.client.post("/v1/runs", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == 8

    async def chunked():  # no Content-Length: the gateway counts the bytes as they come
        for _ in range(20):
            yield b" " * (128 * 1024)

    response = await gw.client.post("/v1/runs", content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    # Just under the limit is read (and then refused for its content, not its size).
    response = await gw.client.post(
        "/v1/runs", content=b" " * (limit - 10) + b"{}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


# ------------------------------------------------------------------ streams


async def test_ndjson_execute_carries_every_event_in_order_and_ends_after_the_terminal_one(stack):
    runner, gw = stack
    response = await gw.client.post("/v1/runs:execute", json=diagnostic_body(ticks=3, logEvery=1))
    assert response.status_code == 200
    events = [line["result"] for line in ndjson(response.text)]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(set(seqs))
    assert events[-1]["stateChange"]["state"] == "SUCCEEDED"
    assert [e["log"]["message"] for e in events if "log" in e] == ["tick 1", "tick 2", "tick 3"]
    # Everything but conflatable progress matches the runner's own replay.
    stored = await events_of(runner.stub, events[0]["runId"])
    kept = [e.seq for e in stored if e.WhichOneof("event") != "progress"]
    assert [int(e["seq"]) for e in events if "progress" not in e] == kept


async def test_sse_watch_carries_every_event_and_last_event_id_resumes(stack):
    runner, gw = stack
    run = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=4, logEvery=1, tickDuration="0.02s"))
    run_id = run.json()["runId"]
    sse = {"accept": "text/event-stream"}
    response = await gw.client.get(f"/v1/runs/{run_id}/events", headers=sse)
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    blocks = sse_events(response.text)
    data = [json.loads(b["data"]) for b in blocks]
    assert [int(b["id"]) for b in blocks] == [int(d["seq"]) for d in data]
    assert [int(d["seq"]) for d in data] == sorted({int(d["seq"]) for d in data})
    assert data[-1]["stateChange"]["state"] == "SUCCEEDED"
    assert final_state(await events_of(runner.stub, run_id)) == pb.SUCCEEDED

    resume_at = int(blocks[3]["id"])
    resumed = sse_events(
        (await gw.client.get(f"/v1/runs/{run_id}/events", headers={**sse, "last-event-id": str(resume_at)})).text
    )
    assert resumed and all(int(b["id"]) > resume_at for b in resumed)
    non_progress = [b["id"] for b in blocks if int(b["id"]) > resume_at and "progress" not in json.loads(b["data"])]
    assert [b["id"] for b in resumed if "progress" not in json.loads(b["data"])] == non_progress
    assert resumed[-1] == blocks[-1]


async def test_sse_keep_alive_while_idle_and_error_event_at_the_deadline(stack, start_gateway):
    runner, _ = stack
    async with start_gateway(runner.address, keepalive_s=0.2) as gw:
        run = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1, tickDuration="30s"))
        run_id = run.json()["runId"]
        response = await gw.client.get(
            f"/v1/runs/{run_id}/events", headers={"accept": "text/event-stream", "grpc-timeout": "1200m"}
        )
        assert response.status_code == 200
        blocks = sse_events(response.text)
        assert any(b.get(":") == "keep-alive" for b in blocks)
        assert blocks[-1]["event"] == "error" and json.loads(blocks[-1]["data"])["code"] == 4
        # A watcher leaving (here: its deadline) never cancels the run.
        assert (await runner.stub.GetRun(pb.GetRunRequest(run_id=run_id))).state == pb.RUNNING
        await runner.stub.CancelRun(pb.CancelRunRequest(run_id=run_id))


async def test_client_disconnect_from_execute_cancels_the_run_within_a_second(stack):
    runner, gw = stack
    async with gw.client.stream(
        "POST", "/v1/runs:execute", json=diagnostic_body(ticks=600, tickDuration="0.1s")
    ) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = json.loads(await anext(lines))
        run_id = first["result"]["runId"]
        async for line in lines:  # until it runs
            if json.loads(line)["result"].get("stateChange", {}).get("state") == "RUNNING":
                break
    left = time.monotonic()  # leaving the block closed the connection mid-stream
    run = await wait_for_state(runner, run_id, pb.CANCELLED, timeout=1.0)
    assert run.state == pb.CANCELLED and time.monotonic() - left < 1.0


# ------------------------------------------------------------------ headers, health, OpenAPI


async def test_request_id_is_echoed_or_generated(stack):
    _, gw = stack
    response = await gw.client.get("/v1/runs", headers={"x-request-id": "req-123"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-123"
    generated = (await gw.client.get("/v1/runs/nope")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


async def test_health_ready_follows_the_runner_and_live_never_asks_it(start_runner, start_gateway):
    port = free_port()

    async def ready_status_becomes(expected: int, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            status = (await gw.client.get("/health/ready")).status_code
            if status == expected or time.monotonic() > deadline:
                assert status == expected
                return
            await asyncio.sleep(0.1)  # polling an external state: there is no event to wait on

    async with start_gateway(f"127.0.0.1:{port}", reconnect_backoff_max_s=0.5) as gw:
        async with start_runner(listen=f"127.0.0.1:{port}"):
            await ready_status_becomes(200, 10)
            health = await gw.client.get("/health")
            assert health.status_code == 200 and health.json()["ready"]["status"] == "SERVING"
        await ready_status_becomes(503, 5)
        assert (await gw.client.get("/health/live")).status_code == 200
        assert (await gw.client.get("/health")).json()["live"]["status"] == "SERVING"
        async with start_runner(listen=f"127.0.0.1:{port}"):
            await ready_status_becomes(200, 10)
            assert (await gw.client.get("/health/live")).status_code == 200


async def test_openapi_json_passes_the_validator(stack):
    _, gw = stack
    response = await gw.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate_openapi(document)
    assert "/v1/runs/{run_id}:cancel" in document["paths"]


async def test_401_and_403_from_the_runner_admin_token(start_runner, start_gateway, tmp_path):
    audit = tmp_path / "audit.log"
    async with (
        start_runner(admin_token="s3cret", audit_log_path=str(audit)) as runner,
        start_gateway(runner.address) as gw,
    ):
        absent = await gw.client.get("/v1/admin/status")
        assert absent.status_code == 401 and absent.json()["code"] == 16
        wrong = await gw.client.get("/v1/admin/status", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["code"] == 7
        refused = await gw.client.post(
            "/v1/admin/workers:restart", json={"reason": "x"}, headers={"authorization": "Bearer nope"}
        )
        assert refused.status_code == 403
        good = await gw.client.get("/v1/admin/status", headers={"authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["watchdog"]["policyState"] == "ALLOWED"
        restarted = await gw.client.post(
            "/v1/admin/workers:restart", json={"reason": "from REST"}, headers={"authorization": "Bearer s3cret"}
        )
        assert restarted.status_code == 200, restarted.text
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any("from REST" in json.dumps(entry) for entry in entries)


async def test_summary_over_rest(stack):
    _, gw = stack
    created = await gw.client.post("/v1/runs", json=diagnostic_body(ticks=1))
    assert created.status_code == 200
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        answer = await gw.client.get("/v1/summary", params={"recentLimit": 5})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if any(c["state"] == "SUCCEEDED" for c in body.get("counts", [])):
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)
    assert body["recentRuns"][0]["runId"] == created.json()["runId"]
    assert body["cache"] in ("CACHE_HIT", "CACHE_STALE", "CACHE_MISS")
    assert {s["name"] for s in body["sections"]} == {"counts", "recent_runs", "recent_progress"}
