"""How replicas share one database: claiming queued runs, leases, the leader's lock,
rescuing a lost replica's runs, cancelling a run owned elsewhere, pruning.

Each function takes a connection inside a transaction (the store runs it on one of
its threads) and is one short transaction's work. The same statements run on
SQLite, which serialises writers and ignores FOR UPDATE; on PostgreSQL, claims and
rescues take rows with FOR UPDATE SKIP LOCKED, so replicas never wait for each
other and never take the same run.

Notifications (PostgreSQL NOTIFY, delivered at commit) tell other replicas what
changed: CHANNEL_RUNS when runs became claimable, CHANNEL_CANCEL with a run id
whose owner must stop it, CHANNEL_EVENTS with run ids that have new events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import sqlalchemy as sa

from runner_service.runs import TERMINAL, RunState
from runner_service.schema import (
    LEADER_ROW,
    STATES,
    bump,
    event_row,
    leader_lock,
    record_of,
    replicas,
    run_events,
    runs,
)
from runner_service.store import RunRecord, StoredEvent, now_us

CHANNEL_RUNS = "runner_runs"
CHANNEL_CANCEL = "runner_cancel"
CHANNEL_EVENTS = "runner_events"
# Where notify() keeps the notices of a transaction on a database without NOTIFY.
LOCAL_NOTICES = "runner_notices"
# A run taken over from a lost process gets its next event this far past the last
# one stored: the lost process may have shown its watchers events it never stored
# (events are written behind), and a watcher resuming after the last one it saw
# must still get the run's next state change.
RECOVERY_SEQ_GAP = 1 << 20

# Builds the state event a run gets when it moves: (run as stored before, its new
# event's seq, time) -> (event, serialized google.rpc.Status error or None).
EventFactory = Callable[[RunRecord, int, int], tuple[StoredEvent, bytes | None]]


def db_now_us(conn: sa.Connection) -> int:
    """The database's clock, so that replicas with skewed clocks agree on leases."""
    if conn.dialect.name == "postgresql":
        return int(
            conn.execute(sa.text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")).scalar_one()
        )
    return now_us()


def _clock(conn: sa.Connection):
    """The database's clock as an expression of the statement that uses it
    (PostgreSQL), or this process's clock (SQLite: one process)."""
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()) * 1000000, sa.BigInteger)
    return now_us()


def notify(conn: sa.Connection, channel: str, payloads: Iterable[str]) -> None:
    """NOTIFY each payload on channel when the transaction commits. SQLite has no
    NOTIFY, and one runner holds a SQLite file: the notices wait on the connection
    (LOCAL_NOTICES) for the store to deliver them in this process after the commit."""
    unique = sorted(set(payloads))
    if not unique:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
            {"channel": channel, "payloads": unique},
        )
    else:
        conn.info.setdefault(LOCAL_NOTICES, []).extend((channel, payload) for payload in unique)


# ---------------------------------------------------------------- claiming


def claim(
    conn: sa.Connection, replica: str, limit: int, exclude_kinds: Iterable[str], started: EventFactory
) -> list[RunRecord]:
    """Take up to `limit` of the oldest QUEUED runs for `replica`: RUNNING, owned by
    it, with their RUNNING event stored. Runs locked by another claimer are skipped."""
    if limit <= 0:
        return []
    now = _clock(conn)  # read by the UPDATE itself: no round trip of its own
    pick = sa.select(runs.c.run_id).where(runs.c.state == int(RunState.QUEUED))
    excluded = list(exclude_kinds)
    if excluded:
        pick = pick.where(runs.c.kind.not_in(excluded))
    pick = pick.order_by(runs.c.create_us, runs.c.run_id).limit(limit).with_for_update(skip_locked=True)
    taken = conn.execute(
        sa.update(runs)
        .where(runs.c.run_id.in_(pick.scalar_subquery()))
        .values(
            state=int(RunState.RUNNING),
            start_us=now,
            update_us=now,
            replica=replica,
            last_seq=runs.c.last_seq + 1,
        )
        .returning(*runs.c)
    ).all()
    records = sorted((record_of(row) for row in taken), key=lambda r: (r.create_us, r.run_id))
    if records:
        rows = []
        for record in records:
            assert record.start_us is not None
            event, _ = started(dataclasses.replace(record, state=RunState.QUEUED), record.last_seq, record.start_us)
            rows.append(event_row(event))
        conn.execute(sa.insert(run_events), rows)
        notify(conn, CHANNEL_EVENTS, (r.run_id for r in records))
        bump(conn, [STATES])
    return records


def count_queued(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).where(runs.c.state == int(RunState.QUEUED))).scalar() or 0)


# ---------------------------------------------------------------- moving one run


def _move(
    conn: sa.Connection,
    record: RunRecord,
    state: RunState,
    factory: EventFactory,
    now: int,
    extra: dict | None = None,
    seq_gap: int = 1,
) -> RunRecord:
    """Give a locked run its next state and state event, in this transaction, at
    seq last_seq + seq_gap."""
    seq = record.last_seq + seq_gap
    event, error = factory(record, seq, now)
    values: dict = {"state": int(state), "update_us": now, "last_seq": seq}
    if state.terminal:
        values["end_us"] = now
        values["error"] = error
    values.update(extra or {})
    conn.execute(sa.update(runs).where(runs.c.run_id == record.run_id).values(**values))
    conn.execute(sa.insert(run_events).values(**event_row(event)))
    bump(conn, [STATES])
    for name, value in values.items():
        setattr(record, name, RunState(value) if name == "state" else value)
    return record


def cancel(conn: sa.Connection, run_id: str, cancelled: EventFactory) -> tuple[RunRecord | None, bool, bool]:
    """Cancel a run this replica does not hold: a QUEUED run ends CANCELLED in this
    transaction; a RUNNING one is flagged and its owner notified. Returns the run
    as it is now (None if unknown), whether its owner must be told, and whether
    this call ended it.

    The first statement writes (and on PostgreSQL locks the row), so a claim in
    flight either took the run before (it is RUNNING: its owner is told) or finds
    it cancelled; on SQLite the transaction holds the write lock from the start."""
    flagged = conn.execute(
        sa.update(runs)
        .where(runs.c.run_id == run_id, runs.c.state.in_([int(RunState.QUEUED), int(RunState.RUNNING)]))
        .values(cancel_requested=True)
        .returning(*runs.c)
    ).first()
    if flagged is None:
        row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return (record_of(row) if row is not None else None), False, False
    record = record_of(flagged)
    if record.state == RunState.QUEUED:
        _move(conn, record, RunState.CANCELLED, cancelled, db_now_us(conn))
        notify(conn, CHANNEL_EVENTS, [run_id])
        return record, False, True
    notify(conn, CHANNEL_CANCEL, [run_id])
    return record, True, False


def cancels_for(conn: sa.Connection, replica: str) -> list[str]:
    """Runs of `replica` that someone asked to cancel (the polling side of CHANNEL_CANCEL)."""
    query = sa.select(runs.c.run_id).where(
        runs.c.state == int(RunState.RUNNING), runs.c.replica == replica, runs.c.cancel_requested.is_(True)
    )
    return list(conn.execute(query).scalars())


# ---------------------------------------------------------------- leases


def register(conn: sa.Connection, name: str, incarnation: str, ttl_s: float) -> bool:
    """Take the lease of replica `name`. False while another process holds it
    unexpired (a live replica of that name, or one that died less than a TTL ago)."""
    now = db_now_us(conn)
    values = {"incarnation": incarnation, "started_us": now, "heartbeat_us": now, "expires_us": now + int(ttl_s * 1e6)}
    free = sa.or_(replicas.c.expires_us <= now, replicas.c.incarnation == incarnation)
    if conn.execute(sa.update(replicas).where(replicas.c.name == name, free).values(**values)).rowcount:
        return True
    if conn.execute(sa.select(replicas.c.name).where(replicas.c.name == name)).first() is not None:
        return False
    conn.execute(sa.insert(replicas).values(name=name, **values))
    return True


def renew(conn: sa.Connection, name: str, incarnation: str, ttl_s: float) -> bool:
    """Extend this replica's lease. False once it has expired (the leader may have
    ended or requeued its runs): the replica must not go on with them."""
    now = db_now_us(conn)
    done = conn.execute(
        sa.update(replicas)
        .where(replicas.c.name == name, replicas.c.incarnation == incarnation, replicas.c.expires_us > now)
        .values(heartbeat_us=now, expires_us=now + int(ttl_s * 1e6))
    )
    return bool(done.rowcount)


def unregister(conn: sa.Connection, name: str, incarnation: str) -> None:
    conn.execute(sa.delete(replicas).where(replicas.c.name == name, replicas.c.incarnation == incarnation))


def live_replicas(conn: sa.Connection) -> list[str]:
    now = db_now_us(conn)
    return list(conn.execute(sa.select(replicas.c.name).where(replicas.c.expires_us > now)).scalars())


# ---------------------------------------------------------------- leadership


def lead(conn: sa.Connection, holder: str, ttl_s: float) -> bool:
    """Take or renew the leader's lock; True while `holder` holds it."""
    now = db_now_us(conn)
    done = conn.execute(
        sa.update(leader_lock)
        .where(
            leader_lock.c.name == LEADER_ROW,
            sa.or_(leader_lock.c.holder == holder, leader_lock.c.expires_us < now),
        )
        .values(holder=holder, heartbeat_us=now, expires_us=now + int(ttl_s * 1e6))
    )
    return bool(done.rowcount)


def resign(conn: sa.Connection, holder: str) -> None:
    conn.execute(
        sa.update(leader_lock)
        .where(leader_lock.c.name == LEADER_ROW, leader_lock.c.holder == holder)
        .values(holder="", expires_us=0)
    )


def leader(conn: sa.Connection) -> tuple[str, int]:
    """(holder, expires_us) of the leader's lock."""
    row = conn.execute(sa.select(leader_lock.c.holder, leader_lock.c.expires_us)).first()
    return (row.holder, row.expires_us) if row is not None else ("", 0)


# ---------------------------------------------------------------- the leader's rounds


def rescue(
    conn: sa.Connection,
    limit: int,
    requeued: EventFactory,
    ended: EventFactory,
    cancelled: EventFactory,
    replica: str | None = None,
) -> list[RunRecord]:
    """End or requeue RUNNING runs whose replica's lease expired (or, with `replica`,
    the runs a previous process of that replica left RUNNING). A run below its
    max_attempts goes back to QUEUED with attempt + 1; one whose cancel was asked
    ends CANCELLED; any other ends INTERRUPTED. Returns the runs as they are now."""
    now = db_now_us(conn)
    pick = sa.select(runs).where(runs.c.state == int(RunState.RUNNING))
    if replica is not None:
        pick = pick.where(runs.c.replica == replica)
    else:
        alive = sa.select(replicas.c.name).where(replicas.c.name == runs.c.replica, replicas.c.expires_us > now)
        pick = pick.where(~alive.exists())
    pick = pick.order_by(runs.c.update_us).limit(limit).with_for_update(skip_locked=True)
    moved = []
    for row in conn.execute(pick).all():
        record = record_of(row)
        gap = RECOVERY_SEQ_GAP
        if record.cancel_requested:
            moved.append(_move(conn, record, RunState.CANCELLED, cancelled, now, seq_gap=gap))
        elif record.attempt < record.max_attempts:
            extra = {"attempt": record.attempt + 1, "replica": "", "start_us": None}
            moved.append(_move(conn, record, RunState.QUEUED, requeued, now, extra, seq_gap=gap))
        else:
            moved.append(_move(conn, record, RunState.INTERRUPTED, ended, now, seq_gap=gap))
    if moved:
        notify(conn, CHANNEL_EVENTS, (r.run_id for r in moved))
        if any(r.state == RunState.QUEUED for r in moved):
            notify(conn, CHANNEL_RUNS, [""])
    return moved


def forget_replicas(conn: sa.Connection, older_than_s: float) -> int:
    """Delete leases expired for older_than_s that hold no running run."""
    cutoff = db_now_us(conn) - int(older_than_s * 1e6)
    holding = sa.select(runs.c.run_id).where(runs.c.replica == replicas.c.name, runs.c.state == int(RunState.RUNNING))
    return conn.execute(sa.delete(replicas).where(replicas.c.expires_us < cutoff, ~holding.exists())).rowcount


def expire_queued(conn: sa.Connection, limit: int, expired: EventFactory) -> list[RunRecord]:
    """QUEUED runs whose own timeout passed while they waited end DEADLINE_EXCEEDED."""
    now = db_now_us(conn)
    due = runs.c.create_us + runs.c.timeout_ms * 1000
    pick = (
        sa.select(runs)
        .where(runs.c.state == int(RunState.QUEUED), runs.c.timeout_ms.is_not(None), due < now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    moved = [_move(conn, record_of(row), RunState.DEADLINE_EXCEEDED, expired, now) for row in conn.execute(pick).all()]
    if moved:
        notify(conn, CHANNEL_EVENTS, (r.run_id for r in moved))
    return moved


def prune(conn: sa.Connection, ended_before_us: int, limit: int) -> int:
    """Delete up to `limit` terminal runs that ended before ended_before_us, and their events."""
    terminal = [int(state) for state in TERMINAL]
    ids = list(
        conn.execute(
            sa.select(runs.c.run_id)
            .where(runs.c.state.in_(terminal), runs.c.end_us < ended_before_us)
            .order_by(runs.c.end_us)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        conn.execute(sa.delete(run_events).where(run_events.c.run_id.in_(ids)))
        conn.execute(sa.delete(runs).where(runs.c.run_id.in_(ids)))
        bump(conn, [STATES])
    return len(ids)
