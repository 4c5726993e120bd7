"""The client's pure logic: what is retried, the waits, the throttle, the event
cursor, specs and error parsing. No server."""

from __future__ import annotations

import random

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_client import errors, events, retry, specs


def error(code: grpc.StatusCode, reason: str | None = None, retry_after_s: float | None = None) -> errors.RunnerError:
    if reason is None and retry_after_s is None:
        return errors.make_error(code, "x")
    return _with(code, reason, retry_after_s)


def _with(code: grpc.StatusCode, reason: str | None, retry_after_s: float | None) -> errors.RunnerError:
    details = []
    if reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="runner.v1", metadata={"pending": "3"}))
        details.append(packed)
    if retry_after_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
    return errors.make_error(code, "x", status_pb2.Status(code=code.value[0], message="x", details=details))


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.UNAVAILABLE, "DRAINING", True),
        (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN", True),
        (grpc.StatusCode.UNAVAILABLE, "DB_POOL_EXHAUSTED", True),
        (grpc.StatusCode.UNAVAILABLE, "DB_UNAVAILABLE", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        (grpc.StatusCode.NOT_FOUND, None, False),
        (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, False),
        (grpc.StatusCode.UNAUTHENTICATED, None, False),
        (grpc.StatusCode.PERMISSION_DENIED, None, False),
        (grpc.StatusCode.INTERNAL, None, False),
    ],
)
def test_retryable_is_exactly_what_the_spec_table_marks(code, reason, expected):
    assert retry.retryable(error(code, reason)) is expected
    assert retry.resumable(error(code, reason)) is (expected or reason == "WATCHER_TOO_SLOW")


def test_rich_details_become_typed_fields():
    exc = _with(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", 1.5)
    assert isinstance(exc, errors.ResourceExhausted)
    assert (exc.reason, exc.retry_after_s, exc.metadata) == ("QUEUE_FULL", 1.5, {"pending": "3"})
    bad = any_pb2.Any()
    violation = error_details_pb2.BadRequest.FieldViolation(field="spec.diagnostic.ticks", description="too big")
    bad.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    invalid = errors.make_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", status_pb2.Status(code=3, details=[bad]))
    assert isinstance(invalid, errors.InvalidArgument)
    assert invalid.field_violations == (errors.FieldViolation("spec.diagnostic.ticks", "too big"),)
    assert "spec.diagnostic.ticks: too big" in str(invalid)
    assert type(errors.make_error(grpc.StatusCode.DATA_LOSS, "?")) is errors.RunnerError


def test_backoff_grows_within_its_jittered_bounds_and_is_capped():
    policy = retry.RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, backoff_multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for n, high in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        assert policy.backoff_bounds_s(n) == pytest.approx((high / 2, high))
        for _ in range(200):
            assert high / 2 <= policy.delay_s(n, None, rng) <= high


def test_retry_info_is_a_lower_bound_with_a_little_jitter_above():
    policy = retry.RetryPolicy(initial_backoff_s=0.1, hint_jitter=0.2)
    rng = random.Random(1)
    delays = [policy.delay_s(1, 2.0, rng) for _ in range(500)]
    assert min(delays) >= 2.0 and max(delays) <= 2.4
    assert max(delays) - min(delays) > 0.2  # spread: clients told the same delay do not come back together


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attempts(policy: retry.RetryPolicy, throttle: retry.RetryThrottle | None = None, notices=None) -> tuple:
    clock = FakeClock()
    state = retry.Attempts(
        "SubmitRun",
        policy,
        throttle or retry.RetryThrottle(),
        call_timeout_s=5.0,
        on_retry=None if notices is None else notices.append,
        clock=clock,
        rng=random.Random(3),
    )
    return state, clock


def test_attempts_are_bounded_and_the_error_says_why_it_gave_up():
    notices: list[retry.RetryNotice] = []
    state, clock = attempts(retry.RetryPolicy(max_attempts=3), notices=notices)
    delays = []
    for _ in range(3):
        state.begin()
        failure = error(grpc.StatusCode.UNAVAILABLE)
        delay = state.failed(failure)
        if delay is None:
            break
        delays.append(delay)
        clock.now += delay
    assert len(delays) == 2 and delay is None
    assert failure.attempts == 3 and failure.gave_up == "attempts"
    assert [n.attempt for n in notices] == [1, 2]


def test_a_wait_past_the_deadline_is_not_started():
    state, clock = attempts(retry.RetryPolicy(max_attempts=10, deadline_s=3.0))
    state.begin()
    assert state.failed(error(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", 1.0)) is not None
    clock.now += 1.1
    assert state.begin() == pytest.approx(1.9)  # a retry's timeout is cut to what is left of the deadline
    clock.now += 0.1
    late = error(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", 2.0)
    assert state.failed(late) is None and late.gave_up == "deadline"


def test_errors_not_retryable_are_raised_at_the_first_attempt():
    state, _ = attempts(retry.RetryPolicy())
    state.begin()
    failure = error(grpc.StatusCode.NOT_FOUND)
    assert state.failed(failure) is None
    assert failure.attempts == 1 and failure.gave_up is None


def test_the_throttle_stops_retries_once_half_its_tokens_are_gone_and_recovers_with_successes():
    throttle = retry.RetryThrottle(max_tokens=4, token_ratio=0.5)
    state, _ = attempts(retry.RetryPolicy(max_attempts=10), throttle)
    state.begin()
    assert state.failed(error(grpc.StatusCode.UNAVAILABLE)) is not None  # 3 tokens left > 2
    state.begin()
    throttled = error(grpc.StatusCode.UNAVAILABLE)
    assert state.failed(throttled) is None and throttled.gave_up == "throttled"  # 2 left: not above half
    assert throttle.tokens == 2
    throttle.record_success()
    assert throttle.allows_retry() and throttle.tokens == 2.5
    for _ in range(10):
        throttle.record_success()
    assert throttle.tokens == 4  # capped
    for _ in range(10):
        throttle.record_failure()
    assert throttle.tokens == 0 and not throttle.allows_retry()


def test_a_stream_that_delivers_starts_a_fresh_budget():
    state, clock = attempts(retry.RetryPolicy(max_attempts=2, deadline_s=5.0))
    for _ in range(5):  # five losses, each after an event: each gets its retry
        state.begin()
        state.progressed()
        clock.now += 60.0  # long after the first attempt's deadline
        state.progressed()
        assert state.failed(error(grpc.StatusCode.UNAVAILABLE), resuming=True) is not None
    state.begin()
    lost = error(grpc.StatusCode.UNAVAILABLE)
    assert state.failed(lost, resuming=True) is None and lost.gave_up == "attempts"
    slow = error(grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")
    fresh, _ = attempts(retry.RetryPolicy())
    fresh.begin()
    assert fresh.failed(slow, resuming=True) is not None
    assert fresh.failed(error(grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")) is None  # not for a unary call


def event(seq: int, run_id: str = "r", state: int | None = None) -> pb.RunEvent:
    out = pb.RunEvent(run_id=run_id, seq=seq)
    if state is None:
        out.progress.done = seq
    else:
        out.state_change.state = state
    return out


def test_the_cursor_delivers_each_seq_once_in_order_and_stops_at_the_terminal_event():
    cursor = events.EventCursor()
    first = [event(1, state=pb.QUEUED), event(2, state=pb.RUNNING), event(3), event(4)]
    assert [cursor.accept(e) for e in first] == [True] * 4
    assert cursor.run_id == "r" and cursor.last_seq == 4
    # A resumed stream that repeats what was delivered, then goes on.
    again = [event(3), event(4), event(6), event(5), event(7, state=pb.SUCCEEDED), event(8)]
    assert [cursor.accept(e) for e in again] == [False, False, True, False, True, False]
    assert cursor.finished and cursor.final_state == pb.SUCCEEDED and cursor.delivered == 6
    assert not events.EventCursor("r").accept(event(1, run_id="other"))


def test_a_submission_always_has_a_request_id():
    spec = specs.diagnostic(ticks=5, tick_s=0.02)
    a, b = specs.submit_request(spec), specs.submit_request(spec)
    assert a.request_id and b.request_id and a.request_id != b.request_id
    assert specs.submit_request(spec, request_id="mine").request_id == "mine"
    given = pb.SubmitRunRequest(spec=spec, request_id="kept")
    completed = specs.submit_request(given, labels={"k": "v"}, run_timeout_s=1.5, max_attempts=2)
    assert completed.request_id == "kept" and dict(completed.labels) == {"k": "v"}
    assert completed.timeout.ToMilliseconds() == 1500 and completed.max_attempts == 2
    assert not given.labels  # the caller's request is not changed
    assert spec.diagnostic.tick_duration.ToMilliseconds() == 20


def test_spec_builders_fill_the_schema_fields():
    sweep = specs.sweep(specs.simulation_spec("duel"), "sides.red.units.0.count", [10, 20.5, "x"], iterations=3)
    assert [v.WhichOneof("kind") for v in sweep.sweep.values] == ["number_value", "number_value", "string_value"]
    batch = specs.batch("duel", iterations=5, overrides={"sides": {"red": {"units": {"0": {"count": 3}}}}})
    assert batch.batch.simulation.config_overrides["sides"]["red"]["units"]["0"]["count"] == 3
    assert specs.kind_of(specs.plugin("count", {"n": 1})) == "count"
    assert specs.kind_of(batch) == "batch"
