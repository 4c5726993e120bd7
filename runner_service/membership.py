"""This replica's place among the replicas sharing one database.

It holds a lease (a row renewed by heartbeat every lease_ttl_s / 3) that marks it
alive, and competes for the leader's lock (renewed every leader_heartbeat_s, taken
over once leader_ttl_s old). The leader's rounds: runs whose replica's lease
expired end INTERRUPTED (or go back to the queue where they allow another
attempt), queued runs whose own timeout passed end DEADLINE_EXCEEDED, old
terminal runs are pruned, and long-dead replicas are forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable

from runner_service import coordination, endings
from runner_service.metrics import Observer
from runner_service.store import Store, StoreError, now_us

log = logging.getLogger(__name__)

RESCUE_BATCH = 200


class ReplicaNameInUse(Exception):
    """Another live replica holds this replica's name."""


@dataclasses.dataclass
class LeaderRounds:
    """What the leader's rounds did, for diagnostics and tests."""

    rescued: int = 0
    requeued: int = 0
    expired: int = 0
    pruned: int = 0
    last_round_us: int = 0


class Membership:
    def __init__(
        self,
        settings,
        store: Store,
        on_lease_lost: Callable[[], None],
        supervise: Callable[[asyncio.Task], None],
        observer: Observer | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._observer = observer if observer is not None else Observer()  # told of the runs a round moves
        self._on_lease_lost = on_lease_lost
        self._supervise = supervise  # told when a task of ours dies
        self.name = settings.replica
        self.incarnation = uuid.uuid4().hex
        self.leader = False
        self.rounds = LeaderRounds()
        self._tasks: list[asyncio.Task] = []

    async def join(self) -> None:
        """Take this replica's lease. A lease of the same name still held (a previous
        process that died less than a TTL ago) is waited for; one held for longer
        than two TTLs belongs to a live replica of the same name: start-up fails
        (ReplicaNameInUse), as it does on StoreError."""
        ttl = self._settings.lease_ttl_s
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2 * ttl + 1.0
        waited = False
        while not await self._store.coordinate(coordination.register, self.name, self.incarnation, ttl):
            if loop.time() > give_up:
                raise ReplicaNameInUse(
                    f"another live replica is named {self.name!r}: give each replica its own RUNNER_REPLICA"
                )
            if not waited:
                log.warning("this replica's name holds an unexpired lease; waiting for it to expire")
                waited = True
            await asyncio.sleep(min(1.0, ttl / 3))
        loop = asyncio.get_running_loop()
        for coro, name in ((self._heartbeat_forever(), "lease-heartbeat"), (self._lead_forever(), "leader")):
            task = loop.create_task(coro, name=name)
            task.add_done_callback(self._supervise)
            self._tasks.append(task)

    async def leave(self) -> None:
        """Stop heartbeating, hand the leader's lock back, drop the lease."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        try:
            if self.leader:
                await self._store.coordinate(coordination.resign, self.name)
                self.leader = False
                log.info("leadership released")
            await self._store.coordinate(coordination.unregister, self.name, self.incarnation)
        except StoreError as exc:
            log.warning("could not leave cleanly; the lease will expire", extra={"error": str(exc)})

    # ------------------------------------------------------------ the lease

    async def _heartbeat_forever(self) -> None:
        ttl = self._settings.lease_ttl_s
        last_renewed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await self._store.coordinate(coordination.renew, self.name, self.incarnation, ttl)
            except StoreError as exc:
                silent = asyncio.get_running_loop().time() - last_renewed
                log.warning("lease renewal failed", extra={"error": str(exc), "silent_s": round(silent, 1)})
                if silent < ttl:
                    continue
                held = False  # past the TTL others consider this replica dead
            if held:
                last_renewed = asyncio.get_running_loop().time()
                continue
            log.critical("this replica's lease expired; its runs were taken over; stopping them here")
            self._on_lease_lost()
            try:
                self.incarnation = uuid.uuid4().hex
                if await self._store.coordinate(coordination.register, self.name, self.incarnation, ttl):
                    last_renewed = asyncio.get_running_loop().time()
            except StoreError as exc:
                log.warning("cannot register again yet", extra={"error": str(exc)})

    # ------------------------------------------------------------ leadership

    async def _lead_forever(self) -> None:
        settings = self._settings
        # Rounds are frequent enough to end a lost replica's runs soon after its
        # lease expires; the lock itself is renewed every leader_heartbeat_s.
        round_s = min(settings.leader_heartbeat_s, max(0.2, settings.lease_ttl_s / 4))
        loop = asyncio.get_running_loop()
        renewed_at = -1e9
        while True:
            now = loop.time()
            if self.leader and now - renewed_at < settings.leader_heartbeat_s:
                await self._round()
                await asyncio.sleep(round_s)
                continue
            try:
                held = await self._store.coordinate(coordination.lead, self.name, settings.leader_ttl_s)
            except StoreError as exc:
                log.warning("leader lock check failed", extra={"error": str(exc)})
                held = self.leader and loop.time() - renewed_at < settings.leader_ttl_s
            if held:
                if not self.leader:
                    log.info("this replica is now the leader")
                self.leader = True
                renewed_at = now
                continue
            if self.leader:
                log.warning("leadership lost")
            self.leader = False
            await asyncio.sleep(settings.leader_heartbeat_s / 2)

    async def _round(self) -> None:
        settings = self._settings
        store = self._store
        rounds = self.rounds
        try:
            while True:
                moved = await store.coordinate(
                    coordination.rescue,
                    RESCUE_BATCH,
                    endings.REQUEUED,
                    endings.LOST,
                    endings.CANCELLED_LOST,
                )
                self._observer.runs_moved(moved, endings.REQUEUED, endings.LOST, endings.CANCELLED_LOST)
                if moved:
                    requeued = sum(1 for r in moved if not r.state.terminal)
                    rounds.rescued += len(moved)
                    rounds.requeued += requeued
                    log.warning(
                        "runs of a lost replica taken over",
                        extra={"runs": len(moved), "requeued": requeued, "run_ids": [r.run_id for r in moved][:20]},
                    )
                if len(moved) < RESCUE_BATCH:
                    break
            expired = await store.coordinate(coordination.expire_queued, RESCUE_BATCH, endings.EXPIRED)
            rounds.expired += len(expired)
            self._observer.runs_moved(expired, endings.EXPIRED)
            if settings.retention_s > 0:
                before = now_us() - int(settings.retention_s * 1e6)
                rounds.pruned += await store.coordinate(coordination.prune, before, settings.prune_batch)
            await store.coordinate(coordination.forget_replicas, max(settings.lease_ttl_s * 4, 60.0))
            rounds.last_round_us = now_us()
        except StoreError as exc:
            log.warning("leader round failed", extra={"error": str(exc)})
