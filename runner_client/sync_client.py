"""RunnerClient: the blocking client, on a grpc blocking channel.

    from runner_client import RunnerClient, specs

    with RunnerClient("127.0.0.1:50051") as client:
        run = client.submit_run(specs.diagnostic(ticks=100, tick_s=0.02))
        for event in client.watch_run(run.run_id):
            print(event.seq, event.WhichOneof("event"))

Every method retries what SPEC §3 marks retryable (see runner_client.retry) and
raises a runner_client.errors.RunnerError subclass for anything else, or when
its retries are spent. Safe to share between threads.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import grpc

from protos.runner.v1 import runner_pb2 as pb
from protos.runner.v1 import runner_pb2_grpc
from runner_client import connection, errors, events, specs
from runner_client.retry import Attempts, RetryNotice, RetryPolicy, RetryThrottle

T = TypeVar("T")

#: Deadline of a best-effort CancelRun sent when the caller leaves execute_run early.
_ABANDON_CANCEL_TIMEOUT_S = 2.0


class RunnerClient:
    """A blocking client of one runner target (a replica, or a balanced set of them).

    - `target`: any gRPC target; default $RUNNER_TARGET, else 127.0.0.1:50051.
    - `tls`: TLS files (None: plaintext).
    - `admin_token`: the bearer token of AdminService calls.
    - `call_timeout_s`: the deadline of each unary attempt (None: none).
    - `retry`: the RetryPolicy of every call; `throttle`: the retry token bucket
      (one per client by default).
    - `on_retry`: called before each wait to retry or resume (for logs and displays).
    - `interceptors`, `options`: passed to the channel.
    """

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
        if tls is not None:
            channel = grpc.secure_channel(self.target, tls.credentials(), options=channel_options)
        else:
            channel = grpc.insecure_channel(self.target, options=channel_options)
        self._raw_channel = channel
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._runner = runner_pb2_grpc.RunnerServiceStub(channel)
        self._admin = runner_pb2_grpc.AdminServiceStub(channel)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the channel; calls in flight end with CANCELLED. Idempotent."""
        self._raw_channel.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

    def _unary(self, method: str, call: Callable[..., T], request: Any, metadata: tuple = ()) -> T:
        attempts = self._attempts(method, self.call_timeout_s)
        while True:
            timeout = attempts.begin()
            try:
                answer = call(request, timeout=timeout, metadata=metadata or None)
            except grpc.RpcError as exc:
                error = errors.from_rpc_error(exc)
                delay = attempts.failed(error)
                if delay is None:
                    raise error from None
                time.sleep(delay)
                continue
            attempts.succeeded()
            return answer

    def _follow(
        self,
        method: str,
        open_stream: Callable[[events.EventCursor, float | None], Any],
        cursor: events.EventCursor,
        timeout_s: float | None,
    ) -> Generator[pb.RunEvent, None, None]:
        """Deliver a run's events from streams opened by `open_stream(cursor,
        timeout)` until the terminal one, reopening after a resumable failure."""
        attempts = self._attempts(method, None)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            attempts.begin()
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            call = open_stream(cursor, left)
            error: errors.RunnerError
            try:
                for event in call:
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
            time.sleep(delay)

    # ------------------------------------------------------------ runs

    def submit_run(
        self,
        spec: pb.RunSpec | pb.SubmitRunRequest,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        run_timeout_s: float | None = None,
        max_attempts: int | None = None,
    ) -> pb.Run:
        """Store a run (QUEUED) and return it. The request always carries a
        request_id (a new one unless given), so retries never make a second run;
        the same request_id with another request raises AlreadyExists
        (REQUEST_ID_REUSED). `run_timeout_s` is the run's own deadline;
        `max_attempts` how often the runner may start it again after losing a replica."""
        request = specs.submit_request(
            spec, request_id=request_id, labels=labels, run_timeout_s=run_timeout_s, max_attempts=max_attempts
        )
        return self._unary("SubmitRun", self._runner.SubmitRun, request)

    def execute_run(
        self,
        spec: pb.RunSpec | pb.SubmitRunRequest,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        run_timeout_s: float | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[pb.RunEvent]:
        """Submit a run tied to this iteration and yield its events until the
        terminal one. Leaving the iteration early (break, close, an exception in
        the loop) cancels the run, as ExecuteRun does. If the stream is lost after
        the first event, it resumes as WatchRun on that run with after_seq: each
        event is delivered once, in order. (The runner may have cancelled the run
        when it saw the first call end, or interrupted it if it restarted: the
        events say so.) `timeout_s` bounds the whole iteration."""
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
            yield from stream
        finally:
            stream.close()
            if cursor.run_id is not None and not cursor.finished:
                self._abandon(cursor.run_id)

    def _abandon(self, run_id: str) -> None:
        """The caller left execute_run early: cancel the run, as the end of an
        ExecuteRun call does (needed once the stream was resumed as a watch). One
        attempt; a failure is ignored (a run that cannot be reached is not ours to wait for)."""
        try:
            self._runner.CancelRun(
                pb.CancelRunRequest(run_id=run_id, reason="execute_run left"), timeout=_ABANDON_CANCEL_TIMEOUT_S
            )
        except grpc.RpcError:
            pass

    def get_run(self, run_id: str) -> pb.Run:
        """The run as stored (or as its replica holds it). Raises NotFound."""
        return self._unary("GetRun", self._runner.GetRun, pb.GetRunRequest(run_id=run_id))

    def list_runs(
        self,
        *,
        state: int | None = None,
        kind: str | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[pb.Run]:
        """Runs newest first, page after page (each page a call of its own, retried
        on its own), filtered by `state` (e.g. pb.FAILED) and `kind`; at most
        `limit` runs when given. `page_size` 0 is the runner's default (50)."""
        request = pb.ListRunsRequest(page_size=page_size, state=cast("pb.RunState", state or 0), kind=kind or "")
        if limit is not None and page_size == 0:
            request.page_size = max(1, min(limit, 500))
        given = 0
        while True:
            page = self._unary("ListRuns", self._runner.ListRuns, request)
            for run in page.runs:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield run
            if not page.next_page_token or (limit is not None and given >= limit):
                return
            request.page_token = page.next_page_token

    def watch_run(self, run_id: str, *, after_seq: int = 0, timeout_s: float | None = None) -> Iterator[pb.RunEvent]:
        """Yield the run's events after `after_seq` until the terminal one: stored
        ones first, then live ones. A lost stream (the runner or its replica
        restarting, a network blip, WATCHER_TOO_SLOW) is resumed with after_seq =
        the last event delivered, so each event comes once, in order (progress
        events may be conflated: only the latest is guaranteed). Leaving the
        iteration never cancels the run. `timeout_s` bounds the whole watch."""
        cursor = events.EventCursor(run_id, after_seq)

        def open_stream(cursor: events.EventCursor, timeout: float | None) -> Any:
            request = pb.WatchRunRequest(run_id=run_id, after_seq=cursor.last_seq)
            return self._runner.WatchRun(request, timeout=timeout)

        yield from self._follow("WatchRun", open_stream, cursor, timeout_s)

    def cancel_run(self, run_id: str, reason: str = "") -> pb.Run:
        """Ask for the run to stop; returns at once with cancel_requested set (the
        run ends CANCELLED when its job stops). Idempotent, so it is retried."""
        return self._unary("CancelRun", self._runner.CancelRun, pb.CancelRunRequest(run_id=run_id, reason=reason))

    # ------------------------------------------------------------ catalog, summary, health

    def list_scenarios(self) -> list[pb.Scenario]:
        return list(self._unary("ListScenarios", self._runner.ListScenarios, pb.ListScenariosRequest()).scenarios)

    def get_summary(self, recent_limit: int = 0) -> pb.Summary:
        return self._unary("GetSummary", self._runner.GetSummary, pb.GetSummaryRequest(recent_limit=recent_limit))

    def get_resilience(self) -> pb.Resilience:
        return self._unary("GetResilience", self._runner.GetResilience, pb.GetResilienceRequest())

    # ------------------------------------------------------------ admin

    def get_status(self) -> pb.AdminStatus:
        """AdminService.GetStatus with the admin token."""
        return self._unary("GetStatus", self._admin.GetStatus, pb.GetStatusRequest(), self._admin_metadata)

    def restart_workers(self, *, acknowledge_override: bool = False, reason: str = "") -> pb.RestartWorkersResponse:
        """AdminService.RestartWorkers. Not retried: a restart is an action, and an
        attempt whose answer was lost may have restarted the pool already."""
        request = pb.RestartWorkersRequest(acknowledge_override=acknowledge_override, reason=reason)
        try:
            return self._admin.RestartWorkers(
                request, timeout=self.call_timeout_s, metadata=self._admin_metadata or None
            )
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
