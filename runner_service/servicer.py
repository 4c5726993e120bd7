"""gRPC servicers: validate, convert, call the core, map errors. Nothing else."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging

import grpc
from google.rpc import error_details_pb2

from protos import validation
from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_service import convert, errors, watchdog
from runner_service.audit import AuditLog
from runner_service.jobs import specs
from runner_service.jobs.catalog import Catalog
from runner_service.runs import CancelReason, RunState
from runner_service.scheduler import Scheduler
from runner_service.store import Store, StoreError

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
DEADLINE_SKEW_S = 0.1


def _check(request) -> None:
    violations = validation.validate(request)
    if violations:
        raise errors.InvalidArgument(violations)


def _as_runner_error(exc: Exception) -> errors.RunnerError:
    if isinstance(exc, errors.RunnerError):
        return exc
    if isinstance(exc, StoreError):
        return errors.StoreUnavailable(str(exc))
    if isinstance(exc, TimeoutError):
        return errors.DeadlineExceeded("the call's deadline passed")
    log.exception("unexpected error in a handler", exc_info=exc)
    return errors.RunnerError("internal error")


def unary(handler):
    """Map every error of a unary handler to a status with details, in one place."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await handler(self, request, context)
        except (errors.RunnerError, StoreError, TimeoutError, ValueError, KeyError) as exc:
            await context.abort_with_status(errors.to_grpc_status(_as_runner_error(exc)))

    return wrapper


def stream(handler):
    """The same mapping for server-streaming handlers; an error ends the stream."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in handler(self, request, context):
                yield item
        except (errors.RunnerError, StoreError, TimeoutError, ValueError, KeyError) as exc:
            await context.abort_with_status(errors.to_grpc_status(_as_runner_error(exc)))

    return wrapper


async def _within_deadline(context: grpc.aio.ServicerContext, awaitable):
    """Await store work no longer than the caller's deadline."""
    remaining = context.time_remaining()
    if remaining is None:
        return await awaitable
    return await asyncio.wait_for(awaitable, remaining)


class RunnerServicer(runner_pb2_grpc.RunnerServiceServicer):
    def __init__(self, scheduler: Scheduler, store: Store, catalog: Catalog) -> None:
        self._scheduler = scheduler
        self._store = store
        self._catalog = catalog

    async def _check_spec(self, request: pb.SubmitRunRequest) -> None:
        """Reject at once a run that could never start: unknown kind or scenario,
        override or sweep parameter path not in the scenario."""
        if specs.simulations_of(request.spec):
            # Reading the scenario directory is file I/O: off the event loop.
            await asyncio.to_thread(specs.check_spec, request.spec, self._catalog, self._scheduler.job_targets)
        else:
            specs.check_spec(request.spec, self._catalog, self._scheduler.job_targets)

    @unary
    async def SubmitRun(self, request: pb.SubmitRunRequest, context) -> pb.Run:
        _check(request)
        await self._check_spec(request)
        record, _created = await self._scheduler.submit(request)
        return convert.run_to_proto(record)

    @stream
    async def ExecuteRun(self, request: pb.SubmitRunRequest, context):
        _check(request)
        await self._check_spec(request)
        record, _created = await self._scheduler.submit(request)
        finished = False
        try:
            async for event in self._scheduler.watch(record.run_id, 0):
                yield event
            finished = True
        finally:
            if not finished:
                # The run is tied to this call: record why before it is stopped.
                # A client whose deadline passes cancels the call itself, often a
                # moment before the server's own timer fires: allow for that skew.
                remaining = context.time_remaining()
                deadline_passed = remaining is not None and remaining <= DEADLINE_SKEW_S
                reason = CancelReason.DEADLINE if deadline_passed else CancelReason.CALL_CANCELLED
                self._scheduler.cancel_nowait(record.run_id, reason)

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
        _check(request)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        after = None
        if request.page_token:
            try:
                after = convert.decode_page_token(request.page_token)
            except ValueError as exc:
                violation = error_details_pb2.BadRequest.FieldViolation(field="page_token", description=str(exc))
                raise errors.InvalidArgument([violation]) from None
        state = RunState(request.state) if request.state else None
        records = await _within_deadline(
            context, self._store.list_runs(page_size + 1, after, state, request.kind or None)
        )
        response = pb.ListRunsResponse()
        for record in records[:page_size]:
            live = self._scheduler.live_record(record.run_id)
            response.runs.append(convert.run_to_proto(live or record))
        if len(records) > page_size:
            last = records[page_size - 1]
            response.next_page_token = convert.encode_page_token(convert.Cursor(last.create_us, last.run_id))
        return response

    @stream
    async def WatchRun(self, request: pb.WatchRunRequest, context):
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
    async def GetSummary(self, request, context):
        raise errors.Unimplemented("GetSummary is not implemented yet")


class AdminServicer(runner_pb2_grpc.AdminServiceServicer):
    """Operator endpoints, behind `authorization: Bearer <RUNNER_ADMIN_TOKEN>`."""

    def __init__(self, scheduler: Scheduler, settings, audit: AuditLog) -> None:
        self._scheduler = scheduler
        self._settings = settings
        self._audit = audit

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
        pool = self._scheduler.pool
        dog = pool.watchdog
        policy = dog.policy()
        status = pb.AdminStatus(queued=self._scheduler.queued, running=self._scheduler.running)
        status.workers.size = pool.size
        status.workers.alive = len(pool.alive_workers())
        status.workers.busy = pool.busy_count
        status.workers.restarts_total = dog.restarts_total
        watch = status.watchdog
        watch.policy_state = _POLICY_STATES[policy.state]
        watch.restarts_in_window = policy.restarts_in_window
        watch.window.FromNanoseconds(int(dog.window_s * 1e9))
        watch.cooldown_remaining.FromNanoseconds(int(policy.cooldown_remaining_s * 1e9))
        watch.cooldown_threshold = dog.cooldown_threshold
        watch.block_threshold = dog.block_threshold
        watch.recommended_action = policy.recommended_action
        return status

    @unary
    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.AdminStatus:
        self._authorize(context)
        return self._status()

    @unary
    async def RestartWorkers(self, request: pb.RestartWorkersRequest, context) -> pb.RestartWorkersResponse:
        self._authorize(context)
        _check(request)
        policy = self._scheduler.pool.watchdog.policy()
        override = policy.state == watchdog.BLOCKED
        if override and not request.acknowledge_override:
            raise errors.FailedPrecondition(
                f"worker restarts are blocked: {policy.restarts_in_window} crashes in the last "
                f"{self._scheduler.pool.watchdog.window_s:g} s; set acknowledge_override to restart anyway"
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


_POLICY_STATES = {
    watchdog.ALLOWED: pb.ALLOWED,
    watchdog.COOLING_DOWN: pb.COOLING_DOWN,
    watchdog.BLOCKED: pb.BLOCKED,
}
