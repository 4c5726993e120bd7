"""Fan-out logic: conflation, ordering, overflow, late subscribers."""

import asyncio

import pytest

from protos.runner.v1 import runner_pb2 as pb
from runner_service.progress import RunChannel, Subscription


def progress(seq: int, done: int) -> pb.RunEvent:
    event = pb.RunEvent(run_id="r", seq=seq)
    event.progress.done = done
    return event


def log(seq: int, text: str = "x") -> pb.RunEvent:
    event = pb.RunEvent(run_id="r", seq=seq)
    event.log.message = text
    return event


def state(seq: int, value: int) -> pb.RunEvent:
    event = pb.RunEvent(run_id="r", seq=seq)
    event.state_change.state = value
    return event


async def drain(sub: Subscription) -> list[int]:
    seqs = []
    while (event := await asyncio.wait_for(sub.next(), 1)) is not None:
        seqs.append(event.seq)
    return seqs


async def test_consecutive_progress_conflates_but_logs_and_states_stay():
    sub = Subscription(max_pending=100)
    for event in [progress(1, 1), progress(2, 2), log(3), progress(4, 4), progress(5, 5), state(6, pb.SUCCEEDED)]:
        sub.push(event)
    sub.close()
    assert await drain(sub) == [2, 3, 5, 6]


async def test_watcher_too_far_behind_overflows_instead_of_growing():
    sub = Subscription(max_pending=3)
    for seq in range(1, 5):
        sub.push(log(seq))
    with pytest.raises(OverflowError):
        await sub.next()


async def test_next_waits_for_a_push():
    sub = Subscription(max_pending=10)
    waiter = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    assert not waiter.done()
    sub.push(log(7))
    assert (await asyncio.wait_for(waiter, 1)).seq == 7


async def test_late_subscriber_gets_history_then_live_events_in_order():
    first = state(1, pb.QUEUED)
    channel = RunChannel("r", last_seq=1, max_pending=100, history=[first])
    channel.publish(state(channel.next_seq(), pb.RUNNING))
    channel.publish(progress(channel.next_seq(), 1))
    channel.publish(progress(channel.next_seq(), 2))
    replay_up_to, tail, sub = channel.subscribe(after_seq=0)
    assert replay_up_to == 0  # everything is in memory: no database read
    assert [e.seq for e in tail] == [1, 2, 4]  # progress 3 superseded by 4
    channel.publish(log(channel.next_seq()))
    channel.close()
    assert await drain(sub) == [5]


async def test_subscriber_before_history_start_reads_the_store_up_to_persisted():
    channel = RunChannel("r", last_seq=10, max_pending=100)  # adopted from the store
    channel.publish(log(channel.next_seq()))  # 11, not yet committed
    replay_up_to, tail, _sub = channel.subscribe(after_seq=3)
    assert replay_up_to == 10
    assert [e.seq for e in tail] == [11]
    channel.mark_persisted(11)
    replay_up_to, tail, _sub = channel.subscribe(after_seq=11)
    assert replay_up_to == 11 and tail == []


async def test_an_aborted_channel_ends_its_watchers_with_an_error():
    channel = RunChannel("r", last_seq=1, max_pending=10)
    _, _, sub = channel.subscribe(after_seq=1)
    channel.close(aborted=True)
    with pytest.raises(ConnectionAbortedError):
        await sub.next()


async def test_progress_is_paced_to_the_latest_and_other_events_are_not_held():
    sub = Subscription(max_pending=100, progress_interval=0.2)
    loop = asyncio.get_running_loop()
    sub.push(progress(1, 1))
    first = await asyncio.wait_for(sub.next(), 1)
    assert first.seq == 1  # nothing delivered lately: out at once
    started = loop.time()
    for seq in range(2, 6):
        sub.push(progress(seq, seq))
    held = await asyncio.wait_for(sub.next(), 1)
    assert held.seq == 5  # the latest, after the pace
    assert loop.time() - started >= 0.09  # the pace is jittered by ±50 %
    # A log behind a held progress releases both at once, in order.
    sub.push(progress(6, 6))
    waiter = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    started = loop.time()
    sub.push(log(7))
    assert (await asyncio.wait_for(waiter, 1)).seq == 6
    assert (await asyncio.wait_for(sub.next(), 1)).seq == 7
    assert loop.time() - started < 0.1
    # The end of the stream releases a held progress too.
    sub.push(progress(8, 8))
    sub.close()
    assert await drain(sub) == [8]
