"""What the runner reports about itself: a log line per run transition, and Prometheus metrics
(in a registry of the process's own).

The parts that know report to an ``Observer`` with small calls: the scheduler (a run
submitted, started, cancelled, requeued, finished), the watchers (joined, left, cut off), the
store's writer thread (a commit's latency). ``Observer`` writes each run transition as one log
line (logger ``runner_service.runs``, INFO) and counts nothing (metrics off); ``RunnerMetrics``
counts too. What is a state rather than an event (runs waiting and running, workers, churn
policy, the database circuit, held writes) is read when a scrape asks for it: the scrape's
thread hands ``state`` to the event loop and waits for the answer, so nothing is counted twice
and the hot paths pay nothing for it. ``RpcInterceptor`` times every RPC by method and status
code (server-streaming ones to their end) and binds the call's trace context
(``traceparent``, ``x-request-id``) for the log lines written while it is served.

Label values are bounded: kinds are the registered job kinds (any other is ``other``), states
the terminal run states, methods the served ones, codes gRPC's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runner_service import convert, endings, logs
from runner_service.endings import Move
from runner_service.runs import TERMINAL, RunState

if TYPE_CHECKING:
    from protos.runner.v1 import runner_pb2 as pb
    from runner_service.store import RunRecord

log = logging.getLogger(__name__)
#: One line per run transition: submitted, started, cancel requested, requeued, finished.
run_log = logging.getLogger("runner_service.runs")

OTHER = "other"
#: How long a scrape waits for the event loop to hand it the runner's state.
STATE_TIMEOUT_S = 1.0

RUN_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

POLICY_STATES = ("allowed", "cooling_down", "blocked")
# Final states that are what somebody asked for; any other ending is a warning.
_CALM_ENDINGS = frozenset({RunState.SUCCEEDED, RunState.CANCELLED, RunState.DEADLINE_EXCEEDED})
CIRCUIT_STATES = ("closed", "open", "half_open")


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """What a scrape reads from the running process (taken on the event loop)."""

    queued: int
    running: int
    draining: bool
    workers_size: int
    workers_alive: int
    workers_busy: int
    worker_restarts_total: int
    worker_restarts_in_window: int
    churn_policy: str
    circuit: str
    circuit_opened_total: int
    held_writes: int


def _seconds(later_us: int | None, earlier_us: int | None) -> float | None:
    if later_us is None or earlier_us is None:
        return None
    return max(0.0, (later_us - earlier_us) / 1e6)


class Observer:
    """What the runner's parts report. Run transitions are logged (one line each); nothing is
    counted: metrics are off."""

    def run_submitted(self, record: RunRecord) -> None:
        """A run was stored QUEUED by a submission (not a retry of one)."""
        if run_log.isEnabledFor(logging.INFO):
            extra: dict[str, object] = {"run_id": record.run_id, "kind": record.kind}
            extra["request_id"] = record.request_id or ""
            if record.timeout_ms is not None:
                extra["timeout_s"] = record.timeout_ms / 1000
            run_log.info("run submitted", extra=extra)

    def run_started(self, record: RunRecord, worker: int, pid: int | None) -> None:
        """A run was handed to a worker (``record.start_us`` set)."""
        if run_log.isEnabledFor(logging.INFO):
            extra = {
                "run_id": record.run_id,
                "kind": record.kind,
                "replica": record.replica,
                "worker": worker,
                "pid": pid,
                "attempt": record.attempt,
                "queue_wait_s": _seconds(record.start_us, record.create_us),
            }
            run_log.info("run started", extra=extra)

    def run_cancel_requested(self, record: RunRecord, reason: str) -> None:
        """Why a run is being stopped, recorded before it is (its end follows)."""
        run_log.info(
            "run cancel requested",
            extra={"run_id": record.run_id, "kind": record.kind, "state": record.state.name, "reason": reason},
        )

    def run_requeued(self, record: RunRecord, reason: str) -> None:
        """A run held here went back to the database's queue (QUEUED, for any replica)."""
        extra = {"run_id": record.run_id, "kind": record.kind, "attempt": record.attempt, "reason": reason}
        run_log.info("run requeued", extra=extra)

    def runs_moved(self, records: Iterable[RunRecord], *moves: Move) -> None:
        """A transaction of this replica moved runs it did not hold (the queue in the database),
        each by one of `moves`: a queued one ended, or a lost replica's run ended or went back
        to the queue."""
        for record in records:
            reason = endings.reason_of(record, *moves)
            if record.state.terminal:
                change = convert.state_event(record.run_id, 0, 0, record.state, None, reason).state_change
                self.run_finished(record, change)
            elif record.state == RunState.QUEUED:
                self.run_requeued(record, reason)

    def run_finished(self, record: RunRecord, change: pb.StateChange) -> None:
        """A run's final state was stored (``record`` holds it; ``change`` is its final event)."""
        if run_log.isEnabledFor(logging.INFO):
            extra = {
                "run_id": record.run_id,
                "kind": record.kind,
                "state": record.state.name,
                "reason": change.reason,
                "duration_s": _seconds(record.end_us, record.start_us),
                "total_s": _seconds(record.end_us, record.create_us),
            }
            if change.HasField("error"):
                extra["error"] = change.error.message
            level = logging.INFO if record.state in _CALM_ENDINGS else logging.WARNING
            run_log.log(level, "run finished", extra=extra)

    def watcher_joined(self) -> None:
        """A watcher subscribed to a run's live events."""

    def watcher_left(self) -> None:
        """A watcher's stream ended (whatever the reason)."""

    def watcher_cut_off(self) -> None:
        """A watcher fell too far behind and was ended (RESOURCE_EXHAUSTED)."""

    def store_committed(self, seconds: float) -> None:
        """The store's writer committed a batch (called from the writer thread)."""


class RunnerMetrics(Observer):
    """The runner's metrics in a registry of its own (``registry``), for the job kinds
    ``kinds`` (any other kind is counted as ``other``). Thread-safe: the store's writer reports
    from its thread."""

    def __init__(self, kinds: Collection[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        kinds = sorted({*kinds, OTHER})
        self.submitted = Counter(
            "runner_runs_submitted", "Runs stored QUEUED by a submission, by job kind.", ["kind"], registry=registry
        )
        self.finished = Counter(
            "runner_runs_finished",
            "Runs whose final state this process stored, by job kind and final state.",
            ["kind", "state"],
            registry=registry,
        )
        self.duration = Histogram(
            "runner_run_duration_seconds",
            "Time from a run's start on a worker to its final state, by job kind.",
            ["kind"],
            buckets=RUN_DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "runner_run_queue_wait_seconds",
            "Time from a run's submission to its start on a worker, by job kind.",
            ["kind"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.watchers = Gauge(
            "runner_watchers", "Watchers subscribed to runs' live events (WatchRun, ExecuteRun).", registry=registry
        )
        self.watchers_cut_off = Counter(
            "runner_watchers_cut_off",
            "Watchers ended because they fell too far behind (RESOURCE_EXHAUSTED; they may resume).",
            registry=registry,
        )
        self.commit = Histogram(
            "runner_store_commit_seconds",
            "Time of one commit of the store's writer (a batch of writes in one transaction).",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.rpc = Histogram(
            "runner_rpc_duration_seconds",
            "Time to serve an RPC, by service, method and status code (server-streaming RPCs to their end).",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        # Children bound once, so that reporting is a dict lookup and an increment.
        self._submitted = {kind: self.submitted.labels(kind) for kind in kinds}
        self._finished = {(kind, state): self.finished.labels(kind, state.name) for kind in kinds for state in TERMINAL}
        self._duration = {kind: self.duration.labels(kind) for kind in kinds}
        self._queue_wait = {kind: self.queue_wait.labels(kind) for kind in kinds}
        self._state_collector: _StateCollector | None = None

    def watch_state(self, state: Callable[[], State], loop: asyncio.AbstractEventLoop) -> None:
        """Read ``state()`` on ``loop`` at every scrape (for the gauges of the runner's state)."""
        if self._state_collector is not None:
            self.registry.unregister(self._state_collector)
        self._state_collector = _StateCollector(state, loop)
        self.registry.register(self._state_collector)

    # ------------------------------------------------------------ Observer

    def run_submitted(self, record: RunRecord) -> None:
        super().run_submitted(record)
        (self._submitted.get(record.kind) or self._submitted[OTHER]).inc()

    def run_started(self, record: RunRecord, worker: int, pid: int | None) -> None:
        super().run_started(record, worker, pid)
        wait = _seconds(record.start_us, record.create_us)
        if wait is not None:
            (self._queue_wait.get(record.kind) or self._queue_wait[OTHER]).observe(wait)

    def run_finished(self, record: RunRecord, change: pb.StateChange) -> None:
        super().run_finished(record, change)
        kind = record.kind if record.kind in self._duration else OTHER
        child = self._finished.get((kind, record.state))
        if child is not None:
            child.inc()
        duration = _seconds(record.end_us, record.start_us)
        if duration is not None:
            self._duration[kind].observe(duration)

    def watcher_joined(self) -> None:
        self.watchers.inc()

    def watcher_left(self) -> None:
        self.watchers.dec()

    def watcher_cut_off(self) -> None:
        self.watchers_cut_off.inc()

    def store_committed(self, seconds: float) -> None:
        self.commit.observe(seconds)


class _StateCollector(Collector):
    """The runner's state as gauges, read on the event loop at each scrape. A loop that does not
    answer within STATE_TIMEOUT_S leaves these metrics out of that scrape (the scrape still
    answers, with everything else)."""

    def __init__(self, state: Callable[[], State], loop: asyncio.AbstractEventLoop) -> None:
        self._state = state
        self._loop = loop

    def describe(self) -> list:
        return []  # read at scrape time only: nothing to check at registration

    def _read(self) -> State | None:
        if self._loop.is_closed():
            return None
        future: concurrent.futures.Future[State] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._state())
                except Exception as exc:  # noqa: BLE001 - handed to the scrape, which logs it
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(take)
            return future.result(STATE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("a metrics scrape got no answer from the event loop", extra={"timeout_s": STATE_TIMEOUT_S})
        except RuntimeError:  # the loop closed meanwhile
            pass
        except Exception:
            log.exception("reading the runner's state for a metrics scrape failed")
        return None

    def collect(self) -> Iterator:
        state = self._read()
        if state is None:
            return
        yield GaugeMetricFamily(
            "runner_queue_depth",
            "Runs waiting for a worker in this process. With the queue in the database (replicas on "
            "PostgreSQL), the runs this replica claimed and has not started yet; the runs still in the "
            "database's queue are not counted here.",
            value=state.queued,
        )
        yield GaugeMetricFamily("runner_runs_running", "Runs executing on this process's workers.", value=state.running)
        yield GaugeMetricFamily(
            "runner_draining", "1 while the runner shuts down (new submissions are refused).", value=int(state.draining)
        )
        workers = GaugeMetricFamily("runner_workers", "Worker processes, by what they are.", labels=["state"])
        workers.add_metric(["configured"], state.workers_size)
        workers.add_metric(["alive"], state.workers_alive)
        workers.add_metric(["busy"], state.workers_busy)
        yield workers
        yield CounterMetricFamily(
            "runner_worker_restarts",
            "Worker processes replaced after an unexpected end (crash, kill, lost heartbeat).",
            value=state.worker_restarts_total,
        )
        yield GaugeMetricFamily(
            "runner_worker_restarts_in_window",
            "Worker restarts within the churn window (RUNNER_WATCHDOG_WINDOW_S).",
            value=state.worker_restarts_in_window,
        )
        policy = GaugeMetricFamily(
            "runner_worker_churn_policy",
            "The worker churn policy: 1 for the state in force (allowed, cooling_down, blocked).",
            labels=["state"],
        )
        for name in POLICY_STATES:
            policy.add_metric([name], int(state.churn_policy == name))
        yield policy
        circuit = GaugeMetricFamily(
            "runner_db_circuit_state",
            "The database circuit breaker: 1 for the state in force (closed, open, half_open).",
            labels=["state"],
        )
        for name in CIRCUIT_STATES:
            circuit.add_metric([name], int(state.circuit == name))
        yield circuit
        yield CounterMetricFamily(
            "runner_db_circuit_opened", "Times the database circuit opened.", value=state.circuit_opened_total
        )
        yield GaugeMetricFamily(
            "runner_store_held_writes",
            "Writes held after a transient database failure, waiting to be retried.",
            value=state.held_writes,
        )


# ------------------------------------------------------------ RPCs


def _code_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if code is not None else "OK"


def _ended_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status code an RPC ended with: what its handler set (abort included), CANCELLED for
    a call cancelled under it, UNKNOWN for an exception nobody mapped."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if code is not None:
        return _code_name(code)
    return "OK" if exc is None else "UNKNOWN"


class _MethodTimer:
    """The latency histogram children of one method, by code (bound on first use)."""

    __slots__ = ("_children", "_histogram", "_method", "_service")

    def __init__(self, histogram: Histogram, path: str) -> None:
        service, _, method = path.lstrip("/").partition("/")
        self._histogram = histogram
        self._service = service
        self._method = method
        self._children: dict[str, object] = {}

    def observe(self, code: str, seconds: float) -> None:
        child = self._children.get(code)
        if child is None:
            child = self._children[code] = self._histogram.labels(self._service, self._method, code)
        child.observe(seconds)  # type: ignore[attr-defined]


def _timed(handler: grpc.RpcMethodHandler, timer: _MethodTimer) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour timed to its end (the last message of a stream)."""
    clock = time.perf_counter
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary_unary(request, context):
            start = clock()
            failure: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                timer.observe(_ended_code(context, failure), clock() - start)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        generator = handler.unary_stream

        async def unary_stream(request, context):
            start = clock()
            failure: BaseException | None = None
            try:
                async for item in generator(request, context):
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                timer.observe(_ended_code(context, failure), clock() - start)

        return handler._replace(unary_stream=unary_stream)
    if handler.unary_stream is not None:  # writes with context.write()
        writer = handler.unary_stream

        async def unary_stream_writer(request, context):
            start = clock()
            failure: BaseException | None = None
            try:
                return await writer(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                timer.observe(_ended_code(context, failure), clock() - start)

        return handler._replace(unary_stream=unary_stream_writer)
    return handler  # client-streaming: not served by the runner


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Binds each call's trace context for the log lines written while it is served and, with
    ``metrics``, times it by method and code. Handlers are wrapped once per method."""

    def __init__(self, metrics: RunnerMetrics | None) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        traceparent = request_id = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "traceparent":
                traceparent = value
            elif key == "x-request-id":
                request_id = value
        if traceparent is not None or request_id is not None:
            logs.bind_call(traceparent, request_id)
        handler = await continuation(handler_call_details)
        if handler is None or self._metrics is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _timed(handler, _MethodTimer(self._metrics.rpc, method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def build(metrics_listen: str, kinds: Collection[str]) -> tuple[Observer, RunnerMetrics | None]:
    """The observer for the settings: RunnerMetrics when metrics are served, else a no-op."""
    if not metrics_listen:
        return Observer(), None
    recorder = RunnerMetrics(kinds)
    return recorder, recorder
