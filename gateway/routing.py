"""One Starlette route per HTTP rule: read, transcode, validate, call upstream, answer.

:class:`RpcRoute` plugs the schema's path templates (compiled by :mod:`gateway.rules`) into
Starlette's router: a path that matches with another verb is a partial match, so the router
answers 405 with ``Allow`` only when no rule takes the verb.

Order of work for every request, so nothing reaches the runner that the gateway can refuse:
body size (413), transcoding (400), schema limits with the runner's own validator (400 with
BadRequest), headers (400), and only then the upstream call.
"""
from __future__ import annotations

import logging
from typing import Sequence

import grpc
from google.rpc import code_pb2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from gateway import errors, metadata, streaming, transcode
from gateway.rules import HttpRule
from gateway.settings import Settings
from gateway.upstream import Upstream
from protos import validation

log = logging.getLogger(__name__)


def build_routes(rules: Sequence[HttpRule], upstream: Upstream, settings: Settings) -> list[BaseRoute]:
    """A route per rule; rules sharing a path template know each other's verbs (for Allow)."""
    verbs: dict[str, set[str]] = {}
    for rule in rules:
        verbs.setdefault(rule.regex.pattern, set()).add(rule.verb)
    return [RpcRoute(rule, upstream, settings, frozenset(verbs[rule.regex.pattern])) for rule in rules]


class RpcRoute(BaseRoute):
    def __init__(self, rule: HttpRule, upstream: Upstream, settings: Settings, allowed: frozenset[str]) -> None:
        self.rule = rule
        self.name = f"{rule.service}.{rule.method}"
        self._upstream = upstream
        self._settings = settings
        self._allow = ", ".join(sorted(allowed))

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        params = self.rule.match(scope["path"])
        if params is None:
            return Match.NONE, {}
        child = {"path_params": params, "endpoint": self.handle}
        return (Match.FULL if scope["method"] == self.rule.verb else Match.PARTIAL), child

    def url_path_for(self, name: str, /, **path_params):
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        rid = metadata.request_id(request.headers)
        echo = {metadata.REQUEST_ID: rid}
        if scope["method"] != self.rule.verb:
            err = errors.GatewayError(
                errors.status(code_pb2.UNIMPLEMENTED, f"{scope['method']} is not allowed on {self.rule.template}"),
                405,
                {"Allow": self._allow},
            )
            await errors.gateway_response(err, echo)(scope, receive, send)
            return
        try:
            response = await self._respond(request, rid, echo)
        except errors.GatewayError as err:
            response = errors.gateway_response(err, echo)
        except ClientDisconnect:
            return  # the caller left while sending its body: nobody to answer
        await response(scope, receive, send)

    async def _respond(self, request: Request, rid: str, echo: dict) -> Response:
        rule = self.rule
        body = await read_body(request, self._settings.max_body_bytes) if rule.body else b""
        try:
            message = transcode.build_request(
                rule,
                request.path_params,
                request.query_params.multi_items(),
                body,
                request.headers.get("last-event-id"),
            )
        except transcode.TranscodeError as exc:
            raise errors.bad_request(exc.violations) from None
        violations = validation.validate(message)
        if violations:
            raise errors.bad_request(violations)
        try:
            md = metadata.to_metadata(request.headers.items(), rid)
            header_timeout = request.headers.get("grpc-timeout")
            timeout = metadata.parse_grpc_timeout(header_timeout) if header_timeout is not None else None
        except metadata.HeaderError as exc:
            raise errors.bad_request(
                [validation.FieldViolation(field=exc.header, description=str(exc))], str(exc)
            ) from None
        multicallable = self._upstream.callable_for(rule)
        if rule.server_streaming:
            return await streaming.open_stream(
                rule,
                multicallable(message, timeout=timeout, metadata=md, wait_for_ready=False),
                self._upstream.target,
                streaming.wants_sse(request.headers.get("accept", "")),
                self._settings,
                echo,
            )
        call = multicallable(
            message,
            timeout=timeout if timeout is not None else self._settings.unary_timeout_s,
            metadata=md,
            wait_for_ready=False,
        )
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            headers = metadata.to_headers(err.initial_metadata(), err.trailing_metadata())
            return errors.response(errors.from_rpc_error(err, self._upstream.target), headers={**headers, **echo})
        headers = metadata.to_headers(await call.initial_metadata(), await call.trailing_metadata())
        return JSONResponse(transcode.response_json(rule, reply), headers={**headers, **echo})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: a larger ``Content-Length`` is refused before
    reading, and a streamed (chunked) body is refused as soon as it crosses the limit.

    Raises GatewayError (413, or 400 for a malformed Content-Length) and ClientDisconnect.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise errors.bad_request(
                [validation.FieldViolation(field="content-length", description="not a number")],
                "Content-Length is not a number",
            )
        if int(declared) > limit:
            raise errors.body_too_large(limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise errors.body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
