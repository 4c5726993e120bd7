"""Requests a browser page or a careless client could send: bodies that are not declared JSON
(415, no cross-site form posts) and JSON objects with a key given twice (400). Over real HTTP,
in front of a real runner, which shows what was (not) created."""

from __future__ import annotations

import json

from protos.runner.v1 import runner_pb2 as pb
from tests.gateway.test_http import details_by_type, diagnostic_body, free_port


async def runs_stored(runner) -> int:
    return len((await runner.stub.ListRuns(pb.ListRunsRequest(page_size=100))).runs)


async def test_a_post_body_not_declared_json_is_415(stack):
    runner, gw = stack
    body = json.dumps(diagnostic_body(ticks=1)).encode()
    for content_type in (
        "text/plain",  # what a cross-site <form enctype="text/plain"> or fetch() sends without asking
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/json-patch+json",
        "",
    ):
        response = await gw.client.post("/v1/runs", content=body, headers={"content-type": content_type})
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["code"] == 3 and "application/json" in response.json()["message"]
    # No Content-Type at all, with a body.
    response = await gw.client.post("/v1/runs", content=body)
    assert response.status_code == 415
    assert response.json()["message"] == "the request body must be JSON, sent with Content-Type: application/json"
    # Refused before the body is read: a body over the size limit still gets 415, not 413.
    big = b"x" * (2 * 1024 * 1024)
    response = await gw.client.post("/v1/runs", content=big, headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert await runs_stored(runner) == 0

    accepted = ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8")
    for content_type in accepted:
        response = await gw.client.post("/v1/runs", content=body, headers={"content-type": content_type})
        assert response.status_code == 200, (content_type, response.text)
    assert await runs_stored(runner) == len(accepted)


async def test_a_post_without_body_needs_no_content_type(stack):
    """curl -X POST .../v1/runs/{id}:cancel sends neither a body nor a Content-Type: that is the
    empty request message. A declared non-JSON type is refused even with no body."""
    _, gw = stack
    run_id = (await gw.client.post("/v1/runs", json=diagnostic_body(ticks=100, tickDuration="0.05s"))).json()["runId"]
    response = await gw.client.post(f"/v1/runs/{run_id}:cancel", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    response = await gw.client.post(f"/v1/runs/{run_id}:cancel")
    assert response.status_code == 200 and response.json()["cancelRequested"] is True
    response = await gw.client.post(f"/v1/runs/{run_id}:cancel", content=b"{}", headers={"content-type": ""})
    assert response.status_code == 415


async def test_a_json_key_given_twice_is_400(start_gateway):
    # Nothing listens upstream: a 400 proves the request never left the gateway (else 503).
    async with start_gateway(f"127.0.0.1:{free_port()}") as gw:
        switching = (
            b'{"spec": {"diagnostic": {"ticks": 1}}, "spec": {"simulation": {"scenario": "duel", "maxTicks": 5}}}'
        )
        response = await gw.client.post("/v1/runs", content=switching, headers={"content-type": "application/json"})
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == 3 and body["message"] == 'the body has the key "spec" twice in one JSON object'
        assert details_by_type(body)["BadRequest"]["fieldViolations"][0]["description"] == body["message"]
        for nested in (
            b'{"spec": {"diagnostic": {"ticks": 1, "ticks": 999999}}}',
            b'{"spec": {"simulation": {"scenario": "duel", "configOverrides": {"a": 1, "a": 2}}}}',
            b'{"requestId": "a", "labels": {"k": "1"}, "requestId": "b"}',
        ):
            response = await gw.client.post("/v1/runs", content=nested, headers={"content-type": "application/json"})
            assert response.status_code == 400 and "twice" in response.json()["message"], nested
        # The same keys in different objects are fine (and reach the upstream: 503 here).
        fine = b'{"spec": {"diagnostic": {"ticks": 1}}, "labels": {"ticks": "1"}}'
        response = await gw.client.post("/v1/runs", content=fine, headers={"content-type": "application/json"})
        assert response.status_code == 503
