"""One route per HTTP rule: read, transcode, validate, call upstream, answer.

:class:`Dispatcher` is the fast way in: the application asks it first, and a request whose verb
and path match a rule goes straight to that rule's :meth:`RpcRoute.serve`, a plain ASGI handler
(no Starlette request, middleware or response objects on the way). Everything else -- health,
OpenAPI, a path that matches only with another verb, no match -- goes through Starlette's router,
where :class:`RpcRoute` plugs the schema's path templates (compiled by :mod:`gateway.rules`) in:
a path that matches with another verb is a partial match, so the router answers 405 with
``Allow`` only when no rule takes the verb.

Order of work for every request, so nothing reaches the runner that the gateway can refuse:
content type (415), body size (413), transcoding (400), schema limits with the runner's own
validator (400 with BadRequest), headers (400, or 431 for too much metadata), and only then the
upstream call. Head size, header count and read deadlines are the HTTP server's
(:mod:`gateway.server`): a request that breaks them never reaches a route.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl

import grpc
from google.rpc import code_pb2
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from gateway import errors, metadata, streaming, transcode
from gateway.rules import HttpRule
from gateway.settings import Settings
from gateway.upstream import Upstream
from protos import validation
from runner_service import logs


def build_routes(rules: Sequence[HttpRule], upstream: Upstream, settings: Settings) -> list[RpcRoute]:
    """A route per rule; rules sharing a path template know each other's verbs (for Allow)."""
    verbs: dict[str, set[str]] = {}
    for rule in rules:
        verbs.setdefault(rule.regex.pattern, set()).add(rule.verb)
    return [RpcRoute(rule, upstream, settings, frozenset(verbs[rule.regex.pattern])) for rule in rules]


class Dispatcher:
    """The route and path variables for an HTTP request that a rule takes as it is, or None.

    Gives the answer Starlette's router would give: the first rule, in schema order, whose
    template matches the path and whose verb is the request's; ``reserved`` paths (the
    application's own routes, which come before the rules) are never taken.
    """

    def __init__(self, routes: Iterable[RpcRoute], reserved: Iterable[str] = ()) -> None:
        self._by_verb: dict[str, list[tuple]] = {}
        for route in routes:
            rule = route.rule
            self._by_verb.setdefault(rule.verb, []).append((rule.regex.fullmatch, rule.variables, route))
        self._reserved = frozenset(reserved)

    def __call__(self, scope: Scope) -> tuple[RpcRoute, dict[str, str]] | None:
        candidates = self._by_verb.get(scope["method"])
        if candidates is None:
            return None
        path = scope["path"]
        if path in self._reserved:
            return None
        for fullmatch, variables, route in candidates:
            found = fullmatch(path)
            if found is not None:
                return route, dict(zip(variables, found.groups()))
        return None


class RpcRoute(BaseRoute):
    def __init__(self, rule: HttpRule, upstream: Upstream, settings: Settings, allowed: frozenset[str]) -> None:
        self.rule = rule
        self.name = f"{rule.service}.{rule.method}"
        self._upstream = upstream
        self._settings = settings
        self._allow = ", ".join(sorted(allowed))
        self._unary_timeout_s = settings.unary_timeout_s
        self._max_grpc_timeout_s = settings.max_grpc_timeout_s
        self._max_body_bytes = settings.max_body_bytes
        self._max_metadata_bytes = settings.max_metadata_bytes

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
        """The route's endpoint in Starlette's router: 405 for another verb, else :meth:`serve`."""
        if scope["method"] != self.rule.verb:
            rid = metadata.request_id(dict(_headers(scope)[::-1]))
            err = errors.GatewayError(
                errors.status(code_pb2.UNIMPLEMENTED, f"{scope['method']} is not allowed on {self.rule.template}"),
                405,
                {"Allow": self._allow},
            )
            await errors.gateway_response(err, {metadata.REQUEST_ID: rid})(scope, receive, send)
            return
        await self.serve(scope, receive, send, scope["path_params"])

    async def serve(self, scope: Scope, receive: Receive, send: Send, path_params: dict[str, str]) -> None:
        """Answer a request this rule takes (verb and path already matched)."""
        headers = _headers(scope)
        first = dict(headers[::-1])  # name -> value of its first occurrence
        rid = metadata.request_id(first)
        logs.bind_call(first.get("traceparent"), rid)  # this request's log lines (access line included)
        echo = {metadata.REQUEST_ID: rid}
        try:
            response = await self._respond(scope, receive, headers, first, path_params, rid, echo)
        except errors.GatewayError as err:
            response = errors.gateway_response(err, echo)
        except ClientDisconnect:
            return  # the caller left while sending its body: nobody to answer
        await response(scope, receive, send)

    async def _respond(
        self, scope: Scope, receive: Receive, headers: list, first: dict, path_params: dict, rid: str, echo: dict
    ):
        rule = self.rule
        if rule.body:
            # A body must say it is JSON: a browser sends text/plain and form types cross-site
            # without asking first, JSON only after a CORS preflight this gateway never grants.
            # A POST with no body and no Content-Type (curl's `-X POST`, e.g. a cancel) is taken
            # as the empty message; a page could send that cross-site too, so such a route must
            # not need more protection than its own authorization gives.
            content_type = first.get("content-type")
            if (
                content_type is not None
                and content_type != "application/json"
                and not transcode.is_json_media_type(content_type)
            ):
                raise errors.unsupported_media_type(content_type)
            body = await receive_body(receive, first.get("content-length"), self._max_body_bytes)
            if body and content_type is None:
                raise errors.unsupported_media_type(None)
        else:
            body = b""
        query = scope.get("query_string", b"")
        try:
            message = transcode.build_request(
                rule,
                path_params,
                parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else (),
                body,
                first.get("last-event-id"),
            )
        except transcode.TranscodeError as exc:
            raise errors.bad_request(exc.violations) from None
        violations = validation.validate(message)
        if violations:
            raise errors.bad_request(violations)
        try:
            md = metadata.to_metadata(headers, rid, self._max_metadata_bytes)
            header_timeout = first.get("grpc-timeout")
            timeout = None
            if header_timeout is not None:
                # Cut to the maximum: a deadline hours or years away is no deadline at all, and
                # one past what gRPC can represent would end the call at once.
                timeout = min(metadata.parse_grpc_timeout(header_timeout), self._max_grpc_timeout_s)
        except metadata.MetadataTooLarge as exc:
            raise errors.header_too_large(str(exc)) from None
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
                streaming.wants_sse(first.get("accept", "")),
                self._settings,
                echo,
            )
        call = multicallable(
            message,
            timeout=timeout if timeout is not None else self._unary_timeout_s,
            metadata=md,
            wait_for_ready=False,
        )
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            answer = metadata.to_headers(err.initial_metadata(), err.trailing_metadata())
            return errors.response(errors.from_rpc_error(err, self._upstream.target), headers={**answer, **echo})
        answer = metadata.to_headers(await call.initial_metadata(), await call.trailing_metadata())
        # The answer keeps the finished call until it has been sent: freeing a call costs tens
        # of microseconds, better spent after the caller has its response than before.
        return JsonReply(transcode.response_json(rule, reply), {**answer, **echo}, keep=call)


class JsonReply:
    """A 200 ``application/json`` answer, sent as Starlette's JSONResponse sends it (same body
    bytes, same header order: the given headers, then Content-Length and Content-Type)."""

    __slots__ = ("_keep", "body", "raw_headers")

    def __init__(self, content, headers: dict[str, str], keep: object = None) -> None:
        self._keep = keep  # released with the reply, once it has been sent
        self.body = _dumps(content).encode("utf-8")
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        raw.append((b"content-type", b"application/json"))
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode


def _headers(scope: Scope) -> list[tuple[str, str]]:
    """The request's headers as (lower-case name, value) strings, in order, as Starlette
    decodes them."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]


async def receive_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: a larger ``Content-Length`` is refused before
    reading, and a streamed (chunked) body is refused as soon as it crosses the limit.

    Raises GatewayError (413, or 400 for a malformed Content-Length) and ClientDisconnect.
    """
    if content_length is not None:
        if not content_length.isdigit():
            raise errors.bad_request(
                [validation.FieldViolation(field="content-length", description="not a number")],
                "Content-Length is not a number",
            )
        if int(content_length) > limit:
            raise errors.body_too_large(limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise errors.body_too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif kind == "http.disconnect":
            raise ClientDisconnect()
