"""AsyncRunnerClient: the asyncio client, on a grpc.aio channel.

    from runner_client import AsyncRunnerClient, specs

    async with AsyncRunnerClient() as client:
        async for event in client.execute_run(specs.diagnostic(ticks=100)):
            print(event.seq, event.WhichOneof("event"))

The same methods, contracts and retries as RunnerClient (see sync_client), as
coroutines and async iterators. Create it inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_client import connection, errors, events, specs
from runner_client.retry import Attempts, RetryNotice, RetryPolicy, RetryThrottle

T = TypeVar("T")

_ABANDON_CANCEL_TIMEOUT_S = 2.0


class AsyncRunnerClient:
    """An asyncio client of one runner target; arguments as RunnerClient's."""

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: connection.TlsFiles | None = None,
        admin_token: str | None = None,
        call_timeout_s: float | None = 10.0,
        retry: RetryPolicy | None = None,
        throttle: RetryThrottle | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.target = connection.resolve_target(target)
        self.retry_policy = retry if retry is not None else RetryPolicy()
        self.throttle = throttle if throttle is not None else RetryThrottle()
        self.call_timeout_s = call_timeout_s
        self.on_retry = on_retry
        self._admin_metadata = connection.admin_metadata(admin_token)
        self._rng = rng if rng is not None else random.Random()
        channel_options = connection.channel_options(tls, options)
        intercepting = list(interceptors) or None
        if tls is not None:
            self._channel = grpc.aio.secure_channel(
                self.target, tls.credentials(), options=channel_options, interceptors=intercepting
            )
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=channel_options, interceptors=intercepting)
        self._runner = runner_pb2_grpc.RunnerServiceStub(self._channel)
        self._admin = runner_pb2_grpc.AdminServiceStub(self._channel)

    # ------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Close the channel; calls in flight end with CANCELLED. Idempotent."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncRunnerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ retry plumbing

    def _attempts(self, method: str, call_timeout_s: float | None) -> Attempts:
        return Attempts(
            method,
            self.retry_policy,
            self.throttle,
            call_timeout_s=call_timeout_s,
            on_retry=self.on_retry,
            rng=self._rng,
        )

    async def _unary(self, method: str, call: Callable[..., Awaitable[T]], request: Any, metadata: tuple = ()) -> T:
        attempts = self._attempts(method, self.call_timeout_s)
        while True:
            timeout = attempts.begin()
            try:
                answer = await call(request, timeout=timeout, metadata=metadata or None)
            except grpc.RpcError as exc:
                error = errors.from_rpc_error(exc)
                delay = attempts.failed(error)
                if delay is None:
                    raise error from None
                await asyncio.sleep(delay)
                continue
            attempts.succeeded()
            return answer

    async def _follow(
        self,
        method: str,
        open_stream: Callable[[events.EventCursor, float | None], Any],
        cursor: events.EventCursor,
        timeout_s: float | None,
    ) -> AsyncGenerator[pb.RunEvent, None]:
        attempts = self._attempts(method, None)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            attempts.begin()
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            call = open_stream(cursor, left)
            error: errors.RunnerError
            try:
                async for event in call:
                    if cursor.accept(event):
                        attempts.progressed()
                        yield event
                    if cursor.finished:
                        return
                error = errors.stream_ended_early(cursor.run_id or "?", cursor.last_seq)
            except grpc.RpcError as exc:
                error = errors.from_rpc_error(exc)
            finally:
                call.cancel()  # a no-op after the end; stops the stream when the caller leaves
            delay = attempts.failed(error, resuming=cursor.run_id is not None)
            if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
                raise error
            await asyncio.sleep(delay)

    # ------------------------------------------------------------ runs

    async def submit_run(
        self,
        spec: pb.RunSpec | pb.SubmitRunRequest,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        run_timeout_s: float | None = None,
        max_attempts: int | None = None,
    ) -> pb.Run:
        """As RunnerClient.submit_run."""
        request = specs.submit_request(
            spec, request_id=request_id, labels=labels, run_timeout_s=run_timeout_s, max_attempts=max_attempts
        )
        return await self._unary("SubmitRun", self._runner.SubmitRun, request)

    async def execute_run(
        self,
        spec: pb.RunSpec | pb.SubmitRunRequest,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        run_timeout_s: float | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.RunEvent]:
        """As RunnerClient.execute_run: leaving the iteration early (or cancelling
        the task iterating) cancels the run; a lost stream resumes as WatchRun."""
        request = specs.submit_request(
            spec, request_id=request_id, labels=labels, run_timeout_s=run_timeout_s, max_attempts=max_attempts
        )
        cursor = events.EventCursor()

        def open_stream(cursor: events.EventCursor, timeout: float | None) -> Any:
            if cursor.run_id is None:
                return self._runner.ExecuteRun(request, timeout=timeout)
            return self._runner.WatchRun(
                pb.WatchRunRequest(run_id=cursor.run_id, after_seq=cursor.last_seq), timeout=timeout
            )

        stream = self._follow("ExecuteRun", open_stream, cursor, timeout_s)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()
            if cursor.run_id is not None and not cursor.finished:
                # Shielded: the cancel goes out even when the iterating task is being cancelled.
                await asyncio.shield(self._abandon(cursor.run_id))

    async def _abandon(self, run_id: str) -> None:
        try:
            await self._runner.CancelRun(
                pb.CancelRunRequest(run_id=run_id, reason="execute_run left"), timeout=_ABANDON_CANCEL_TIMEOUT_S
            )
        except grpc.RpcError:
            pass

    async def get_run(self, run_id: str) -> pb.Run:
        return await self._unary("GetRun", self._runner.GetRun, pb.GetRunRequest(run_id=run_id))

    async def list_runs(
        self,
        *,
        state: int | None = None,
        kind: str | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[pb.Run]:
        """As RunnerClient.list_runs."""
        request = pb.ListRunsRequest(page_size=page_size, state=cast("pb.RunState", state or 0), kind=kind or "")
        if limit is not None and page_size == 0:
            request.page_size = max(1, min(limit, 500))
        given = 0
        while True:
            page = await self._unary("ListRuns", self._runner.ListRuns, request)
            for run in page.runs:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield run
            if not page.next_page_token or (limit is not None and given >= limit):
                return
            request.page_token = page.next_page_token

    async def watch_run(
        self, run_id: str, *, after_seq: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[pb.RunEvent]:
        """As RunnerClient.watch_run."""
        cursor = events.EventCursor(run_id, after_seq)

        def open_stream(cursor: events.EventCursor, timeout: float | None) -> Any:
            return self._runner.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=cursor.last_seq), timeout=timeout)

        stream = self._follow("WatchRun", open_stream, cursor, timeout_s)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def cancel_run(self, run_id: str, reason: str = "") -> pb.Run:
        return await self._unary("CancelRun", self._runner.CancelRun, pb.CancelRunRequest(run_id=run_id, reason=reason))

    # ------------------------------------------------------------ catalog, summary, health

    async def list_scenarios(self) -> list[pb.Scenario]:
        answer = await self._unary("ListScenarios", self._runner.ListScenarios, pb.ListScenariosRequest())
        return list(answer.scenarios)

    async def get_summary(self, recent_limit: int = 0) -> pb.Summary:
        return await self._unary("GetSummary", self._runner.GetSummary, pb.GetSummaryRequest(recent_limit=recent_limit))

    async def get_resilience(self) -> pb.Resilience:
        return await self._unary("GetResilience", self._runner.GetResilience, pb.GetResilienceRequest())

    # ------------------------------------------------------------ admin

    async def get_status(self) -> pb.AdminStatus:
        return await self._unary("GetStatus", self._admin.GetStatus, pb.GetStatusRequest(), self._admin_metadata)

    async def restart_workers(
        self, *, acknowledge_override: bool = False, reason: str = ""
    ) -> pb.RestartWorkersResponse:
        """As RunnerClient.restart_workers: not retried."""
        request = pb.RestartWorkersRequest(acknowledge_override=acknowledge_override, reason=reason)
        try:
            return await self._admin.RestartWorkers(
                request, timeout=self.call_timeout_s, metadata=self._admin_metadata or None
            )
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
