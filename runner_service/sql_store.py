"""The SQLAlchemy implementation of the store (SQLite by default, PostgreSQL for replicas).

Writes go through one writer thread that commits whatever is queued in one
transaction (group commit): a burst of submissions costs one commit, not one
each. Reads run on a small thread pool. Nothing here touches the event loop
thread except to resolve futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from runner_service import coordination, schema, store
from runner_service.breaker import CircuitBreaker, CircuitOpen
from runner_service.notifications import Listener
from runner_service.runs import RunState
from runner_service.schema import (
    ADMISSION_LOCK_KEY,
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    PROGRESS_KIND,
    STORED_SIZE,
    event_row,
    metadata,
    record_of,
    row_of,
    run_events,
    runs,
    schema_version,
)
from runner_service.store import (
    CircuitOpenError,
    Cursor,
    PoolExhausted,
    RunRecord,
    StoreClosed,
    StoredEvent,
    StoreError,
    StoreStatus,
)

log = logging.getLogger(__name__)


class _Op:
    __slots__ = ("changes", "error", "events", "fence", "future", "max_waiting", "record", "result", "run_id")

    def __init__(self, run_id, changes, events, record, future, max_waiting=None, fence=None):
        self.run_id = run_id
        self.changes = changes
        self.events = events
        self.record = record  # set for a submission
        self.future = future
        self.max_waiting = max_waiting  # a submission refused when this many runs are QUEUED
        self.fence = fence  # (replica, attempt): applied only while the run is still theirs
        self.result = None
        self.error: BaseException | None = None


_STOP = object()
WRITE_RETRY_FIRST_S = 0.05
CLOSE_FLUSH_S = 5.0
CHECKPOINT_INTERVAL_S = 0.5
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


@functools.lru_cache(maxsize=256)
def _update_statement(columns: tuple[str, ...]) -> sa.Update:
    """UPDATE runs SET <columns> WHERE run_id = :b_run_id, for executemany."""
    return (
        sa.update(runs)
        .where(runs.c.run_id == sa.bindparam("b_run_id"))
        .values({name: sa.bindparam("b_" + name) for name in columns})
    )


_MAX_BATCH = 1000
# The newest runs of a summary are read within this many stored bytes.
SUMMARY_RECENT_BYTES = 1024 * 1024
IDLE_IN_TRANSACTION_MIN_S = 5.0


def make_engine(url: str, settings) -> sa.Engine:
    """An engine configured for the runner: SQLite with WAL, busy_timeout=5000 and
    synchronous=NORMAL; PostgreSQL with the configured pool."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = sa.create_engine(
            url,
            pool_size=settings.db_pool_size + 2,  # readers, the writer, the checkpointer
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            connect_args={"check_same_thread": False, "timeout": 5.0},
        )

        @sa_event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.execute("PRAGMA synchronous=NORMAL")
            # A background thread (SqlStore._checkpointer) copies the WAL back
            # between commits. Under sustained writes it never finds the WAL idle,
            # so SQLite's own checkpoint after a commit that crosses
            # sqlite_wal_autocheckpoint_pages stays on as the bound on the WAL; it
            # finds little left to copy. The file is cut back after a reset.
            cur.execute(f"PRAGMA wal_autocheckpoint={int(settings.sqlite_wal_autocheckpoint_pages)}")
            cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            cur.close()

        return engine
    timeout_ms = int(settings.db_query_timeout_s * 1000)
    # A session that sits in an open transaction this long belongs to a process that
    # stopped (paused, cut off) mid-transaction: the server ends it, so the row locks
    # it holds cannot keep the leader from rescuing its runs (SKIP LOCKED skips them).
    idle_ms = int(max(IDLE_IN_TRANSACTION_MIN_S, settings.lease_ttl_s) * 1000)
    return sa.create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_pre_ping=True,
        connect_args={"options": f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={idle_ms}"},
    )


class SqlStore(store.Store):
    def __init__(self, settings) -> None:
        self._settings = settings
        self._engine: sa.Engine | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sa.Connection | None = None
        self._local = threading.local()
        self._reader_conns: list[sa.Connection] = []
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.db_pool_size), thread_name_prefix="store-read"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._is_sqlite = settings.database_url.startswith("sqlite")
        # With the queue in the database, commits notify the other replicas (on
        # SQLite, this process: see coordination.notify).
        self._notify = settings.queue_in_database
        self.listener: Listener | None = None
        self._local_listener: Callable[[list[tuple[str, str]]], None] | None = None
        self._writer_notices: list[tuple[str, str]] = []  # of the batch being committed (writer thread)
        # Told (on the event loop) which summary sections a commit touched.
        self.on_touch: Callable[[set[str]], None] | None = None
        self._touched: set[str] = set()  # by the transaction being applied (writer thread)
        self._commits = 0
        self._held = 0  # writes held after a transient failure (written by the writer thread)
        self._unsettled = 0  # writes queued or held, not yet committed or refused (event loop only)
        self._write_error = ""
        self._reads_in_flight = 0
        self._max_reads = max(1, settings.db_pool_size) + settings.db_read_queue_max
        self._slow: asyncio.Semaphore | None = None
        self._slow_waiting = 0
        self.breaker = CircuitBreaker(settings.db_breaker_failure_threshold, settings.db_breaker_reset_timeout_s)
        self._checkpoint_stop = threading.Event()
        self._replica_lock: IO[bytes] | None = None
        self._checkpoint_thread: threading.Thread | None = None
        # Told (on the writer thread) how long each committed batch took.
        self.on_commit: Callable[[float], None] | None = None

    @property
    def engine(self) -> sa.Engine:
        assert self._engine is not None, "store not started"
        return self._engine

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slow = asyncio.Semaphore(max(1, self._settings.slow_query_concurrency))
        if self._is_sqlite:  # file I/O: off the event loop, like everything below
            url = self._settings.database_url
            self._replica_lock = await self._loop.run_in_executor(self._readers, _lock_sqlite_for_one_runner, url)
        self._engine = make_engine(self._settings.database_url, self._settings)
        await self._loop.run_in_executor(self._readers, self._migrate)
        self._writer = threading.Thread(target=self._writer_main, name="store-writer", daemon=True)
        self._writer.start()
        if self._is_sqlite:
            self._checkpoint_thread = threading.Thread(target=self._checkpointer, name="store-checkpoint", daemon=True)
            self._checkpoint_thread.start()

    def _checkpointer(self) -> None:
        """Copy the WAL back into the database file every CHECKPOINT_INTERVAL_S,
        PASSIVE: it never waits for or blocks the writer or the readers."""
        assert self._engine is not None
        done_commits = -1
        conn: sa.Connection | None = None
        while not self._checkpoint_stop.wait(CHECKPOINT_INTERVAL_S):
            if self._commits == done_commits:
                continue
            done_commits = self._commits
            try:
                if conn is None:
                    conn = self._engine.connect()
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                conn.commit()  # hold no transaction between rounds
            except Exception as exc:  # noqa: BLE001 - the next round tries again, on a new connection
                log.warning("WAL checkpoint failed", extra={"error": describe(exc)})
                if conn is not None:
                    conn.invalidate()
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def _migrate(self) -> None:
        """Bring the schema up to date in one transaction. On PostgreSQL it holds
        an advisory lock for that transaction, so replicas starting together take
        turns: the first migrates, the others find the versions applied."""
        applied = []
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            metadata.create_all(conn, tables=[schema_version])
            done = {v for (v,) in conn.execute(sa.select(schema_version.c.version))}
            for version, step in MIGRATIONS:
                if version in done:
                    continue
                step(conn)
                conn.execute(sa.insert(schema_version).values(version=version, applied_us=store.now_us()))
                applied.append(version)
        for version in applied:
            log.info("database migrated", extra={"schema_version": version})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.listener is not None:
            await self.listener.stop()
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
        if self._checkpoint_thread is not None:
            self._checkpoint_stop.set()
            await asyncio.get_running_loop().run_in_executor(None, self._checkpoint_thread.join)
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
        if self._engine is not None:
            self._engine.dispose()
        if self._replica_lock is not None:
            self._replica_lock.close()  # releases the lock
            self._replica_lock = None

    # ------------------------------------------------------------ writes

    async def submit(
        self, record: RunRecord, first_event: StoredEvent, max_waiting: int | None = None
    ) -> tuple[RunRecord, bool]:
        status = self.breaker.status()
        if status.retry_after_s > 0:  # open: do not even queue it
            raise CircuitOpenError(status.retry_after_s)
        if self._held:  # writes are failing: this one would wait behind them
            raise StoreError("database writes are failing; retry shortly")
        op = _Op(record.run_id, None, (first_event,), record, self._new_future(), max_waiting)
        return await self._enqueue(op)

    def write(
        self,
        run_id: str,
        changes: dict | None,
        events: Sequence[StoredEvent] = (),
        fence: tuple[str, int] | None = None,
    ) -> asyncio.Future:
        op = _Op(run_id, changes, tuple(events), None, self._new_future(), fence=fence)
        if self._closed:
            op.future.set_exception(StoreClosed("store is closed"))
            return op.future
        self._unsettled += 1
        self._queue.put(op)
        return op.future

    def backlog(self) -> int:
        return self._unsettled

    def _new_future(self) -> asyncio.Future:
        assert self._loop is not None, "store not started"
        return self._loop.create_future()

    async def _enqueue(self, op: _Op):
        if self._closed:
            raise StoreClosed("store is closed")
        self._queue.put(op)
        return await op.future

    def _writer_main(self) -> None:
        """Commit whatever is queued, a batch per transaction. Writes that fail for
        a transient reason are held, in order, and retried with exponential
        backoff (in batches) before anything newer is written; submissions that
        arrive meanwhile are refused at once, since their callers wait for an
        answer and will retry."""
        held: list[_Op] = []
        backoff = WRITE_RETRY_FIRST_S
        next_retry = 0.0
        stopping = False
        while not stopping:
            timeout = max(0.0, next_retry - time.monotonic()) if held else None
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                first = None
            incoming: list[_Op] = []
            pending = [first] if first is not None else []
            while True:
                for op in pending:
                    if op is _STOP:
                        stopping = True
                    else:
                        incoming.append(op)
                if stopping or len(incoming) >= _MAX_BATCH:
                    break
                try:
                    pending = [self._queue.get_nowait()]
                except queue.Empty:
                    break
            if not held:
                if incoming:
                    held = self._commit(incoming)
                    backoff = WRITE_RETRY_FIRST_S
                    next_retry = time.monotonic() + backoff
            else:
                refused = [op for op in incoming if op.record is not None]
                for op in refused:
                    op.error = StoreError("database writes are failing; retry shortly")
                self._resolve_soon(refused)
                held.extend(op for op in incoming if op.record is None)
                if stopping or time.monotonic() >= next_retry:
                    # Closing: one last try, batch after batch while the database
                    # takes them (for a bounded time); otherwise one batch per retry.
                    give_up_at = time.monotonic() + CLOSE_FLUSH_S
                    still = []
                    while held:
                        still = self._commit(held[:_MAX_BATCH])
                        held = still + held[_MAX_BATCH:]
                        if still or not stopping or time.monotonic() > give_up_at:
                            break
                    if still:
                        backoff = min(backoff * 2, self._settings.db_write_retry_max_s)
                        next_retry = time.monotonic() + backoff
                    else:
                        backoff, next_retry = WRITE_RETRY_FIRST_S, 0.0
            self._held = len(held)
            self._commits += 1
        if held:  # closing with writes the database never took: say so, fail them
            log.error("store closed with writes it could not commit", extra={"writes": len(held)})
            for op in held:
                op.error = StoreClosed("the store closed before the database took this write")
            self._resolve_soon(held)
            self._held = 0
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    def _writer_conn(self) -> sa.Connection:
        # The writer keeps one connection: a checkout and reset per commit would
        # cost as much as the commit itself.
        if self._wconn is None or self._wconn.invalidated or self._wconn.closed:
            self._wconn = self.engine.connect()
        return self._wconn

    def _drop_writer_conn(self) -> None:
        if self._wconn is not None:
            try:
                self._wconn.invalidate()
                self._wconn.close()
            except Exception:  # noqa: BLE001 - the connection is broken anyway
                pass
            self._wconn = None

    def _transaction(self, ops: list[_Op]) -> None:
        conn = self._writer_conn()
        self._touched = set()
        committed = False
        try:
            with conn.begin():
                self._apply(conn, ops)
            committed = True
            if self._touched and self.on_touch is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self.on_touch, self._touched)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                self._drop_writer_conn()
            raise
        finally:
            self._writer_notices += self._settle_notices(conn, committed)

    def _commit(self, batch: list[_Op]) -> list[_Op]:
        """Commit a batch; resolve what is settled; return the writes to hold. The
        batch's in-process notices go out after its writers are told: a watcher
        woken by them never hears of a run's end before the run's owner here does."""
        try:
            return self._commit_batch(batch)
        finally:
            notices, self._writer_notices = self._writer_notices, []
            self._deliver_notices(notices)

    def _commit_batch(self, batch: list[_Op]) -> list[_Op]:
        assert self._engine is not None
        started = time.perf_counter()
        try:
            self._transaction(batch)
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - sorted out below
            if _is_transient(exc):
                return self._hold(batch, exc)
            # Something in the batch is refused for good: replay one by one so
            # that only the bad write fails.
            held: list[_Op] = []
            for op in batch:
                if held:  # keep the order of everything after a held write
                    held.append(op)
                    continue
                op.result = None
                try:
                    self._transaction([op])
                except Exception as one:  # noqa: BLE001 - reported to the caller, not swallowed
                    if _is_transient(one):
                        held.append(op)
                        continue
                    log.error("store write refused", extra={"run_id": op.run_id, "error": describe(one)})
                    op.error = StoreError(f"database write refused: {one.__class__.__name__}")
            if held:
                return self._hold(batch, exc, settled=[op for op in batch if op not in held])
        self.breaker.record_success()
        if self._write_error:
            log.warning("store writes succeed again", extra={"after": self._write_error})
            self._write_error = ""
        self._resolve_soon(batch)
        return []

    def _hold(self, batch: list[_Op], exc: BaseException, settled: list[_Op] | None = None) -> list[_Op]:
        """A transient failure: submissions fail now, other writes are held."""
        text = describe(exc)
        self.breaker.record_failure(text)
        if not self._write_error:
            log.error("store writes failing; holding them and retrying", extra={"error": text})
        self._write_error = text
        held, refused = [], list(settled or [])
        for op in batch:
            if settled is not None and op in settled:
                continue
            if op.record is not None:
                op.result = None
                op.error = StoreError(f"database unavailable: {exc.__class__.__name__}")
                refused.append(op)
            else:
                held.append(op)
        self._resolve_soon(refused)
        return held

    def _settle(self, ops: list[_Op]) -> None:
        """On the event loop: resolve the futures of settled operations."""
        self._unsettled -= sum(1 for op in ops if op.record is None)
        _resolve(ops)

    def _resolve_soon(self, ops: list[_Op]) -> None:
        loop = self._loop
        if ops and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._settle, ops)
            except RuntimeError:  # loop closed meanwhile
                pass

    def _apply(self, conn: sa.Connection, batch: list[_Op]) -> None:
        touched = set()
        submits = [op for op in batch if op.record is not None]
        if submits:
            self._apply_submits(conn, submits)
            if any(op.error is None and op.result is not None and op.result[1] for op in submits):
                touched.add(schema.STATES)
        changes: dict[str, dict] = {}
        events: list[dict] = []
        fenced = []
        for op in batch:
            if op.record is not None:
                continue
            if op.fence is not None:
                fenced.append(op)
                continue
            if op.changes:
                changes.setdefault(op.run_id, {}).update(op.changes)
            for ev in op.events:
                events.append(event_row(ev))
                merged = changes.setdefault(ev.run_id, {})
                merged["last_seq"] = max(merged.get("last_seq", 0), ev.seq)
        if events:
            conn.execute(sa.insert(run_events), events)
            if self._notify:
                coordination.notify(conn, coordination.CHANNEL_EVENTS, (row["run_id"] for row in events))
        by_columns: dict[tuple[str, ...], list[dict]] = {}
        for run_id, values in changes.items():
            touched |= _sections_of(values)
            if "state" in values:
                values["state"] = int(values["state"])
            params = {"b_" + key: value for key, value in values.items()}
            params["b_run_id"] = run_id
            by_columns.setdefault(tuple(sorted(values)), []).append(params)
        for columns, rows in by_columns.items():
            conn.execute(_update_statement(columns), rows)
        if fenced:  # after the batch's other writes, which come before them
            touched |= self._apply_fenced(conn, fenced)
        schema.bump(conn, touched)
        self._touched |= touched

    def _apply_fenced(self, conn: sa.Connection, ops: list[_Op]) -> set[str]:
        """Writes that hold only while their run is RUNNING on the fence's replica and
        attempt: a replica whose lease expired must not overwrite what the leader
        (or the run's next owner) stored. Refused with RunTakenOver otherwise. The
        writes of one run in the batch go together (one update, one insert).
        Returns the summary sections they changed."""
        groups: dict[tuple[str, tuple[str, int]], list[_Op]] = {}
        for op in ops:
            assert op.fence is not None
            groups.setdefault((op.run_id, op.fence), []).append(op)
        touched: set[str] = set()
        with_events = []
        for (run_id, (replica, attempt)), group in groups.items():
            values: dict = {}
            events = []
            for op in group:
                op.error = None
                values.update(op.changes or {})
                events.extend(op.events)
            if "state" in values:
                values["state"] = int(values["state"])
            values["last_seq"] = max(ev.seq for ev in events) if events else runs.c.last_seq
            done = conn.execute(
                sa.update(runs)
                .where(
                    runs.c.run_id == run_id,
                    runs.c.state == int(RunState.RUNNING),
                    runs.c.replica == replica,
                    runs.c.attempt == attempt,
                )
                .values(**values)
            )
            if not done.rowcount:
                for op in group:
                    op.error = store.RunTakenOver(f"run {run_id} is no longer held by {replica} (attempt {attempt})")
                continue
            if events:
                conn.execute(sa.insert(run_events), [event_row(ev) for ev in events])
                with_events.append(run_id)
            touched |= _sections_of(values)
        if with_events and self._notify:
            coordination.notify(conn, coordination.CHANNEL_EVENTS, with_events)
        return touched

    def _apply_submits(self, conn: sa.Connection, submits: list[_Op]) -> None:
        waiting = None
        if any(op.max_waiting is not None for op in submits):
            # Admission counts the queue in the database. On PostgreSQL replicas
            # take turns (a lock held to the commit), so the count they see holds.
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK_KEY})
            waiting = coordination.count_queued(conn)
        keys = [op.record.request_id for op in submits if op.record.request_id]
        known: dict[str, RunRecord] = {}
        if keys:
            for row in conn.execute(sa.select(runs).where(runs.c.request_id.in_(keys))):
                known[row.request_id] = record_of(row)
        new_rows: list[dict] = []
        new_events: list[dict] = []
        for op in submits:
            op.error = None  # a replayed batch decides afresh
            rid = op.record.request_id
            if rid and rid in known:
                op.result = (known[rid], False)
                continue
            if waiting is not None and op.max_waiting is not None:
                if waiting >= op.max_waiting:
                    op.result, op.error = None, store.QueueLimitReached(waiting)
                    continue
                waiting += 1
            if rid:
                known[rid] = op.record
            op.record.last_seq = max(ev.seq for ev in op.events)
            new_rows.append(row_of(op.record))
            new_events.extend(event_row(ev) for ev in op.events)
            op.result = (op.record, True)
        if new_rows:
            conn.execute(sa.insert(runs), new_rows)
            conn.execute(sa.insert(run_events), new_events)
            if self._notify:
                coordination.notify(conn, coordination.CHANNEL_RUNS, [""])

    # ------------------------------------------------------------ reads

    async def _read(self, fn, *args, slow: bool = False, internal: bool = False):
        """Run fn(conn, *args) on a reader thread. Bounded: past the pool and its
        waiting line a read is refused (PoolExhausted), unless it is the runner's
        own (internal: claims, leases, health; few, and what keeps the replica
        alive); while the circuit is open it is refused (CircuitOpenError); slow
        reads (lists, summaries) also share settings.slow_query_concurrency slots."""
        if self._closed:
            raise StoreError("store is closed")
        if self._reads_in_flight >= self._max_reads and not internal:
            raise PoolExhausted("every database connection is busy; retry shortly")
        try:
            probe = self.breaker.before_call()
        except CircuitOpen as exc:
            raise CircuitOpenError(exc.retry_after_s) from None
        self._reads_in_flight += 1
        try:
            if slow:
                if self._slow_waiting >= self._settings.db_read_queue_max:
                    raise PoolExhausted("too many slow reads are waiting; retry shortly")
                self._slow_waiting += 1
                slow_slots = self._slow
                assert slow_slots is not None, "store not started"
                try:
                    await slow_slots.acquire()
                finally:
                    self._slow_waiting -= 1
                try:
                    return await self._run_read(fn, args)
                finally:
                    slow_slots.release()
            return await self._run_read(fn, args)
        except BaseException:
            if probe:
                self.breaker.release_probe()
            raise
        finally:
            self._reads_in_flight -= 1

    async def _run_read(self, fn, args):
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._readers, self._in_reader, fn, args)
        except sa.exc.TimeoutError as exc:  # the pool's own wait ran out: load, not a broken database
            raise PoolExhausted("every database connection is busy; retry shortly") from exc
        except sa.exc.SQLAlchemyError as exc:
            if _is_transient(exc):
                self.breaker.record_failure(describe(exc))
            raise StoreError(f"database read failed: {exc.__class__.__name__}") from exc
        self.breaker.record_success()
        return result

    def _in_reader(self, fn, args):
        """Run fn(conn, *args) on this reader thread's own connection, in a
        transaction that ends with the call (no snapshot outlives a read)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.invalidated or conn.closed:
            conn = self._local.conn = self.engine.connect()
            self._reader_conns.append(conn)
        committed = False
        try:
            with conn.begin():
                result = fn(conn, *args)
            committed = True
            return result
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                self._local.conn = None
            raise
        finally:
            self._deliver_notices(self._settle_notices(conn, committed))

    @staticmethod
    def _settle_notices(conn: sa.Connection, committed: bool) -> list[tuple[str, str]]:
        """On a database without NOTIFY (SQLite, held by this runner alone): a
        committed transaction's notices, for this process's listener; a rolled-back
        one's are dropped."""
        if conn.closed or conn.invalidated:
            return []
        notices = conn.info.pop(coordination.LOCAL_NOTICES, None) or []
        return notices if committed else []

    def _deliver_notices(self, notices: list[tuple[str, str]]) -> None:
        if notices and self._local_listener is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._local_listener, notices)
            except RuntimeError:  # the loop closed meanwhile
                pass

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._read(self._get_run, run_id)

    @staticmethod
    def _get_run(conn: sa.Connection, run_id: str) -> RunRecord | None:
        row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return record_of(row) if row is not None else None

    async def get_run_by_request_id(self, request_id: str) -> RunRecord | None:
        return await self._read(self._get_run_by_request_id, request_id)

    @staticmethod
    def _get_run_by_request_id(conn: sa.Connection, request_id: str) -> RunRecord | None:
        row = conn.execute(sa.select(runs).where(runs.c.request_id == request_id)).first()
        return record_of(row) if row is not None else None

    async def list_runs(self, limit, after, state, kind, max_bytes=None) -> list[RunRecord]:
        return await self._read(self._list_runs, limit, after, state, kind, max_bytes, slow=True)

    @staticmethod
    def _list_runs(
        conn: sa.Connection, limit: int, after: Cursor | None, state, kind, max_bytes: int | None
    ) -> list[RunRecord]:
        def keyset(query):
            if state is not None:
                query = query.where(runs.c.state == int(state))
            if kind:
                query = query.where(runs.c.kind == kind)
            if after is not None:
                query = query.where(sa.tuple_(runs.c.create_us, runs.c.run_id) < (after.create_us, after.run_id))
            return query.order_by(runs.c.create_us.desc(), runs.c.run_id.desc()).limit(limit)

        if max_bytes is None:
            return [record_of(row) for row in conn.execute(keyset(sa.select(runs)))]
        # Sizes first (the databases know a value's length without reading it),
        # then only the rows that fit the budget.
        ids, used = [], 0
        for run_id, size in conn.execute(keyset(sa.select(runs.c.run_id, STORED_SIZE))):
            ids.append(run_id)
            used += int(size or 0)
            if used > max_bytes:
                break
        if not ids:
            return []
        rows = conn.execute(
            sa.select(runs).where(runs.c.run_id.in_(ids)).order_by(runs.c.create_us.desc(), runs.c.run_id.desc())
        )
        return [record_of(row) for row in rows]

    async def list_events(self, run_id, after_seq, up_to_seq, limit, conflate=False) -> list[StoredEvent]:
        return await self._read(self._list_events, run_id, after_seq, up_to_seq, limit, conflate)

    @staticmethod
    def _list_events(
        conn: sa.Connection, run_id: str, after_seq: int, up_to_seq: int | None, limit: int, conflate: bool
    ) -> list[StoredEvent]:
        in_range = [run_events.c.run_id == run_id, run_events.c.seq > after_seq]
        if up_to_seq is not None:
            in_range.append(run_events.c.seq <= up_to_seq)
        query = sa.select(run_events).where(*in_range)
        if conflate:  # the same latest progress for every page of one range
            latest = sa.select(sa.func.max(run_events.c.seq)).where(*in_range, run_events.c.kind == PROGRESS_KIND)
            query = query.where(
                sa.or_(run_events.c.kind != PROGRESS_KIND, run_events.c.seq == latest.scalar_subquery())
            )
        query = query.order_by(run_events.c.seq).limit(limit)
        return [StoredEvent(**row._mapping) for row in conn.execute(query)]

    async def recent_events(self, run_id, limit) -> list[StoredEvent]:
        return await self._read(self._recent_events, run_id, limit)

    @staticmethod
    def _recent_events(conn: sa.Connection, run_id: str, limit: int) -> list[StoredEvent]:
        of_run = run_events.c.run_id == run_id
        newest_first = run_events.c.seq.desc()
        rows = list(
            conn.execute(
                sa.select(run_events)
                .where(of_run, run_events.c.kind != PROGRESS_KIND)
                .order_by(newest_first)
                .limit(limit)
            )
        )
        rows += conn.execute(
            sa.select(run_events).where(of_run, run_events.c.kind == PROGRESS_KIND).order_by(newest_first).limit(1)
        ).all()
        return sorted((StoredEvent(**row._mapping) for row in rows), key=lambda ev: ev.seq)

    async def recover(self, replica, interrupted_event) -> tuple[list[str], list[RunRecord]]:
        return await self._read(self._recover, replica, interrupted_event)

    def _recover(self, conn: sa.Connection, replica: str, interrupted_event) -> tuple[list[str], list[RunRecord]]:
        interrupted: list[str] = []
        query = sa.select(runs).where(runs.c.state == int(RunState.RUNNING))
        if not self._is_sqlite:  # other replicas' runs are rescued by lease expiry
            query = query.where(runs.c.replica == replica)
        for row in conn.execute(query).all():
            record = record_of(row)
            ev, error = interrupted_event(record)
            conn.execute(sa.insert(run_events).values(**event_row(ev)))
            conn.execute(
                sa.update(runs)
                .where(runs.c.run_id == record.run_id)
                .values(
                    state=int(RunState.INTERRUPTED),
                    end_us=ev.time_us,
                    update_us=ev.time_us,
                    last_seq=ev.seq,
                    error=error,
                )
            )
            interrupted.append(record.run_id)
        if interrupted:
            schema.bump(conn, [schema.STATES])
        queued = [
            record_of(row)
            for row in conn.execute(
                sa.select(runs).where(runs.c.state == int(RunState.QUEUED)).order_by(runs.c.create_us)
            )
        ]
        return interrupted, queued

    async def ping(self) -> None:
        await self._read(self._ping, internal=True)

    async def revisions(self) -> dict[str, int]:
        return await self._read(self._revisions)

    @staticmethod
    def _revisions(conn: sa.Connection) -> dict[str, int]:
        return {row.section: row.revision for row in conn.execute(sa.select(schema.revisions))}

    async def summary_section(self, section: str, limit: int) -> tuple[int, object]:
        return await self._read(self._summary_section, section, limit, slow=True)

    def _summary_section(self, conn: sa.Connection, section: str, limit: int) -> tuple[int, object]:
        """(revision, value) of a summary section; the revision is read first, so
        the value is at least as new as it says."""
        watermark = schema.PROGRESS if section == "recent_progress" else schema.STATES
        revision = conn.execute(
            sa.select(schema.revisions.c.revision).where(schema.revisions.c.section == watermark)
        ).scalar_one()
        if section == "counts":
            rows = conn.execute(sa.select(runs.c.state, sa.func.count()).group_by(runs.c.state))
            return revision, {RunState(state): int(count) for state, count in rows}
        if section == "recent_runs":
            return revision, self._list_runs(conn, limit, None, None, None, SUMMARY_RECENT_BYTES)
        query = (
            sa.select(runs).where(runs.c.state == int(RunState.RUNNING)).order_by(runs.c.update_us.desc()).limit(limit)
        )
        return revision, [record_of(row) for row in conn.execute(query)]

    async def coordinate(self, fn, *args):
        """Run fn(conn, *args), one of runner_service.coordination's functions, in
        its own transaction on a store thread (guarded like a read, but never
        refused for the callers' reads that fill the pool)."""
        return await self._read(fn, *args, internal=True)

    def listen(self, channels, callback) -> bool:
        """Deliver notifications on channels to callback (on the event loop), from
        now until close. On SQLite, the notices of this process's own commits."""
        if self._is_sqlite:
            self._local_listener = callback
            return True
        if self.listener is not None:
            return True
        self.listener = Listener(self.engine, channels, callback)
        self.listener.start()
        return True

    def status(self) -> StoreStatus:
        pool = self._engine.pool.status() if self._engine is not None else "not started"
        return StoreStatus(
            writes_failing=self._held > 0,
            held_writes=self._held,
            last_write_error=self._write_error,
            reads_in_flight=self._reads_in_flight,
            slow_reads_waiting=self._slow_waiting,
            pool=pool,
        )

    @staticmethod
    def _ping(conn: sa.Connection) -> None:
        conn.execute(sa.text("SELECT 1"))


def _lock_sqlite_for_one_runner(url: str) -> IO[bytes] | None:
    """SQLite serves one runner: hold an exclusive lock on `<database>.lock` for the
    store's life (the operating system drops it if the process dies, kill -9
    included). A second runner on the same file is refused with a clear error."""
    path = sa.engine.make_url(url).database
    if not path or path == ":memory:":
        return None
    lock_path = os.path.abspath(path) + ".lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    handle = open(lock_path, "ab")  # noqa: SIM115 - held open for the store's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"another runner already uses the SQLite database {path}: SQLite serves one runner; "
            "run several replicas on PostgreSQL (RUNNER_DATABASE_URL=postgresql+psycopg://...)"
        ) from None
    return handle


def describe(exc: BaseException) -> str:
    """A database error in one short line for logs and diagnostics: the driver's
    own first line, without the statement or its parameters (which hold user data)."""
    origin = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    lines = str(origin).strip().splitlines()
    return f"{type(origin).__name__}: {lines[0] if lines else ''}"[:200]


def _sections_of(values: dict) -> set[str]:
    """The summary sections that a write of these run columns changes."""
    sections = set()
    if "state" in values:
        sections.add(schema.STATES)
    if "progress_done" in values or "progress_message" in values:
        sections.add(schema.PROGRESS)
    return sections


def _is_transient(exc: BaseException) -> bool:
    """A failure that may pass by itself: the database unreachable or restarting,
    the disk full, a lock held too long. Anything else (a constraint, bad data)
    would fail again."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, sa.exc.DisconnectionError, OSError)
    )


def _resolve(batch: list[_Op]) -> None:
    for op in batch:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)
        # Nobody may await a write-behind future; mark its exception retrieved.
        if op.error is not None and op.record is None:
            op.future.exception()
