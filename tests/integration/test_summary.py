"""GetSummary: counts by state, the newest runs and the latest progress, from a cache
gated by the database's revisions, on SQLite and on PostgreSQL (two replicas)."""

from __future__ import annotations

import asyncio
import time

import pytest

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, wait_for_state

SUCCEEDED_KEY = pb.RunState.Name(pb.SUCCEEDED)


def counts_of(summary: pb.Summary) -> dict[str, int]:
    return {pb.RunState.Name(c.state): c.count for c in summary.counts}


def section(summary: pb.Summary, name: str) -> pb.SummarySection:
    (found,) = [s for s in summary.sections if s.name == name]
    return found


async def summary_until(stub, predicate, timeout_s: float = 10.0) -> tuple[pb.Summary, list[int]]:
    """Poll GetSummary until predicate(summary); returns it and the cache statuses seen."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        summary = await stub.GetSummary(pb.GetSummaryRequest(), timeout=5)
        seen.append(summary.cache)
        if predicate(summary):
            return summary, seen
        assert time.monotonic() < deadline, f"summary never matched; last: {summary}"
        await asyncio.sleep(0.02)


async def test_a_summary_is_built_once_then_served_until_a_write_touches_it(start_runner, database_url):
    async with start_runner(database_url=database_url, workers=2) as running:
        stub = running.stub
        first = await stub.GetSummary(pb.GetSummaryRequest(), timeout=5)
        assert first.cache == pb.CACHE_MISS and not first.counts and not first.recent_runs
        assert {s.name for s in first.sections} == {"counts", "recent_runs", "recent_progress"}
        second = await stub.GetSummary(pb.GetSummaryRequest(), timeout=5)
        assert second.cache == pb.CACHE_HIT
        builds = running.app.summary.builds

        runs = [await stub.SubmitRun(diagnostic(ticks=1), timeout=5) for _ in range(3)]
        for run in runs:
            await wait_for_state(stub, run.run_id, pb.SUCCEEDED)
        summary, seen = await summary_until(stub, lambda s: counts_of(s).get(SUCCEEDED_KEY) == 3)
        # The stale sections were served while they were rebuilt, then the fresh ones.
        assert pb.CACHE_STALE in seen, seen
        assert [r.run_id for r in summary.recent_runs] == [r.run_id for r in reversed(runs)]
        assert all(not r.HasField("result") for r in summary.recent_runs)
        assert summary.recent_runs[0].spec.HasField("diagnostic")
        settled, _ = await summary_until(stub, lambda s: s.cache == pb.CACHE_HIT)
        assert counts_of(settled) == {SUCCEEDED_KEY: 3}
        assert section(settled, "counts").revision > section(first, "counts").revision
        # Polling a settled summary builds nothing more.
        rebuilt = running.app.summary.builds
        for _ in range(20):
            assert (await stub.GetSummary(pb.GetSummaryRequest(), timeout=5)).cache == pb.CACHE_HIT
        assert running.app.summary.builds == rebuilt > builds


async def test_recent_runs_respect_their_limit_and_running_runs_show_their_progress(start_runner, database_url):
    async with start_runner(database_url=database_url, workers=1) as running:
        stub = running.stub
        long = await stub.SubmitRun(diagnostic(ticks=3000, tick_s=0.01, progress_every=1), timeout=5)
        await wait_for_state(stub, long.run_id, pb.RUNNING)
        for _ in range(4):
            await stub.SubmitRun(diagnostic(ticks=1), timeout=5)

        def shows_progress(summary: pb.Summary) -> bool:
            return any(p.run_id == long.run_id and p.progress.done > 0 for p in summary.recent_progress)

        summary, _ = await summary_until(stub, shows_progress)
        (item,) = [p for p in summary.recent_progress if p.run_id == long.run_id]
        assert item.kind == "diagnostic" and item.progress.total == 3000 and 0 < item.progress.fraction < 1
        limited = await stub.GetSummary(pb.GetSummaryRequest(recent_limit=2), timeout=5)
        assert len(limited.recent_runs) == 2
        await stub.CancelRun(pb.CancelRunRequest(run_id=long.run_id), timeout=5)


async def test_two_replicas_share_the_watermarks_in_the_database(start_runner, postgres_url):
    """A write committed by replica a makes replica b's cached summary stale."""
    async with (
        start_runner(database_url=postgres_url, replica="a", workers=1) as a,
        start_runner(database_url=postgres_url, replica="b", workers=1) as b,
    ):
        await b.stub.GetSummary(pb.GetSummaryRequest(), timeout=5)
        run = await a.stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        await wait_for_state(a.stub, run.run_id, pb.SUCCEEDED)
        summary, seen = await summary_until(b.stub, lambda s: counts_of(s).get(SUCCEEDED_KEY) == 1)
        assert pb.CACHE_STALE in seen and summary.recent_runs[0].run_id == run.run_id


@pytest.mark.parametrize("limit", [0, 100])
async def test_every_section_is_there_whatever_the_limit(limit, start_runner):
    async with start_runner() as running:
        summary = await running.stub.GetSummary(pb.GetSummaryRequest(recent_limit=limit), timeout=5)
        assert summary.HasField("generated_time") and len(summary.sections) == 3
