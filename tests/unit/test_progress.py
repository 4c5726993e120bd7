"""Fan-out logic: conflation, ordering, overflow, late subscribers."""

import asyncio

import pytest

from protos.runner.v1 import runner_pb2 as pb
from runner_service import progress as progress_mod
from runner_service.progress import Pacer, RunChannel, Subscription


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


def test_the_budget_slows_every_watcher_once_many_watch():
    pacer = Pacer(budget=100.0, adaptive=False)
    assert pacer.period(0.01) == 0.01
    for _ in range(10):
        pacer.joined()
    assert pacer.period(0.01) == pytest.approx(0.1)  # ten watchers share 100 a second
    assert pacer.period(0.5) == 0.5  # a slower own pace stays
    pacer.left(10)
    assert pacer.period(0.01) == 0.01


async def test_the_pace_slows_while_the_event_loop_lags_and_recovers_after():
    import time

    pacer = Pacer()
    channel = RunChannel("r", last_seq=1, max_pending=10, pacer=pacer)
    _, _, sub = channel.subscribe(1)
    assert pacer.period(0.01) == 0.01
    for _ in range(3):  # the loop held up three times, past the lag limit
        await asyncio.sleep(Pacer.PROBE_S / 2)
        time.sleep(2 * Pacer.PROBE_S)
    await asyncio.sleep(0)
    assert pacer.period(0.01) >= 2 * Pacer.MIN_SLOW_PERIOD_S
    for _ in range(100):  # bounded: eases back once the loop keeps time
        if pacer.period(0.01) == 0.01:
            break
        await asyncio.sleep(Pacer.PROBE_S)
    assert pacer.period(0.01) == 0.01
    channel.unsubscribe(sub)
    assert pacer.watchers == 0


async def test_while_progress_flows_the_one_after_the_pace_goes_out_not_the_held_one(monkeypatch):
    monkeypatch.setattr(progress_mod.random, "random", lambda: 0.5)  # the pace without its jitter
    sub = Subscription(max_pending=100, progress_interval=0.3)
    loop = asyncio.get_running_loop()
    sub.push(progress(1, 1))
    assert (await asyncio.wait_for(sub.next(), 1)).seq == 1
    sent = loop.time()
    waiter = asyncio.ensure_future(sub.next())
    sub.push(progress(2, 2))
    await asyncio.sleep(0.02)
    sub.push(progress(3, 3))  # arrives while 2 is held: progress flows
    await asyncio.sleep(max(0.0, sent + 0.4 - loop.time()))  # the pace (0.3 s) is over
    assert not waiter.done()  # waiting for the next one rather than sending 3
    sub.push(progress(4, 4))
    assert (await asyncio.wait_for(waiter, 1)).seq == 4
