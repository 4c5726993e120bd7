"""The SQLAlchemy store against real databases: SQLite files and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa

from runner_service import settings as settings_mod
from runner_service.runs import RunState
from runner_service.schema import MIGRATIONS
from runner_service.sql_store import SqlStore
from runner_service.store import Cursor, RunRecord, StoredEvent, now_us


def record(request_id: str | None = None, create_us: int | None = None, kind: str = "diagnostic") -> RunRecord:
    now = create_us or now_us()
    return RunRecord(
        run_id=uuid.uuid4().hex,
        kind=kind,
        spec=b"\x2a\x00",
        state=RunState.QUEUED,
        create_us=now,
        update_us=now,
        request_id=request_id,
        labels={"team": "a"},
        last_seq=1,
    )


def event(run_id: str, seq: int, kind: str = "state") -> StoredEvent:
    return StoredEvent(run_id, seq, now_us(), kind, f"{run_id}:{seq}".encode())


@pytest.fixture
async def store(database_url):
    settings = settings_mod.from_env({"RUNNER_PROFILE": "testing"}, database_url=database_url)
    opened = SqlStore(settings)
    await opened.start()
    yield opened
    await opened.close()


async def test_migrations_run_once_and_are_idempotent(database_url):
    settings = settings_mod.from_env({"RUNNER_PROFILE": "testing"}, database_url=database_url)
    for _ in range(2):
        opened = SqlStore(settings)
        await opened.start()
        await opened.ping()
        await opened.close()


async def test_submit_is_durable_and_idempotent_by_request_id(store):
    first = record("key-1")
    stored, created = await store.submit(first, event(first.run_id, 1))
    assert created and stored.run_id == first.run_id
    again = record("key-1")
    stored, created = await store.submit(again, event(again.run_id, 1))
    assert not created and stored.run_id == first.run_id
    assert await store.get_run(again.run_id) is None
    fetched = await store.get_run(first.run_id)
    assert fetched.labels == {"team": "a"} and fetched.state == RunState.QUEUED


async def test_duplicates_inside_one_group_commit_store_one_run(store):
    import asyncio

    records = [record("same-key") for _ in range(5)]
    results = await asyncio.gather(*(store.submit(r, event(r.run_id, 1)) for r in records))
    assert sum(created for _, created in results) == 1
    assert len({stored.run_id for stored, _ in results}) == 1


async def test_writes_apply_in_order_and_events_replay_by_range(store):
    run = record()
    await store.submit(run, event(run.run_id, 1))
    store.write(run.run_id, {"state": RunState.RUNNING, "start_us": 5}, [event(run.run_id, 2)])
    await store.write(
        run.run_id, {"state": RunState.SUCCEEDED, "end_us": 9}, [event(run.run_id, 3), event(run.run_id, 4)]
    )
    fetched = await store.get_run(run.run_id)
    assert fetched.state == RunState.SUCCEEDED and fetched.start_us == 5 and fetched.end_us == 9
    assert fetched.last_seq == 4
    assert [e.seq for e in await store.list_events(run.run_id, 0, None, 100)] == [1, 2, 3, 4]
    assert [e.seq for e in await store.list_events(run.run_id, 1, 3, 100)] == [2, 3]
    assert [e.seq for e in await store.list_events(run.run_id, 0, None, 2)] == [1, 2]


async def test_list_runs_is_keyset_paginated_newest_first(store):
    base = now_us()
    made = [record(create_us=base + i, kind="diagnostic" if i % 2 else "plugin-x") for i in range(7)]
    for r in made:
        await store.submit(r, event(r.run_id, 1))
    seen, cursor = [], None
    while True:
        page = await store.list_runs(3, cursor, None, None)
        seen.extend(r.run_id for r in page)
        if len(page) < 3:
            break
        cursor = Cursor(page[-1].create_us, page[-1].run_id)
    assert seen == [r.run_id for r in reversed(made)]
    only = await store.list_runs(100, None, None, "plugin-x")
    assert {r.run_id for r in only} == {r.run_id for r in made if r.kind == "plugin-x"}
    assert await store.list_runs(100, None, RunState.RUNNING, None) == []


async def test_recover_interrupts_running_runs_and_returns_queued(store):
    running, queued = record(), record()
    for r in (running, queued):
        await store.submit(r, event(r.run_id, 1))
    await store.write(running.run_id, {"state": RunState.RUNNING}, [event(running.run_id, 2)])

    def interrupted(rec: RunRecord):
        return event(rec.run_id, rec.last_seq + 1), b"error-bytes"

    ids, requeue = await store.recover(running.replica, interrupted)
    assert ids == [running.run_id]
    assert [r.run_id for r in requeue] == [queued.run_id]
    fetched = await store.get_run(running.run_id)
    assert fetched.state == RunState.INTERRUPTED and fetched.error == b"error-bytes" and fetched.last_seq == 3
    assert [e.seq for e in await store.list_events(running.run_id, 0, None, 10)] == [1, 2, 3]


async def test_sqlite_wal_is_checkpointed_in_the_background(tmp_path):
    import asyncio
    import contextlib
    import shutil
    import sqlite3

    path = tmp_path / "ckpt.db"
    settings = settings_mod.from_env({"RUNNER_PROFILE": "testing"}, database_url=f"sqlite:///{path}")
    opened = SqlStore(settings)
    await opened.start()
    try:
        runs = [record() for _ in range(50)]
        for run in runs:
            await opened.submit(run, event(run.run_id, 1))
        # Commits do not checkpoint (wal_autocheckpoint=0): the background thread
        # copies the WAL into the database file within a couple of intervals.
        copy = tmp_path / "main-file-only.db"
        found = 0
        for _ in range(40):
            await asyncio.sleep(0.1)
            shutil.copy(path, copy)  # the database file alone, without its -wal
            with contextlib.closing(sqlite3.connect(copy)) as conn:
                try:
                    found = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
                except sqlite3.OperationalError:  # not even the schema is in the file yet
                    found = 0
            if found == len(runs):
                break
        assert found == len(runs)
    finally:
        await opened.close()


async def test_sqlite_wal_stays_bounded_under_sustained_commits(tmp_path):
    import os

    path = tmp_path / "bounded.db"
    settings = settings_mod.from_env(
        {"RUNNER_PROFILE": "testing"}, database_url=f"sqlite:///{path}", sqlite_wal_autocheckpoint_pages=500
    )
    opened = SqlStore(settings)
    await opened.start()
    try:
        # One commit per run, back to back: the background checkpoint never finds the
        # WAL idle, so only the checkpoint after a commit keeps it from growing.
        largest = 0
        for i in range(1500):
            run = record()
            await opened.submit(run, event(run.run_id, 1))
            if i % 100 == 0:
                largest = max(largest, os.path.getsize(f"{path}-wal"))
        largest = max(largest, os.path.getsize(f"{path}-wal"))
    finally:
        await opened.close()
    assert largest < 8 * 1024 * 1024, largest  # 500 pages of 4 KiB, and the commit that crossed them


async def test_list_runs_with_a_byte_budget_loads_only_what_fits(store):
    base = now_us()
    made = []
    for i in range(5):
        r = record(create_us=base + i)
        r.spec = bytes(1_000_000)
        made.append(r)
        await store.submit(r, event(r.run_id, 1))
    newest_first = [r.run_id for r in reversed(made)]
    # The first run that takes the total over the budget is included, then it stops.
    assert [r.run_id for r in await store.list_runs(10, None, None, None, 2_500_000)] == newest_first[:3]
    assert [r.run_id for r in await store.list_runs(10, None, None, None, 1)] == newest_first[:1]
    assert [r.run_id for r in await store.list_runs(2, None, None, None, 10_000_000)] == newest_first[:2]
    cursor = Cursor(made[1].create_us, made[1].run_id)
    assert [r.run_id for r in await store.list_runs(10, cursor, None, None, 10_000_000)] == [made[0].run_id]


async def test_replicas_starting_together_on_a_fresh_postgresql_migrate_once(postgres_url):
    """What compose and a Deployment do at first start: every store opens at the same
    moment; the advisory lock makes them take turns, none fails."""
    settings = settings_mod.from_env({"RUNNER_PROFILE": "testing"}, database_url=postgres_url, db_pool_size=1)
    stores = [SqlStore(settings) for _ in range(6)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        first = record()
        await stores[0].submit(first, event(first.run_id, 1))
        assert (await stores[-1].get_run(first.run_id)).run_id == first.run_id
    finally:
        for s in stores:
            await s.close()
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
    engine.dispose()
    assert versions == [version for version, _ in MIGRATIONS]  # each applied once
