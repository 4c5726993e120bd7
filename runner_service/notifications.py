"""PostgreSQL LISTEN on its own connection and thread, delivered to the event loop.

Notifications arrive in bursts (every commit of another replica's writer may send
several); they are gathered and handed to the event loop in one call per burst.
After the connection is lost and made again, the callback receives RECONNECTED:
anything sent meanwhile was missed, so the listener's users look again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterable

import sqlalchemy as sa

log = logging.getLogger(__name__)

RECONNECTED = ("", "")  # (channel, payload) delivered after a reconnect
_POLL_S = 0.5
_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 5.0

Callback = Callable[[list[tuple[str, str]]], None]


class Listener:
    def __init__(self, engine: sa.Engine, channels: Iterable[str], callback: Callback) -> None:
        self._engine = engine
        self._channels = tuple(channels)
        self._callback = callback
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: collections.deque[tuple[str, str]] = collections.deque()
        self._scheduled = False
        self._lock = threading.Lock()
        self.connected = False
        self.reconnects = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name="store-listen", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    def _connect(self):
        import psycopg

        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        conn = psycopg.connect(*cargs, **cparams, autocommit=True, connect_timeout=5)
        try:
            for channel in self._channels:
                conn.execute(f"LISTEN {channel}")  # channel names are our own constants
        except BaseException:
            conn.close()
            raise
        return conn

    def _main(self) -> None:
        backoff = _RETRY_FIRST_S
        first = True
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001 - retried with backoff; the pollers cover the gap
                if self.connected or first:
                    log.warning("cannot listen for notifications; polling meanwhile", extra={"error": str(exc)})
                self.connected = first = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)
                continue
            self.connected = True
            backoff = _RETRY_FIRST_S
            if not first:
                self.reconnects += 1
                log.info("listening for notifications again")
            first = False
            self._deliver([RECONNECTED])  # whatever was sent while nobody listened
            try:
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=_POLL_S):
                        self._deliver([(note.channel, note.payload)])
            except Exception as exc:  # noqa: BLE001 - the connection broke: connect again
                log.warning("notification connection lost", extra={"error": str(exc)})
                self.connected = False
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass

    def _deliver(self, batch: list[tuple[str, str]]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            self._pending.extend(batch)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _flush(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        try:
            self._callback(batch)
        except Exception:  # one bad delivery must not stop the listener
            log.exception("notification handler failed")
