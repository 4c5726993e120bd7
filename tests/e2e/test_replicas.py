"""Several runner processes on one PostgreSQL database: the queue is the database.

Every test starts real `python -m runner_service` processes on a fresh database
and looks at what their callers see and what the database holds."""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import httpx
import pytest
import sqlalchemy as sa
from google.protobuf import json_format

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state, runner_env, wait_for_state
from tests.e2e.test_process import REPO, free_port, spawn, until  # noqa: F401 - spawn is a fixture

pytestmark = pytest.mark.timeout(240)

LONG = dict(ticks=6000, tick_s=0.01)  # a minute of cooperative sleeping
TERMINAL = {pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.DEADLINE_EXCEEDED, pb.INTERRUPTED}

COUNT_JOB = textwrap.dedent(
    """
    import os

    def count(params, ctx):
        # The side effect a run must have once: one line per execution.
        with open(params["path"], "a") as out:
            out.write(params["key"] + "\\n")
            out.flush()
        ctx.sleep(float(params.get("sleep", 0.0)))
        return {"key": params["key"]}
    """
)


@pytest.fixture
def count_job(tmp_path, monkeypatch):
    package = tmp_path / "replica_jobs"
    package.mkdir()
    (package / "rjobs.py").write_text(COUNT_JOB)
    monkeypatch.setenv("PYTHONPATH", str(package))
    return "count=rjobs:count"


def counted(path: pathlib.Path, key: str, sleep: float = 0.0, **request_fields) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest(**request_fields)
    request.spec.plugin.kind = "count"
    request.spec.plugin.parameters.update({"path": str(path), "key": key, "sleep": sleep})
    return request


def replica_env(url: str, name: str, **extra: str) -> dict[str, str]:
    """Settings of a replica in these tests: short leases and leader lock, so
    that a lost replica is noticed within seconds."""
    env = dict(
        RUNNER_DATABASE_URL=url,
        RUNNER_REPLICA=name,
        RUNNER_LEASE_TTL_S="2",
        RUNNER_LEADER_HEARTBEAT_S="0.5",
        RUNNER_LEADER_TTL_S="2",
        RUNNER_CLAIM_POLL_S="0.5",
        RUNNER_AUDIT_LOG_PATH=os.devnull,
    )
    env.update(extra)
    return env


def query(url: str, sql: str, **params) -> list[sa.Row]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def state_changes(url: str, run_id: str) -> list[tuple[int, int]]:
    """(previous, state) of every stored state event of a run, in seq order."""
    rows = query(url, "SELECT payload FROM run_events WHERE run_id = :r AND kind = 'state' ORDER BY seq", r=run_id)
    out = []
    for (payload,) in rows:
        event = pb.RunEvent.FromString(payload)
        out.append((event.state_change.previous, event.state_change.state))
    return out


async def until_or_logs(replicas, predicate, timeout_s: float, what: str) -> None:
    """until(), with the replicas' logs in the failure message."""
    try:
        await until(predicate, timeout_s, what)
    except AssertionError as exc:
        logs = "\n".join(f"--- {r.address}:\n{r.log_tail()}" for r in replicas)
        raise AssertionError(f"{exc}\n{logs}") from None


async def submit_retrying(stubs, request: pb.SubmitRunRequest, start: int = 0, attempts: int = 200) -> pb.Run:
    """Submit through the replicas in turn until one accepts (QUEUE_FULL waits)."""
    for attempt in range(attempts):
        stub = stubs[(start + attempt) % len(stubs)]
        try:
            return await stub.SubmitRun(request, timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("no replica accepted the run")


async def test_300_runs_through_two_replicas_each_execute_exactly_once(spawn, postgres_url, count_job, tmp_path):  # noqa: F811
    env = dict(RUNNER_JOBS=count_job, RUNNER_WORKERS="2")
    a = await spawn(tmp_path / "unused-a.db", **replica_env(postgres_url, "a", **env))
    b = await spawn(tmp_path / "unused-b.db", **replica_env(postgres_url, "b", **env))
    effects = tmp_path / "effects.txt"
    stubs = [a.stub, b.stub]
    port = free_port()
    genv = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "GATEWAY_"))}
    genv.update(GATEWAY_LISTEN=f"127.0.0.1:{port}", GATEWAY_UPSTREAM=f"ipv4:{a.address},{b.address}")
    genv.update(GATEWAY_METRICS_LISTEN="127.0.0.1:0")
    with open(tmp_path / "gateway.err", "wb") as err:
        gateway = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=genv, stderr=err)
    runs = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/health/ready")).status_code == 200
                except httpx.HTTPError:
                    return False

            deadline = time.monotonic() + 30
            while not await ready():
                assert gateway.poll() is None and time.monotonic() < deadline, "the gateway did not start"
                await asyncio.sleep(0.1)
            for i in range(300):  # through a, b and the gateway in turn
                request = counted(effects, f"k{i}", request_id=f"r{i}")
                if i % 3 == 2:
                    body = json_format.MessageToDict(request)
                    for _ in range(200):
                        answer = await http.post("/v1/runs", json=body)
                        if answer.status_code not in (429, 503):
                            break
                        await asyncio.sleep(0.05)
                    assert answer.status_code == 200, answer.text
                    runs.append(json_format.ParseDict(answer.json(), pb.Run(), ignore_unknown_fields=True))
                else:
                    runs.append(await submit_retrying(stubs, request, start=i))
    finally:
        gateway.terminate()
        gateway.wait(10)
    assert len({run.run_id for run in runs}) == 300

    async def ended() -> bool:
        rows = query(postgres_url, "SELECT count(*) FROM runs WHERE state NOT IN (1, 2)")
        return rows[0][0] == 300

    deadline = time.monotonic() + 120
    while not await ended():
        assert time.monotonic() < deadline, "runs did not all end"
        await asyncio.sleep(0.2)
    states = dict(query(postgres_url, "SELECT state, count(*) FROM runs GROUP BY state"))
    assert states == {pb.SUCCEEDED: 300}
    lines = effects.read_text().split()
    assert sorted(lines) == sorted(f"k{i}" for i in range(300)), "a run's side effect happened twice or never"
    by_replica = dict(query(postgres_url, "SELECT replica, count(*) FROM runs GROUP BY replica"))
    assert set(by_replica) == {"a", "b"} and min(by_replica.values()) > 30, by_replica
    for run in runs[::7]:
        changes = state_changes(postgres_url, run.run_id)
        assert changes == [(0, pb.QUEUED), (pb.QUEUED, pb.RUNNING), (pb.RUNNING, pb.SUCCEEDED)], changes
    # The same request_id through the other replica is the same run.
    again = await b.stub.SubmitRun(counted(effects, "k0", request_id="r0"), timeout=5)
    assert again.run_id == runs[0].run_id


async def test_two_replicas_started_together_on_an_empty_database_come_up(spawn, tmp_path):  # noqa: F811
    base = os.environ.get("RUNNER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("no PostgreSQL server (run scripts/test)")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"together_{os.getpid()}_{i}" for i in range(10)]  # 10 tries of 10
    try:
        for name in names:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            url = base.rsplit("/", 1)[0] + "/" + name
            pair = await asyncio.gather(
                spawn(tmp_path / "x.db", **replica_env(url, "one")),
                spawn(tmp_path / "y.db", **replica_env(url, "two")),
            )
            run = await pair[1].stub.SubmitRun(diagnostic(ticks=1), timeout=5)
            assert final_state(await events_of(pair[0].stub, run.run_id)) == pb.SUCCEEDED
            for running in pair:
                running.proc.send_signal(signal.SIGTERM)
            for running in pair:
                assert running.proc.wait(20) == 0, running.log_tail()
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def test_kill_9_of_a_replica_its_runs_end_or_run_again_on_the_other(spawn, postgres_url, tmp_path):  # noqa: F811
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a", RUNNER_WORKERS="2"))
    await until(lambda: query(postgres_url, "SELECT holder FROM leader_lock")[0][0] == "a", 10, "a to lead")
    once = await a.stub.SubmitRun(diagnostic(**LONG), timeout=5)
    retry_request = diagnostic(ticks=20, tick_s=0.1)
    retry_request.max_attempts = 2  # safe to run again from the start
    retried = await a.stub.SubmitRun(retry_request, timeout=5)
    await wait_for_state(a.stub, once.run_id, pb.RUNNING)
    await wait_for_state(a.stub, retried.run_id, pb.RUNNING)
    queued = [await a.stub.SubmitRun(diagnostic(ticks=2, tick_s=0.01), timeout=5) for _ in range(3)]
    assert [run.state for run in queued] == [pb.QUEUED] * 3
    # RUNNING is written behind by a few milliseconds: wait until the database has it.
    await until(
        lambda: query(postgres_url, "SELECT count(*) FROM runs WHERE state = 2 AND replica = 'a'")[0][0] == 2,
        10,
        "both runs stored RUNNING on a",
    )

    a.proc.kill()
    killed_at = time.monotonic()
    assert a.proc.wait(10) == -signal.SIGKILL
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b", RUNNER_WORKERS="2"))

    stmt = sa.text("SELECT state FROM runs WHERE run_id = :r")
    engine = sa.create_engine(postgres_url)
    try:
        while True:
            with engine.connect() as conn:
                first = conn.execute(stmt, {"r": once.run_id}).scalar()
                second = conn.execute(stmt, {"r": retried.run_id}).scalar()
            if (first == pb.INTERRUPTED and second != pb.RUNNING) or second == pb.SUCCEEDED:
                break
            assert time.monotonic() - killed_at < 2 + 2 + 5, (first, second)  # TTL + 2 s, and b's start
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    assert query(postgres_url, "SELECT holder FROM leader_lock")[0][0] == "b"
    interrupted = await b.stub.GetRun(pb.GetRunRequest(run_id=once.run_id), timeout=5)
    assert interrupted.state == pb.INTERRUPTED and interrupted.error.message
    events = await events_of(b.stub, retried.run_id, timeout=30)
    assert final_state(events) == pb.SUCCEEDED
    again = await b.stub.GetRun(pb.GetRunRequest(run_id=retried.run_id), timeout=5)
    assert (again.attempt, again.max_attempts, again.replica) == (2, 2, "b")
    assert state_changes(postgres_url, retried.run_id) == [
        (0, pb.QUEUED),
        (pb.QUEUED, pb.RUNNING),
        (pb.RUNNING, pb.QUEUED),
        (pb.QUEUED, pb.RUNNING),
        (pb.RUNNING, pb.SUCCEEDED),
    ]
    for run in queued:
        assert final_state(await events_of(b.stub, run.run_id)) == pb.SUCCEEDED
    assert query(postgres_url, "SELECT count(*) FROM runs WHERE state IN (1, 2)")[0][0] == 0


async def test_cancel_watch_and_execute_across_replicas(spawn, postgres_url, tmp_path):  # noqa: F811
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a"))
    on_a = await a.stub.SubmitRun(diagnostic(log_every=50, **LONG), timeout=5)
    await wait_for_state(a.stub, on_a.run_id, pb.RUNNING)
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b"))
    busy = await b.stub.SubmitRun(diagnostic(**LONG), timeout=5)  # b's only worker, from now on
    await wait_for_state(b.stub, busy.run_id, pb.RUNNING)
    assert query(postgres_url, "SELECT replica FROM runs WHERE run_id = :r", r=busy.run_id)[0][0] == "b"

    # WatchRun through b of a run on a: every event in order, then the terminal one.
    watched = []

    async def watch():
        async for event in b.stub.WatchRun(pb.WatchRunRequest(run_id=on_a.run_id), timeout=60):
            watched.append(event)

    watcher = asyncio.create_task(watch())
    await until(lambda: any(e.WhichOneof("event") == "log" for e in watched), 10, "a log line through b")
    started = time.monotonic()
    cancelled = await b.stub.CancelRun(pb.CancelRunRequest(run_id=on_a.run_id), timeout=5)
    assert cancelled.cancel_requested
    await asyncio.wait_for(watcher, 10)
    took = time.monotonic() - started
    assert final_state(watched) == pb.CANCELLED
    assert took < 2.0, f"cancel through another replica took {took:.3f} s"
    seqs = [e.seq for e in watched]
    assert seqs == sorted(set(seqs))
    stored = [e.seq for e in await events_of(a.stub, on_a.run_id) if e.WhichOneof("event") != "progress"]
    assert [s for s in seqs if s in set(stored)] == stored, "a stored event was not delivered"
    assert (await a.stub.GetRun(pb.GetRunRequest(run_id=on_a.run_id), timeout=5)).replica == "a"

    # ExecuteRun through b while b's worker is busy: a runs it; the call cancelled on b cancels it on a.
    call = b.stub.ExecuteRun(diagnostic(**LONG), timeout=30)
    run_id = None
    async for event in call:
        run_id = event.run_id
        if event.WhichOneof("event") == "state_change" and event.state_change.state == pb.RUNNING:
            break
    assert run_id is not None
    assert query(postgres_url, "SELECT replica FROM runs WHERE run_id = :r", r=run_id)[0][0] == "a"
    call.cancel()
    ended = await wait_for_state(a.stub, run_id, pb.CANCELLED, timeout=10)
    assert final_state(ended) == pb.CANCELLED

    # A queued run cancelled through the replica that does not hold anything of it.
    b_blocked = await a.stub.SubmitRun(diagnostic(**LONG), timeout=5)
    await wait_for_state(a.stub, b_blocked.run_id, pb.RUNNING)
    waiting = await a.stub.SubmitRun(diagnostic(ticks=1), timeout=5)
    assert waiting.state == pb.QUEUED
    gone = await b.stub.CancelRun(pb.CancelRunRequest(run_id=waiting.run_id), timeout=5)
    assert gone.state == pb.CANCELLED
    assert final_state(await events_of(a.stub, waiting.run_id)) == pb.CANCELLED


async def test_a_thousand_watchers_through_another_replica_follow_a_run_to_its_end(spawn, postgres_url, tmp_path):  # noqa: F811
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a"))
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b"))
    run = await a.stub.SubmitRun(diagnostic(log_every=20, **LONG), timeout=5)
    seen = await wait_for_state(a.stub, run.run_id, pb.RUNNING)
    owner = query(postgres_url, "SELECT replica FROM runs WHERE run_id = :r", r=run.run_id)[0][0]
    other = b if owner == "a" else a  # watched through the replica that does not hold it
    crowd = [other.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=90) for _ in range(1000)]

    async def follow(call) -> list[pb.RunEvent]:
        out = []
        while (event := await call.read()) is not grpc.aio.EOF:
            out.append(event)
        return out

    try:
        firsts = await asyncio.gather(*(call.read() for call in crowd), return_exceptions=True)
        failed = collections.Counter(f.code() for f in firsts if isinstance(f, grpc.aio.AioRpcError))
        assert not failed, f"watchers cut: {failed}"
        assert all(f.seq == 1 for f in firsts) and firsts[0] == seen[0]
        await until(
            lambda: (
                len(query(postgres_url, "SELECT 1 FROM run_events WHERE run_id = :r AND kind = 'log'", r=run.run_id))
                >= 2
            ),
            20,
            "two log lines",
        )
        await other.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
        streams = await asyncio.wait_for(asyncio.gather(*(follow(call) for call in crowd)), 60)
    finally:
        for call in crowd:
            call.cancel()
    stored = [e for e in await events_of(a.stub, run.run_id) if e.WhichOneof("event") != "progress"]
    assert final_state(stored) == pb.CANCELLED
    for rest in streams:
        seqs = [e.seq for e in rest]
        assert seqs == sorted(set(seqs)) and seqs[0] > 1
        delivered = [firsts[0], *(e for e in rest if e.WhichOneof("event") != "progress")]
        assert delivered == stored, "every stored event, in order, to every watcher"


async def test_leader_killed_another_takes_the_lock_and_prunes(spawn, postgres_url, tmp_path):  # noqa: F811
    env = dict(RUNNER_RETENTION_S="3")
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a", **env))
    await until(lambda: query(postgres_url, "SELECT holder FROM leader_lock")[0][0] == "a", 10, "a to lead")
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b", **env))
    done = [await b.stub.SubmitRun(diagnostic(ticks=1), timeout=5) for _ in range(5)]
    for run in done:
        await wait_for_state(b.stub, run.run_id, pb.SUCCEEDED)
    a.proc.kill()
    killed_at = time.monotonic()
    a.proc.wait(10)
    await until(lambda: query(postgres_url, "SELECT holder FROM leader_lock")[0][0] == "b", 10, "b to lead")
    assert time.monotonic() - killed_at < 2 + 1.5  # the lock's TTL, and a round of trying
    ids = [run.run_id for run in done]
    await until(
        lambda: query(postgres_url, "SELECT count(*) FROM runs WHERE run_id = ANY(:ids)", ids=ids)[0][0] == 0,
        15,
        "the old runs pruned",
    )
    assert query(postgres_url, "SELECT count(*) FROM run_events WHERE run_id = ANY(:ids)", ids=ids)[0][0] == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.stub.GetRun(pb.GetRunRequest(run_id=done[0].run_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rolling_restart_under_continuous_submission_loses_nothing(spawn, postgres_url, tmp_path):  # noqa: F811
    env = dict(RUNNER_WORKERS="2", RUNNER_SHUTDOWN_GRACE_S="5")
    replicas = {
        "a": await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a", **env)),
        "b": await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b", **env)),
    }
    accepted: list[str] = []
    stop = asyncio.Event()

    async def submit_forever():
        i = 0
        while not stop.is_set():
            request = diagnostic(ticks=5, tick_s=0.02, request_id=f"roll-{i}")
            for attempt in range(100):  # the same request_id on another replica is the same run
                running = list(replicas.values())[(i + attempt) % 2]
                try:
                    run = await running.stub.SubmitRun(request, timeout=2)
                    accepted.append(run.run_id)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            i += 1
            await asyncio.sleep(0.02)

    submitter = asyncio.create_task(submit_forever())
    for name in ("a", "b"):
        await asyncio.sleep(1.0)
        old = replicas[name]
        old.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.proc.wait, 30) == 0, old.log_tail()
        replicas[name] = await spawn(tmp_path / f"{name}2.db", **replica_env(postgres_url, name, **env))
    await asyncio.sleep(1.0)
    stop.set()
    await submitter
    assert len(accepted) > 50
    assert len(set(accepted)) == len(accepted)
    ids = list(accepted)

    def settled():
        return (
            query(postgres_url, "SELECT count(*) FROM runs WHERE run_id = ANY(:ids) AND state IN (1, 2)", ids=ids)[0][0]
            == 0
        )

    await until(settled, 60, "every accepted run to end")
    states = dict(
        query(postgres_url, "SELECT state, count(*) FROM runs WHERE run_id = ANY(:ids) GROUP BY state", ids=ids)
    )
    assert sum(states.values()) == len(accepted), "an acknowledged run is missing"
    assert set(states) <= {pb.SUCCEEDED, pb.INTERRUPTED}, states
    assert states.get(pb.SUCCEEDED, 0) >= len(accepted) - 4, states


async def test_shutdown_of_one_replica_leaves_nothing_owned(spawn, postgres_url, tmp_path):  # noqa: F811
    env = dict(RUNNER_WORKERS="2", RUNNER_SHUTDOWN_GRACE_S="0.5")
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a", **env))
    once = await a.stub.SubmitRun(diagnostic(**LONG), timeout=5)
    retry_request = diagnostic(ticks=300, tick_s=0.02)
    retry_request.max_attempts = 2
    retried = await a.stub.SubmitRun(retry_request, timeout=5)
    for run in (once, retried):
        await wait_for_state(a.stub, run.run_id, pb.RUNNING)
    waiting = await a.stub.SubmitRun(diagnostic(ticks=1), timeout=5)
    assert waiting.state == pb.QUEUED
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b", RUNNER_WORKERS="1"))
    b_busy = await b.stub.SubmitRun(diagnostic(ticks=100, tick_s=0.02), timeout=5)  # b's worker, for a while

    a.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.proc.wait, 30) == 0, a.log_tail()
    assert query(postgres_url, "SELECT count(*) FROM runs WHERE replica = 'a' AND state = 2")[0][0] == 0
    assert query(postgres_url, "SELECT count(*) FROM replicas WHERE name = 'a'")[0][0] == 0
    stopped = await b.stub.GetRun(pb.GetRunRequest(run_id=once.run_id), timeout=5)
    assert stopped.state == pb.INTERRUPTED
    for run in (retried, waiting, b_busy):  # the other replica takes what may still run
        assert final_state(await events_of(b.stub, run.run_id, timeout=30)) == pb.SUCCEEDED
    again = await b.stub.GetRun(pb.GetRunRequest(run_id=retried.run_id), timeout=5)
    assert (again.attempt, again.replica) == (2, "b")


async def test_admission_counts_the_queue_across_replicas(spawn, postgres_url, tmp_path):  # noqa: F811
    from google.rpc import error_details_pb2

    from tests.conftest import detail_of, rich_status

    env = dict(RUNNER_MAX_QUEUED="3")
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a", **env))
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b", **env))
    busy = [await stub.SubmitRun(diagnostic(**LONG), timeout=5) for stub in (a.stub, b.stub)]
    for run in busy:  # one worker each, both busy
        await until(
            lambda run=run: query(postgres_url, "SELECT state FROM runs WHERE run_id = :r", r=run.run_id)[0][0] == 2,
            10,
            "the run claimed",
        )
    accepted = [await stub.SubmitRun(diagnostic(ticks=1), timeout=5) for stub in (a.stub, b.stub, a.stub)]
    assert [run.state for run in accepted] == [pb.QUEUED] * 3
    for stub in (a.stub, b.stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = detail_of(rich_status(err.value), error_details_pb2.ErrorInfo)
        assert info.reason == "QUEUE_FULL"
    assert query(postgres_url, "SELECT count(*) FROM runs WHERE state = 1")[0][0] == 3


async def test_a_replica_silent_past_its_lease_cannot_overwrite_what_the_leader_stored(spawn, postgres_url, tmp_path):  # noqa: F811
    """SIGSTOP a replica for longer than its lease: the leader ends (or requeues) its
    runs. When it wakes up, its jobs' late outcomes are dropped, not written over
    the leader's, and it takes work again under a new lease."""
    b = await spawn(tmp_path / "b.db", **replica_env(postgres_url, "b"))
    await until(lambda: query(postgres_url, "SELECT holder FROM leader_lock")[0][0] == "b", 10, "b to lead")
    busy_b = await b.stub.SubmitRun(diagnostic(ticks=300, tick_s=0.02), timeout=5)  # b's worker, 6 s
    await wait_for_state(b.stub, busy_b.run_id, pb.RUNNING)
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "a", RUNNER_WORKERS="2"))
    once = await a.stub.SubmitRun(diagnostic(ticks=100, tick_s=0.02, log_every=5), timeout=5)
    retry_request = diagnostic(ticks=100, tick_s=0.02)
    retry_request.max_attempts = 2
    retried = await a.stub.SubmitRun(retry_request, timeout=5)
    await until(
        lambda: query(postgres_url, "SELECT count(*) FROM runs WHERE replica = 'a' AND state = 2")[0][0] == 2,
        10,
        "both runs stored RUNNING on a",
    )
    a.proc.send_signal(signal.SIGSTOP)
    try:
        await until_or_logs(
            [a, b],
            lambda: (
                query(postgres_url, "SELECT state FROM runs WHERE run_id = :r", r=once.run_id)[0][0] == pb.INTERRUPTED
            ),
            15,
            "the leader to end the silent replica's run",
        )
        rescued = query(postgres_url, "SELECT progress_done, last_seq FROM runs WHERE run_id = :r", r=once.run_id)[0]
        stored = query(postgres_url, "SELECT seq FROM run_events WHERE run_id = :r ORDER BY seq", r=once.run_id)
        await asyncio.sleep(2.5)  # a's jobs report and end meanwhile; their messages wait in a's sockets
    finally:
        a.proc.send_signal(signal.SIGCONT)
    retried_events = await events_of(b.stub, retried.run_id, timeout=30)
    assert final_state(retried_events) == pb.SUCCEEDED
    again = await b.stub.GetRun(pb.GetRunRequest(run_id=retried.run_id), timeout=5)
    assert again.attempt == 2 and again.replica in ("a", "b")  # a, back under a new lease, may claim it too
    await asyncio.sleep(2.0)  # let a act on what it found when it woke up
    assert state_changes(postgres_url, once.run_id)[-1] == (pb.RUNNING, pb.INTERRUPTED)
    # Nor a's late progress and log lines: the run's record and history are the leader's.
    assert (
        query(postgres_url, "SELECT progress_done, last_seq FROM runs WHERE run_id = :r", r=once.run_id)[0] == rescued
    )
    assert query(postgres_url, "SELECT seq FROM run_events WHERE run_id = :r ORDER BY seq", r=once.run_id) == stored
    assert state_changes(postgres_url, retried.run_id)[-1] == (pb.RUNNING, pb.SUCCEEDED)
    assert (await a.stub.GetRun(pb.GetRunRequest(run_id=once.run_id), timeout=5)).state == pb.INTERRUPTED
    fresh = await a.stub.SubmitRun(diagnostic(ticks=1), timeout=5)
    assert final_state(await events_of(a.stub, fresh.run_id)) == pb.SUCCEEDED
    assert query(postgres_url, "SELECT count(*) FROM replicas WHERE name = 'a' AND expires_us > 0")[0][0] == 1


async def test_a_second_live_replica_with_the_same_name_is_refused(spawn, postgres_url, tmp_path):  # noqa: F811
    """Its start-up recovery would end the runs of the live one: it waits out a
    lease that may be a dead process's, then refuses with a clear message."""
    a = await spawn(tmp_path / "a.db", **replica_env(postgres_url, "same"))
    run = await a.stub.SubmitRun(diagnostic(**LONG), timeout=5)
    await wait_for_state(a.stub, run.run_id, pb.RUNNING)
    env = runner_env(str(tmp_path / "x.db"), free_port(), **replica_env(postgres_url, "same"))
    started = time.monotonic()
    second = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "runner_service"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert second.returncode == 1
    assert b"another live replica is named 'same'" in second.stderr, second.stderr[-2000:]
    assert 2 * 2 <= time.monotonic() - started < 30  # it waited out two lease TTLs first
    still = await a.stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
    assert still.state == pb.RUNNING  # the live replica's run was left alone
