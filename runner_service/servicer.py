"""gRPC servicers: validate, convert, call the core, map errors. Nothing else.

Every handler is wrapped (``unary`` / ``stream``) so that whatever it raises ends
the call with a status: runner errors as they say, anything unexpected as
INTERNAL with a reference that is also in the log, next to the traceback.
``add_to_server`` registers the services with request parsers that never raise,
so malformed request bytes are INVALID_ARGUMENT too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import inspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from protos import validation
from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service import convert, diagnostics, errors, watchdog
from runner_service.audit import AuditLog
from runner_service.jobs import specs
from runner_service.jobs.catalog import Catalog
from runner_service.runs import CancelReason, RunState
from runner_service.scheduler import Scheduler
from runner_service.settings import Settings
from runner_service.store import Cursor, RunRecord, Store, StoreError
from runner_service.summary import SummaryCache

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
DEADLINE_SKEW_S = 0.1
# ListRuns reads the store in chunks of at most this many runs, so one page never
# holds more than a chunk of large runs in memory beyond what it returns.
LIST_CHUNK = 100
# Bytes a run adds to a ListRunsResponse besides its own size (tag and length).
_ENTRY_OVERHEAD = 6
# At most one log line per this many seconds about malformed requests.
MALFORMED_LOG_INTERVAL_S = 10.0

_FieldViolation = error_details_pb2.BadRequest.FieldViolation

# The run a call is about, once known: named in the log line of an internal error.
_RUN_ID: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="")


def _check(request: Message) -> None:
    violations = validation.validate(request)
    if violations:
        raise errors.InvalidArgument(violations)


# ------------------------------------------------------------ malformed requests


class Malformed:
    """What a lenient parser hands the handler instead of a message it could not parse."""

    __slots__ = ("cause", "type_name")

    def __init__(self, type_name: str, cause: str) -> None:
        self.type_name = type_name
        self.cause = cause


class RateLimitedLog:
    """Logs at most one warning per ``interval_s``; the next line says how many
    were left out meanwhile. For events any client can cause at will."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = -math.inf
        self.suppressed = 0

    def warning(self, message: str, **extra: object) -> bool:
        """Log `message` unless a line was logged less than interval_s ago; True if logged."""
        now = self._clock()
        if now < self._next_at:
            self.suppressed += 1
            return False
        self._next_at = now + self._interval_s
        suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            message += f" ({suppressed} more since the previous report, not logged)"
        self._logger.warning(message, extra={**extra, "suppressed": suppressed})
        return True


def _decode_cause(exc: Exception) -> str:
    """The parser's own words for what is wrong, without the type prefix."""
    text = str(exc)
    _, sep, cause = text.partition("': ")
    return (cause if sep else text).strip()[:200]


def lenient_parser(message_class: type[Message], method: str, report: RateLimitedLog) -> Callable[[bytes], object]:
    """A request deserializer that never raises: the parsed message, or a
    Malformed for bytes that are not one (corrupt wire format, invalid UTF-8 in a
    string field, nesting too deep). grpc would answer UNKNOWN and log a
    traceback for every call whose deserializer raises."""
    type_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> object:
        try:
            return message_class.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any bytes the parser refuses are the client's error
            cause = _decode_cause(exc)
            report.warning(
                f"malformed request to {method}: not a valid {type_name} ({cause})",
                method=method,
                request_bytes=len(data),
            )
            return Malformed(type_name, cause)

    return parse


# ------------------------------------------------------------ error mapping


def _as_runner_error(exc: Exception, method: str, request: object) -> errors.RunnerError:
    """The status a failed call ends with. Unexpected errors are logged here, once,
    with their traceback and a reference the client gets instead."""
    if isinstance(exc, errors.RunnerError):
        return exc
    if isinstance(exc, StoreError):
        log.debug("store error in a handler", extra={"method": method, "error": str(exc)})
        return errors.StoreUnavailable.from_store(exc)
    if isinstance(exc, TimeoutError):
        return errors.DeadlineExceeded("the call's deadline passed")
    reference = uuid.uuid4().hex[:16]
    run_id = _RUN_ID.get() or getattr(request, "run_id", "") or None
    log.error(
        "internal error in %s (reference %s)",
        method,
        reference,
        exc_info=exc,
        extra={"reference": reference, "method": method, "run_id": run_id},
    )
    return errors.Internal(reference)


def unary(handler):
    """Map every error of a unary handler to a status with details, in one place.
    Only cancellation (asyncio.CancelledError) passes through."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, Malformed):
                raise errors.MalformedRequest(request.type_name, request.cause)
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise  # the handler ended the call itself
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await context.abort_with_status(errors.to_grpc_status(_as_runner_error(exc, handler.__name__, request)))

    return wrapper


def stream(handler):
    """The same mapping for server-streaming handlers; an error ends the stream."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, Malformed):
                raise errors.MalformedRequest(request.type_name, request.cause)
            async for item in handler(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await context.abort_with_status(errors.to_grpc_status(_as_runner_error(exc, handler.__name__, request)))

    return wrapper


async def _within_deadline(context: grpc.aio.ServicerContext, awaitable):
    """Await store work no longer than the caller's deadline."""
    remaining = context.time_remaining()
    if remaining is None:
        return await awaitable
    return await asyncio.wait_for(awaitable, remaining)


def _call_end_reason(context: grpc.aio.ServicerContext) -> CancelReason:
    """Why an ExecuteRun call ended early. A client whose deadline passes cancels
    the call itself, often a moment before the server's own timer fires: allow
    for that skew."""
    remaining = context.time_remaining()
    deadline_passed = remaining is not None and remaining <= DEADLINE_SKEW_S
    return CancelReason.DEADLINE if deadline_passed else CancelReason.CALL_CANCELLED


class RunnerServicer(runner_pb2_grpc.RunnerServiceServicer):
    """The RunnerService. `settings` gives the stored-size bounds (max_spec_bytes,
    max_list_page_bytes); their defaults apply without it."""

    SERVICE_NAME = "RunnerService"

    def __init__(
        self,
        scheduler: Scheduler,
        store: Store,
        catalog: Catalog,
        settings: Settings | None = None,
        resilience: Callable[[], pb.Resilience] | None = None,
        summary: SummaryCache | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._store = store
        self._catalog = catalog
        self._resilience = resilience
        self._summary = summary if summary is not None else SummaryCache(store)
        limits = settings if settings is not None else Settings()
        self._max_spec_bytes = limits.max_spec_bytes
        self._max_list_page_bytes = limits.max_list_page_bytes
        self._submits: set[asyncio.Task] = set()

    async def _admit(self, request: pb.SubmitRunRequest) -> None:
        """Make a submission what is stored, or refuse it before anything is: drop
        unknown fields (at every level), bound the spec's size, check the schema's
        limits, then refuse at once a run that could never start (a built-in kind
        through spec.plugin, an unknown kind or scenario, an override or sweep
        parameter path not in the scenario)."""
        request.DiscardUnknownFields()
        size = request.spec.ByteSize()
        if size > self._max_spec_bytes:
            description = f"must be at most {self._max_spec_bytes} bytes serialized (got {size})"
            raise errors.InvalidArgument([_FieldViolation(field="spec", description=description)])
        _check(request)
        if specs.simulations_of(request.spec):
            # Reading the scenario directory is file I/O: off the event loop.
            await asyncio.to_thread(specs.check_spec, request.spec, self._catalog, self._scheduler.job_targets)
        else:
            specs.check_spec(request.spec, self._catalog, self._scheduler.job_targets)

    @staticmethod
    def _refuse_reuse(request: pb.SubmitRunRequest, record: RunRecord, created: bool) -> None:
        """A request_id names one submission: the same one again gets its run, any
        other is refused (REQUEST_ID_REUSED)."""
        if not created and not convert.same_submission(record, request):
            raise errors.RequestIdReused(request.request_id)

    @unary
    async def SubmitRun(self, request: pb.SubmitRunRequest, context) -> pb.Run:
        await self._admit(request)
        record, created = await self._scheduler.submit(request)
        _RUN_ID.set(record.run_id)
        self._refuse_reuse(request, record, created)
        return convert.run_to_proto(record)

    async def _submit_owned(self, request: pb.SubmitRunRequest, context) -> RunRecord:
        """Submit a run that belongs to this call. The submission runs in a task of
        its own: if the call is cancelled while the run is being stored, the run is
        cancelled as soon as it is, instead of running on unowned."""
        task = asyncio.ensure_future(self._scheduler.submit(request))
        self._submits.add(task)
        task.add_done_callback(self._submits.discard)
        try:
            record, created = await asyncio.shield(task)
        except asyncio.CancelledError:
            reason = _call_end_reason(context)
            task.add_done_callback(functools.partial(self._cancel_unowned, request, reason))
            raise
        _RUN_ID.set(record.run_id)
        self._refuse_reuse(request, record, created)
        return record

    def _cancel_unowned(self, request: pb.SubmitRunRequest, reason: CancelReason, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # nothing was stored (or the caller is gone and cannot be told)
        record, created = task.result()
        if created or convert.same_submission(record, request):
            self._scheduler.cancel_nowait(record.run_id, reason)

    @stream
    async def ExecuteRun(self, request: pb.SubmitRunRequest, context) -> AsyncIterator[pb.RunEvent]:
        await self._admit(request)
        record = await self._submit_owned(request, context)
        finished = False
        try:
            async for event in self._scheduler.watch(record.run_id, 0):
                yield event
            finished = True
        finally:
            if not finished:
                # The run is tied to this call: record why before it is stopped.
                self._scheduler.cancel_nowait(record.run_id, _call_end_reason(context))

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context) -> pb.Run:
        _check(request)
        record = self._scheduler.live_record(request.run_id)
        if record is None:
            record = await _within_deadline(context, self._store.get_run(request.run_id))
        if record is None:
            raise errors.NotFound(f"run {request.run_id!r} not found")
        return convert.run_to_proto(record)

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context) -> pb.ListRunsResponse:
        """Newest first. A page ends at page_size runs or, earlier, before the run
        that would take it over max_list_page_bytes (it always holds one run);
        next_page_token is set whenever more runs follow."""
        _check(request)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        after = None
        if request.page_token:
            try:
                after = convert.decode_page_token(request.page_token)
            except ValueError as exc:
                violation = _FieldViolation(field="page_token", description=str(exc))
                raise errors.InvalidArgument([violation]) from None
        state = RunState(request.state) if request.state else None
        kind = request.kind or None
        response = pb.ListRunsResponse()
        used = 0
        last: RunRecord | None = None
        more = False
        while not more:
            wanted = min(page_size - len(response.runs), LIST_CHUNK)
            budget = max(1, self._max_list_page_bytes - used)
            records = await _within_deadline(context, self._store.list_runs(wanted + 1, after, state, kind, budget))
            for record in records[:wanted]:
                run = convert.run_to_proto(self._scheduler.live_record(record.run_id) or record)
                size = run.ByteSize() + _ENTRY_OVERHEAD
                if response.runs and used + size > self._max_list_page_bytes:
                    more = True
                    break
                response.runs.append(run)
                used += size
                last = record
            else:
                if len(records) <= wanted:
                    break  # no run after these
                if len(response.runs) >= page_size:
                    more = True
                after = Cursor(records[wanted - 1].create_us, records[wanted - 1].run_id)
        if more and last is not None:
            response.next_page_token = convert.encode_page_token(Cursor(last.create_us, last.run_id))
        return response

    @stream
    async def WatchRun(self, request: pb.WatchRunRequest, context) -> AsyncIterator[pb.RunEvent]:
        _check(request)
        async for event in self._scheduler.watch(request.run_id, request.after_seq):
            yield event

    @unary
    async def CancelRun(self, request: pb.CancelRunRequest, context) -> pb.Run:
        _check(request)
        record = await _within_deadline(context, self._scheduler.cancel(request.run_id, CancelReason.CLIENT_REQUEST))
        return convert.run_to_proto(record)

    @unary
    async def ListScenarios(self, request: pb.ListScenariosRequest, context) -> pb.ListScenariosResponse:
        _check(request)
        entries = await asyncio.to_thread(self._catalog.entries)
        return specs.scenarios_response(entries)

    @unary
    async def GetSummary(self, request: pb.GetSummaryRequest, context) -> pb.Summary:
        _check(request)
        return await _within_deadline(context, self._summary.summary(request.recent_limit))

    @unary
    async def GetResilience(self, request: pb.GetResilienceRequest, context) -> pb.Resilience:
        if self._resilience is None:
            raise errors.Unimplemented("diagnostics are not wired on this server")
        return self._resilience()


class AdminServicer(runner_pb2_grpc.AdminServiceServicer):
    """Operator endpoints, behind `authorization: Bearer <RUNNER_ADMIN_TOKEN>`."""

    SERVICE_NAME = "AdminService"

    def __init__(
        self,
        scheduler: Scheduler,
        settings,
        audit: AuditLog,
        resilience: Callable[[], pb.Resilience] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._settings = settings
        self._audit = audit
        self._resilience = resilience

    def _authorize(self, context) -> None:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        if not header:
            raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
        expected = self._settings.admin_token
        if not expected:
            raise errors.PermissionDenied("the admin API is disabled on this runner (RUNNER_ADMIN_TOKEN is not set)")
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise errors.PermissionDenied("the token is not allowed to use the admin API")

    def _status(self) -> pb.AdminStatus:
        now = self._scheduler.status()
        dog = self._scheduler.watchdog
        status = pb.AdminStatus(queued=now.queued, running=now.running)
        status.workers.size = now.workers_size
        status.workers.alive = now.workers_alive
        status.workers.busy = now.workers_busy
        status.workers.restarts_total = now.restarts_total
        diagnostics.fill_watchdog(status.watchdog, dog, dog.policy())
        if self._resilience is not None:
            status.resilience.CopyFrom(self._resilience())
        return status

    @unary
    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.AdminStatus:
        self._authorize(context)
        return self._status()

    @unary
    async def RestartWorkers(self, request: pb.RestartWorkersRequest, context) -> pb.RestartWorkersResponse:
        self._authorize(context)
        _check(request)
        policy = self._scheduler.watchdog.policy()
        override = policy.state == watchdog.BLOCKED
        if override and not request.acknowledge_override:
            raise errors.FailedPrecondition(
                f"worker restarts are blocked: {policy.restarts_in_window} crashes in the last "
                f"{self._scheduler.watchdog.window_s:g} s; set acknowledge_override to restart anyway"
            )
        await self._audit.record(
            "restart_workers",
            override=override,
            reason=request.reason,
            policy_state=policy.state,
            restarts_in_window=policy.restarts_in_window,
            peer=context.peer(),
        )
        await self._scheduler.restart_workers(self._settings.shutdown_grace_s)
        return pb.RestartWorkersResponse(status=self._status(), override_used=override)


# ------------------------------------------------------------ registration


def _unimplemented(method: MethodDescriptor):
    """A handler for a method of the schema that the servicer does not implement:
    UNIMPLEMENTED (after the same checks of the request bytes as any other)."""
    message = f"{method.full_name} is not implemented by this runner"

    if method.server_streaming:

        @stream
        async def refuse_stream(_self, request, context):
            raise errors.Unimplemented(message)
            yield  # an async generator, as a server stream is

        return functools.partial(refuse_stream, None)

    @unary
    async def refuse(_self, request, context):
        raise errors.Unimplemented(message)

    return functools.partial(refuse, None)


def _method_handler(method: MethodDescriptor, servicer, report: RateLimitedLog) -> grpc.RpcMethodHandler:
    if method.client_streaming:
        raise ValueError(f"{method.full_name}: client-streaming methods are not served")
    behaviour = getattr(servicer, method.name, None)
    if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        behaviour = _unimplemented(method)  # e.g. the generated base class's placeholder
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
    return make(
        behaviour,
        request_deserializer=lenient_parser(request_class, path, report),
        response_serializer=response_class.SerializeToString,
    )


def add_to_server(
    server: grpc.aio.Server,
    runner: RunnerServicer,
    admin: AdminServicer,
    health=None,
    malformed_log_interval_s: float = MALFORMED_LOG_INTERVAL_S,
) -> None:
    """Register RunnerService and AdminService on `server`, built from the schema's
    descriptors (in place of the generated add_*_to_server functions): request
    bytes that do not parse reach the handler as a Malformed, which answers
    INVALID_ARGUMENT, with at most one log line per malformed_log_interval_s.
    `health` (a grpc_health aio HealthServicer) is served the same way."""
    report = RateLimitedLog(log, malformed_log_interval_s)
    for servicer in (runner, admin):
        service = pb.DESCRIPTOR.services_by_name[servicer.SERVICE_NAME]
        handlers = {method.name: _method_handler(method, servicer, report) for method in service.methods}
        _register(server, service.full_name, handlers)
    if health is not None:
        _register(server, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, _health_handlers(health, report))


def _register(server: grpc.aio.Server, service_name: str, handlers: dict) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)


def _health_handlers(health, report: RateLimitedLog) -> dict:
    """grpc.health.v1.Health's Check and Watch in front of grpc's own servicer,
    with the lenient parser: malformed bytes are INVALID_ARGUMENT, not UNKNOWN."""

    async def refuse_malformed(request, context) -> None:
        if isinstance(request, Malformed):
            error = errors.MalformedRequest(request.type_name, request.cause)
            await context.abort_with_status(errors.to_grpc_status(error))

    async def check(request, context):
        await refuse_malformed(request, context)
        return await health.Check(request, context)

    async def watch(request, context) -> None:
        await refuse_malformed(request, context)
        await health.Watch(request, context)

    parse = health_pb2.HealthCheckRequest
    return {
        "Check": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=lenient_parser(parse, "/grpc.health.v1.Health/Check", report),
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=lenient_parser(parse, "/grpc.health.v1.Health/Watch", report),
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
