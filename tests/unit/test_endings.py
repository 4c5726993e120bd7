"""endings.outcome: the final state of a run held here, from what happened to it and
why it was being stopped. Every ending against every cancel reason (and none)."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2

from runner_service import endings
from runner_service.runs import CancelReason, RunState

HEARTBEAT_TIMEOUT_S = 7.0
ALL_CANCELS = [None, *CancelReason]


def decide(ending: endings.Ending, cancel: CancelReason | None) -> endings.Outcome:
    return endings.outcome(ending, cancel, HEARTBEAT_TIMEOUT_S)


def reason_of(outcome: endings.Outcome) -> str:
    assert outcome.error is not None
    info = error_details_pb2.ErrorInfo()
    assert outcome.error.details[0].Unpack(info)
    return info.reason


@pytest.mark.parametrize("cancel", ALL_CANCELS)
def test_a_result_returned_is_a_success_whatever_was_asked_meanwhile(cancel):
    result = struct_pb2.Struct()
    result.update({"ticks": 3})
    outcome = decide(endings.JobDone(result), cancel)
    assert (outcome.state, outcome.reason, outcome.error) == (RunState.SUCCEEDED, "completed", None)
    assert outcome.result == result and outcome.stopped_for is None


@pytest.mark.parametrize("cancel", ALL_CANCELS)
def test_a_job_that_raised_fails_with_its_own_reason(cancel):
    outcome = decide(endings.JobFailed("RESULT_TOO_LARGE", "the result is 2 MB"), cancel)
    assert (outcome.state, outcome.reason) == (RunState.FAILED, "job failed")
    assert outcome.error.message == "the result is 2 MB" and reason_of(outcome) == "RESULT_TOO_LARGE"


@pytest.mark.parametrize("ending", [endings.JobStopped(), endings.NotStarted()], ids=["job stopped", "not started"])
@pytest.mark.parametrize("cancel", list(CancelReason))
def test_a_stopped_run_ends_in_the_state_its_cancel_reason_stands_for(ending, cancel):
    outcome = decide(ending, cancel)
    assert outcome.state == cancel.final_state and outcome.reason == cancel.value
    assert outcome.error.message == f"run stopped: {cancel.value}"
    assert outcome.stopped_for is cancel


def test_a_job_that_stopped_unasked_counts_as_a_client_cancel():
    outcome = decide(endings.JobStopped(), None)
    assert outcome.state == RunState.CANCELLED and outcome.error.code == code_pb2.CANCELLED


def test_the_final_states_of_the_cancel_reasons():
    assert {reason: reason.final_state for reason in CancelReason} == {
        CancelReason.CLIENT_REQUEST: RunState.CANCELLED,
        CancelReason.CALL_CANCELLED: RunState.CANCELLED,
        CancelReason.DEADLINE: RunState.DEADLINE_EXCEEDED,
        CancelReason.SHUTDOWN: RunState.INTERRUPTED,
        CancelReason.WORKER_LOST: RunState.FAILED,
        CancelReason.RESTART: RunState.INTERRUPTED,
    }


def test_a_worker_gone_silent_and_killed_ends_worker_lost_before_anything_else():
    outcome = decide(endings.WorkerGone(-9, killed=True, failure="garbled frame"), CancelReason.WORKER_LOST)
    assert (outcome.state, reason_of(outcome)) == (RunState.FAILED, "WORKER_LOST")
    assert "7 s" in outcome.error.message


@pytest.mark.parametrize("cancel", [c for c in ALL_CANCELS if c is not CancelReason.WORKER_LOST])
def test_a_worker_replaced_for_what_it_sent_fails_the_run(cancel):
    outcome = decide(endings.WorkerGone(-9, killed=True, failure="an unreadable message"), cancel)
    assert (outcome.state, outcome.reason, reason_of(outcome)) == (
        RunState.FAILED,
        "worker replaced",
        "WORKER_PROTOCOL",
    )
    assert outcome.error.message.endswith("an unreadable message")


@pytest.mark.parametrize("cancel", [c for c in CancelReason if c is not CancelReason.WORKER_LOST])
def test_a_job_ignoring_its_cancel_killed_after_the_grace_ends_as_that_cancel_says(cancel):
    outcome = decide(endings.WorkerGone(-9, killed=True), cancel)
    assert outcome.state == cancel.final_state and outcome.stopped_for is cancel
    assert outcome.error.message == f"run stopped: {cancel.value}{endings.IGNORED_CANCEL}"


@pytest.mark.parametrize(
    ("killed", "cancel"),
    [(False, None), (False, CancelReason.CLIENT_REQUEST), (True, None)],
    ids=["died unasked", "died during a cancel's grace", "killed unasked"],
)
def test_a_worker_that_died_by_itself_or_unasked_is_a_crash(killed, cancel):
    outcome = decide(endings.WorkerGone(137, killed=killed), cancel)
    assert (outcome.state, outcome.reason, reason_of(outcome)) == (RunState.FAILED, "worker crashed", "WORKER_CRASHED")
    assert "exit code 137" in outcome.error.message and outcome.stopped_for is None


@pytest.mark.parametrize("cancel", ALL_CANCELS)
def test_a_run_no_worker_could_take_or_carry_fails_whatever_was_asked(cancel):
    handover = decide(endings.HandoverFailed(3, "worker 4 is gone"), cancel)
    assert (handover.state, handover.reason, reason_of(handover)) == (
        RunState.FAILED,
        "hand-over failed",
        "HANDOVER_FAILED",
    )
    assert handover.error.message == "the run could not be handed to a worker (3 attempts): worker 4 is gone"
    unhandable = decide(endings.Unhandable("cannot pickle 'generator'"), cancel)
    assert (unhandable.state, unhandable.reason) == (RunState.FAILED, "bad job parameters")


def test_anything_else_is_refused():
    with pytest.raises(TypeError):
        endings.outcome("finished", None, HEARTBEAT_TIMEOUT_S)  # type: ignore[arg-type]
