"""Headers ↔ metadata and the status table over real HTTP, against a small echo gRPC server.

The runner neither reports the metadata it received nor answers every status code, so these
tests put a real ``grpc.aio`` server on loopback that implements ``RunnerService.GetRun`` by
echoing its metadata and answering the status code it is asked for.
"""

from __future__ import annotations

import base64
import contextlib

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status

from gateway import errors
from protos.runner.v1 import runner_pb2 as pb

ECHOED = ("authorization", "traceparent", "x-request-id", "tenant", "blob-bin")


async def _get_run(request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
    received = dict(context.invocation_metadata())
    echoed = [(f"echo-{key}", received[key]) for key in ECHOED if key in received]
    remaining = context.time_remaining()
    if remaining is not None:
        echoed.append(("echo-time-remaining", f"{remaining:.3f}"))
    await context.send_initial_metadata(echoed)
    context.set_trailing_metadata([("served-by", "echo")])
    wanted = int(received.get("want-code", "0"))
    if wanted:
        await context.abort_with_status(
            rpc_status.to_status(status_pb2.Status(code=wanted, message=f"asked for {wanted}"))
        )
    return pb.Run(run_id=request.run_id)


@contextlib.asynccontextmanager
async def echo_server():
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "runner.v1.RunnerService",
        {
            "GetRun": grpc.unary_unary_rpc_method_handler(
                _get_run, request_deserializer=pb.GetRunRequest.FromString, response_serializer=pb.Run.SerializeToString
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def echo_gateway(start_gateway):
    async with echo_server() as address, start_gateway(address) as gw:
        yield gw


async def test_headers_become_metadata_and_metadata_comes_back_as_headers(echo_gateway):
    response = await echo_gateway.client.get(
        "/v1/runs/r1",
        headers={
            "authorization": "Bearer t0k3n",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x-request-id": "rid-1",
            "grpc-metadata-tenant": "acme",
            "grpc-metadata-blob-bin": base64.b64encode(b"\x00\xff").decode(),
            "cookie": "never-forwarded",
        },
    )
    assert response.status_code == 200 and response.json()["runId"] == "r1"
    headers = response.headers
    assert headers["grpc-metadata-echo-authorization"] == "Bearer t0k3n"
    assert headers["grpc-metadata-echo-traceparent"].startswith("00-0af7")
    assert headers["grpc-metadata-echo-x-request-id"] == "rid-1" and headers["x-request-id"] == "rid-1"
    assert headers["grpc-metadata-echo-tenant"] == "acme"
    assert base64.b64decode(headers["grpc-metadata-echo-blob-bin"]) == b"\x00\xff"
    assert headers["grpc-metadata-served-by"] == "echo"  # trailing metadata
    assert "grpc-metadata-echo-cookie" not in headers


async def test_a_generated_request_id_reaches_the_upstream(echo_gateway):
    response = await echo_gateway.client.get("/v1/runs/r1")
    assert response.headers["grpc-metadata-echo-x-request-id"] == response.headers["x-request-id"]


async def test_every_grpc_code_maps_to_its_http_status_over_http(echo_gateway):
    for code in grpc.StatusCode:
        number = code.value[0]
        if number == 0:
            continue
        response = await echo_gateway.client.get("/v1/runs/r1", headers={"grpc-metadata-want-code": str(number)})
        assert response.status_code == errors.HTTP_STATUS[number], code
        assert response.json() == {"code": number, "message": f"asked for {number}"}
    # The rows of SPEC §3 that only a token check produces today.
    assert errors.HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED.value[0]] == 401
    assert errors.HTTP_STATUS[grpc.StatusCode.PERMISSION_DENIED.value[0]] == 403


async def test_grpc_timeout_is_cut_to_the_maximum(start_gateway):
    async with echo_server() as address, start_gateway(address, max_grpc_timeout_s=30) as gw:
        # gRPC rounds a deadline up when it sends it: up to a second more reaches the server.
        for header, low, high in (("99999999H", 20, 31), ("1H", 20, 31), ("5S", 1, 6), ("31S", 20, 31)):
            response = await gw.client.get("/v1/runs/r1", headers={"grpc-timeout": header})
            assert response.status_code == 200, (header, response.text)  # was an immediate 504 for 99999999H
            assert low < float(response.headers["grpc-metadata-echo-time-remaining"]) <= high, header
        for malformed in ("123456789S", "-1S", "5s ms", "5X"):
            response = await gw.client.get("/v1/runs/r1", headers={"grpc-timeout": malformed})
            assert response.status_code == 400 and "Grpc-Timeout" in response.json()["message"], malformed


async def test_the_default_maximum_of_a_grpc_timeout_is_300_s(echo_gateway):
    response = await echo_gateway.client.get("/v1/runs/r1", headers={"grpc-timeout": "99999999H"})
    assert response.status_code == 200
    assert 250 < float(response.headers["grpc-metadata-echo-time-remaining"]) <= 301


async def test_too_much_metadata_is_431_before_the_upstream_call(echo_gateway):
    # 20 KB of Grpc-Metadata-*: within the HTTP head limits, past what gRPC takes (the runner
    # answered RESOURCE_EXHAUSTED, which became a 429 that invited a retry).
    big = {f"grpc-metadata-k{i}": "v" * 1000 for i in range(20)}
    response = await echo_gateway.client.get("/v1/runs/r1", headers=big)
    assert response.status_code == 431
    body = response.json()
    assert body["code"] == 8 and "more than the limit of 6144" in body["message"]
    assert "grpc-metadata-served-by" not in response.headers  # the echo server never saw it
    # Just under the limit goes through.
    fits = {f"grpc-metadata-k{i}": "v" * 1000 for i in range(5)}
    response = await echo_gateway.client.get("/v1/runs/r1", headers=fits)
    assert response.status_code == 200 and response.headers["grpc-metadata-echo-x-request-id"]
