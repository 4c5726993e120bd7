"""The database guard: reads beyond the pool and its bounded waiting line are
refused at once with UNAVAILABLE / DB_POOL_EXHAUSTED and a retry hint, never
queued without bound; the runner serves normally right after."""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, diagnostic, rich_status


async def test_a_flood_of_reads_is_refused_with_db_pool_exhausted(start_runner):
    async with start_runner(db_pool_size=1, db_read_queue_max=2, slow_query_concurrency=1) as running:
        stub = running.stub
        for _ in range(5):
            await stub.SubmitRun(diagnostic(ticks=1), timeout=5)
        outcomes = await asyncio.gather(
            *(stub.ListRuns(pb.ListRunsRequest(page_size=500), timeout=10) for _ in range(60)),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        served = [o for o in outcomes if isinstance(o, pb.ListRunsResponse)]
        assert len(refused) + len(served) == 60
        assert refused and served
        for err in refused:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            status = rich_status(err)
            assert detail_of(status, error_details_pb2.ErrorInfo).reason == "DB_POOL_EXHAUSTED"
            assert detail_of(status, error_details_pb2.RetryInfo).retry_delay.ToNanoseconds() > 0
        assert all(len(page.runs) == 5 for page in served)
        # Nothing is left waiting: the next read is served at once.
        page = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
        assert len(page.runs) == 5
        resilience = await stub.GetResilience(pb.GetResilienceRequest(), timeout=5)
        assert resilience.database.read_queue_max == 2 and resilience.database.reads_in_flight == 0
