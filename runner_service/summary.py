"""GetSummary: counts by state, the newest runs and the latest progress, served from a
revision-gated cache.

Each section is cached with the database revision it was built at. The revisions
(schema.revisions: one counter per kind of write, bumped in the writing transaction
by every replica) decide freshness: a section whose revision is unchanged is a hit;
one a write has touched since is served stale while one background refresh rebuilds
it; a section never built is built for the call (a miss; concurrent misses share one
build). The revisions themselves are read at most every revision_ttl_s, and at once
after a commit of this process touched a section, so a hundred pollers cost a few
small reads a second, not a hundred summaries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time

from protos.runner.v1 import runner_pb2 as pb
from runner_service import convert, schema
from runner_service.runs import RunState
from runner_service.store import RunRecord, Store, now_us

log = logging.getLogger(__name__)

COUNTS, RECENT_RUNS, RECENT_PROGRESS = "counts", "recent_runs", "recent_progress"
# The revision each section follows.
WATERMARKS = {COUNTS: schema.STATES, RECENT_RUNS: schema.STATES, RECENT_PROGRESS: schema.PROGRESS}
RECENT_MAX = 100  # GetSummaryRequest.recent_limit's own limit
PROGRESS_MAX = 20
SPEC_INLINE_MAX = 4096  # a recent run's spec is shown up to this size
_LIMITS = {COUNTS: 0, RECENT_RUNS: RECENT_MAX, RECENT_PROGRESS: PROGRESS_MAX}
_FRESHNESS = {pb.CACHE_HIT: 0, pb.CACHE_STALE: 1, pb.CACHE_MISS: 2}


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    revision: int
    built_us: int
    value: object


class SummaryCache:
    def __init__(self, store: Store, revision_ttl_s: float = 0.25, enabled: bool = True) -> None:
        self._store = store
        self._revision_ttl_s = revision_ttl_s
        self._enabled = enabled
        self._sections: dict[str, Section] = {}
        self._building: dict[str, asyncio.Future[Section]] = {}
        self._revisions: dict[str, int] = {}
        self._revisions_at = -1e9
        self._revisions_reading: asyncio.Future[dict[str, int]] | None = None
        self._tasks: set[asyncio.Future] = set()
        self.revision_reads = 0  # database reads, for diagnostics and the benchmark
        self.builds = 0

    def touched(self, sections: set[str]) -> None:
        """A commit of this process touched these watermarks: look again at once."""
        self._revisions_at = -1e9

    async def summary(self, recent_limit: int) -> pb.Summary:
        """Raises StoreError (and its kinds) when the database cannot answer a miss."""
        recent_limit = min(recent_limit or 10, RECENT_MAX)
        if not self._enabled:  # every section read for every call (the benchmark's baseline)
            sections: dict[str, tuple[Section, pb.CacheStatus]] = {
                name: (await self._build(name), pb.CACHE_MISS) for name in WATERMARKS
            }
        else:
            revisions = await self._current_revisions()
            sections = {}
            for name, watermark in WATERMARKS.items():
                cached = self._sections.get(name)
                if cached is None:
                    sections[name] = (await self._build_once(name), pb.CACHE_MISS)
                elif cached.revision < revisions.get(watermark, 0):
                    self._refresh(name)
                    sections[name] = (cached, pb.CACHE_STALE)
                else:
                    sections[name] = (cached, pb.CACHE_HIT)
        return _assemble(sections, recent_limit)

    async def _current_revisions(self) -> dict[str, int]:
        if time.monotonic() - self._revisions_at < self._revision_ttl_s:
            return self._revisions
        if self._revisions_reading is None:
            self._revisions_reading = asyncio.ensure_future(self._read_revisions())
        reading = self._revisions_reading
        try:
            return await asyncio.shield(reading)
        finally:
            if self._revisions_reading is reading and reading.done():
                self._revisions_reading = None

    async def _read_revisions(self) -> dict[str, int]:
        started = time.monotonic()
        self.revision_reads += 1
        revisions = await self._store.revisions()
        self._revisions, self._revisions_at = revisions, started
        return revisions

    async def _build_once(self, name: str) -> Section:
        """Build a section, sharing the build with any concurrent caller."""
        building = self._building.get(name)
        if building is None:
            building = asyncio.ensure_future(self._build_and_keep(name))
            self._building[name] = building
            building.add_done_callback(functools.partial(self._built, name))
        return await asyncio.shield(building)

    def _built(self, name: str, building: asyncio.Future[Section]) -> None:
        if self._building.get(name) is building:
            del self._building[name]
        if not building.cancelled():
            building.exception()  # a refresh nobody awaits must not warn "never retrieved"

    async def _build_and_keep(self, name: str) -> Section:
        section = await self._build(name)
        kept = self._sections.get(name)
        if kept is None or kept.revision <= section.revision:
            self._sections[name] = section
        return section

    async def _build(self, name: str) -> Section:
        self.builds += 1
        revision, value = await self._store.summary_section(name, _LIMITS[name])
        return Section(revision, now_us(), value)

    def _refresh(self, name: str) -> None:
        """Rebuild a stale section in the background (one at a time per section)."""
        if name in self._building:
            return
        task = asyncio.ensure_future(self._build_once(name))
        self._tasks.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "summary refresh failed; the stale section is served meanwhile", extra={"error": str(task.exception())}
            )


def _assemble(sections: dict[str, tuple[Section, pb.CacheStatus]], recent_limit: int) -> pb.Summary:
    out = pb.Summary()
    out.generated_time.FromMicroseconds(now_us())
    counts: dict[RunState, int] = sections[COUNTS][0].value  # type: ignore[assignment]
    for state in sorted(counts):
        out.counts.add(state=state.value, count=counts[state])
    recent: list[RunRecord] = sections[RECENT_RUNS][0].value  # type: ignore[assignment]
    for record in recent[:recent_limit]:
        out.recent_runs.append(_brief(record))
    running: list[RunRecord] = sections[RECENT_PROGRESS][0].value  # type: ignore[assignment]
    for record in running:
        item = out.recent_progress.add(run_id=record.run_id, kind=record.kind, replica=record.replica)
        item.progress.done = record.progress_done
        item.progress.total = record.progress_total
        item.progress.message = record.progress_message
        if record.progress_total > 0:
            item.progress.fraction = min(1.0, record.progress_done / record.progress_total)
        item.update_time.FromMicroseconds(record.update_us)
    worst = pb.CACHE_HIT
    for name, (section, status) in sections.items():
        entry = out.sections.add(name=name, cache=status, revision=section.revision)
        entry.built_time.FromMicroseconds(section.built_us)
        if _FRESHNESS[status] > _FRESHNESS[worst]:
            worst = status
    out.cache = worst
    return out


def _brief(record: RunRecord) -> pb.Run:
    """A recent run without its bulk: no result, error details or labels; its
    spec only when small."""
    brief = dataclasses.replace(record, result=None, labels={})
    if len(record.spec) > SPEC_INLINE_MAX:
        brief.spec = b""
    run = convert.run_to_proto(brief)
    if run.HasField("error"):
        run.error.ClearField("details")
    return run
