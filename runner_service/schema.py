"""The database schema of the runner, its migrations, and the mapping between rows
and the store's records. Shared by the store and the replicas' coordination."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import sqlalchemy as sa

from runner_service.runs import RunState
from runner_service.store import RunRecord, StoredEvent

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(128), nullable=False),
    sa.Column("spec", sa.LargeBinary, nullable=False),
    sa.Column("state", sa.SmallInteger, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("update_us", sa.BigInteger, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True, unique=True),
    sa.Column("labels", sa.Text, nullable=False, default="{}"),
    sa.Column("timeout_ms", sa.BigInteger, nullable=True),
    sa.Column("start_us", sa.BigInteger, nullable=True),
    sa.Column("end_us", sa.BigInteger, nullable=True),
    sa.Column("progress_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("progress_total", sa.BigInteger, nullable=False, default=0),
    sa.Column("progress_message", sa.Text, nullable=False, default=""),
    sa.Column("result", sa.LargeBinary, nullable=True),
    sa.Column("error", sa.LargeBinary, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("replica", sa.String(255), nullable=False, default=""),
    sa.Column("last_seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Index("ix_runs_created", "create_us", "run_id"),
    sa.Index("ix_runs_state_created", "state", "create_us", "run_id"),
    sa.Index("ix_runs_kind_created", "kind", "create_us", "run_id"),
)

run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("time_us", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)

# run_events.kind of a progress event (the others: state, log, result).
PROGRESS_KIND = "progress"

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_us", sa.BigInteger, nullable=False),
)


# Replicas sharing one database: each holds a lease it renews by heartbeat.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("incarnation", sa.String(64), nullable=False),
    sa.Column("started_us", sa.BigInteger, nullable=False),
    sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
)

# One row: the leader's lock (holder and expiry).
leader_lock = sa.Table(
    "leader_lock",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
)
LEADER_ROW = "leader"


def _migration_1(conn: sa.Connection) -> None:
    columns_of_1 = [c for c in runs.columns if c.name != "max_attempts"]
    sa.Table("runs", sa.MetaData(), *(c._copy() for c in columns_of_1), *_indexes_of_runs()).create(conn)
    metadata.create_all(conn, tables=[run_events])


def _indexes_of_runs() -> list[sa.Index]:
    return [sa.Index(ix.name, *(c.name for c in ix.columns)) for ix in runs.indexes]


def _migration_2(conn: sa.Connection) -> None:
    """Replicas: the runs' retry bound, the replicas' leases and the leader's lock."""
    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1"))
    metadata.create_all(conn, tables=[replicas, leader_lock])
    conn.execute(sa.insert(leader_lock).values(name=LEADER_ROW, holder="", heartbeat_us=0, expires_us=0))


# Revision watermarks: each counts the writes that touched a section of the summary
# (bumped in the writing transaction, on every replica), so a cached section is
# current while its revision is unchanged.
revisions = sa.Table(
    "revisions",
    metadata,
    sa.Column("section", sa.String(32), primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
)
STATES = "states"  # runs added, moved to another state or deleted
PROGRESS = "progress"  # progress columns of running runs
SECTIONS = (STATES, PROGRESS)


def bump(conn: sa.Connection, sections: Iterable[str]) -> None:
    """Count a write that touched these sections, in the caller's transaction."""
    # One row at a time, in one order everywhere: two transactions touching both
    # rows never wait for each other in a cycle.
    for section in sorted(set(sections)):
        conn.execute(
            sa.update(revisions).where(revisions.c.section == section).values(revision=revisions.c.revision + 1)
        )


def _migration_3(conn: sa.Connection) -> None:
    """The summary's revision watermarks."""
    metadata.create_all(conn, tables=[revisions])
    conn.execute(sa.insert(revisions), [{"section": section, "revision": 1} for section in SECTIONS])


# Ordered (version, step); each runs once, all pending ones in one transaction.
MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
]

# pg_advisory_xact_lock key held while migrating ("runner" in ASCII).
MIGRATION_LOCK_KEY = 0x72756E6E6572
# pg_advisory_xact_lock key held by a submission's transaction while it counts the queue.
ADMISSION_LOCK_KEY = MIGRATION_LOCK_KEY + 1

RUN_COLUMNS = [c.name for c in runs.columns]
# What a run weighs when listed: its variable-size columns.
STORED_SIZE = (
    sa.func.length(runs.c.spec)
    + sa.func.coalesce(sa.func.length(runs.c.result), 0)
    + sa.func.coalesce(sa.func.length(runs.c.error), 0)
    + sa.func.length(runs.c.labels)
    + sa.func.length(runs.c.progress_message)
)


def record_of(row: sa.Row) -> RunRecord:
    data = dict(row._mapping)
    data["state"] = RunState(data["state"])
    data["labels"] = json.loads(data["labels"] or "{}")
    return RunRecord(**data)


def row_of(record: RunRecord) -> dict:
    data = {name: getattr(record, name) for name in RUN_COLUMNS}
    data["state"] = int(record.state)
    data["labels"] = json.dumps(record.labels, separators=(",", ":"), sort_keys=True)
    return data


def event_row(ev: StoredEvent) -> dict:
    return {"run_id": ev.run_id, "seq": ev.seq, "time_us": ev.time_us, "kind": ev.kind, "payload": ev.payload}
