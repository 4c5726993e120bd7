"""The gateway's /metrics, scraped over HTTP from a real gateway in front of a real runner:
requests are counted by route template (never the raw path), method and status, and timed;
streams open are a gauge."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, wait_for_state


async def scrape(gateway) -> dict[tuple[str, frozenset], float]:
    port = gateway.app.metrics_server.port
    async with httpx.AsyncClient(timeout=10.0) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def requests(samples, route: str, method: str, status: int) -> float:
    labels = frozenset({"route": route, "method": method, "status": str(status)}.items())
    return samples.get(("gateway_http_requests_total", labels), 0.0)


def streams_open(samples, route: str) -> float:
    return samples.get(("gateway_streams_open", frozenset({"route": route}.items())), 0.0)


async def test_requests_are_counted_by_route_template_method_and_status(stack):
    _runner, gateway = stack
    http = gateway.client
    assert (await http.get("/health/live")).status_code == 200  # the lifespan has started
    created = await http.post("/v1/runs", json={"spec": {"diagnostic": {"ticks": 0}}})
    assert created.status_code == 200
    run_id = created.json()["runId"]
    assert (await http.get(f"/v1/runs/{run_id}")).status_code == 200
    assert (await http.get("/v1/runs/no-such-run")).status_code == 404
    assert (await http.get(f"/nothing/here/{run_id}")).status_code == 404
    assert (await http.request("PROPFIND", "/v1/runs")).status_code == 405
    events = await http.get(f"/v1/runs/{run_id}/events")
    assert events.status_code == 200 and json.loads(events.text.splitlines()[-1])["result"]

    samples = await scrape(gateway)
    assert requests(samples, "/v1/runs", "POST", 200) == 1
    assert requests(samples, "/v1/runs/{run_id}", "GET", 200) == 1
    assert requests(samples, "/v1/runs/{run_id}", "GET", 404) == 1
    assert requests(samples, "/v1/runs/{run_id}/events", "GET", 200) == 1
    assert requests(samples, "/health/live", "GET", 200) == 1
    assert requests(samples, "unmatched", "GET", 404) == 1
    assert requests(samples, "/v1/runs", "OTHER", 405) == 1
    # Neither a raw path nor a client's own method becomes a label value.
    labels = [dict(key[1]) for key in samples if key[0] == "gateway_http_requests_total"]
    assert not [found for found in labels if run_id in found["route"] or found["method"] == "PROPFIND"]
    assert {found["method"] for found in labels} <= {"GET", "POST", "OTHER"}
    duration = frozenset({"route": "/v1/runs", "method": "POST"}.items())
    assert samples[("gateway_http_request_duration_seconds_count", duration)] == 1
    assert samples[("gateway_http_request_duration_seconds_sum", duration)] > 0


async def test_an_open_stream_is_a_gauge_until_its_end(stack):
    runner, gateway = stack
    http = gateway.client
    assert (await http.get("/health/live")).status_code == 200
    run = await runner.stub.SubmitRun(diagnostic(ticks=10_000, tick_s=0.01), timeout=5)
    await wait_for_state(runner.stub, run.run_id, pb.RUNNING)
    route = "/v1/runs/{run_id}/events"
    async with http.stream("GET", f"/v1/runs/{run.run_id}/events") as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        await anext(lines)
        assert streams_open(await scrape(gateway), route) == 1
        await runner.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        async for _line in lines:
            pass
    deadline = time.monotonic() + 10
    while streams_open(samples := await scrape(gateway), route) != 0:
        assert time.monotonic() < deadline, "the stream is still counted open"
        await asyncio.sleep(0.02)
    assert requests(samples, route, "GET", 200) == 1


async def test_metrics_can_be_off_and_the_port_is_released_at_shutdown(start_runner, start_gateway):
    async with start_runner() as runner:
        async with start_gateway(runner.address, metrics_listen="") as gateway:
            assert (await gateway.client.get("/health/live")).status_code == 200
            assert gateway.app.metrics is None and gateway.app.metrics_server is None
        async with start_gateway(runner.address) as gateway:
            assert (await gateway.client.get("/health/live")).status_code == 200
            port = gateway.app.metrics_server.port
        assert gateway.app.metrics_server is None
        async with httpx.AsyncClient(timeout=2.0) as client:
            try:
                await client.get(f"http://127.0.0.1:{port}/metrics")
            except httpx.ConnectError:
                pass
            else:
                raise AssertionError("the metrics port still answers after the gateway stopped")
