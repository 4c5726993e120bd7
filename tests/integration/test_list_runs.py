"""ListRuns: keyset pagination newest first, and the state and kind filters."""

from __future__ import annotations

import pytest

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state


def simulation_request() -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    request.spec.simulation.scenario = "duel"
    request.spec.simulation.max_ticks = 1
    return request


@pytest.fixture
async def seven_runs(runner):
    """Seven finished runs, in submission order: three diagnostic SUCCEEDED, one
    diagnostic FAILED (fail_at_tick), one of kind simulation (whatever its end),
    two more diagnostic SUCCEEDED."""
    requests = [diagnostic(ticks=0) for _ in range(3)]
    requests.append(diagnostic(ticks=1, fail_at_tick=1))
    requests.append(simulation_request())
    requests += [diagnostic(ticks=0) for _ in range(2)]
    runs = []
    for request in requests:
        run = await runner.stub.SubmitRun(request, timeout=5)
        await events_of(runner.stub, run.run_id, timeout=30)
        runs.append(await runner.stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5))
    states = [run.state for run in runs]
    assert states[:4] + states[5:] == [pb.SUCCEEDED] * 3 + [pb.FAILED] + [pb.SUCCEEDED] * 2
    assert states[4] not in (pb.QUEUED, pb.RUNNING)
    assert [run.kind for run in runs] == ["diagnostic"] * 4 + ["simulation"] + ["diagnostic"] * 2
    return runs


async def walk(stub, page_size: int, token: str = "", **filters) -> tuple[list[pb.Run], list[int]]:
    """Every run over every page (from `token`), and the page sizes seen."""
    seen, sizes = [], []
    for _ in range(100):
        page = await stub.ListRuns(pb.ListRunsRequest(page_size=page_size, page_token=token, **filters), timeout=5)
        seen.extend(page.runs)
        sizes.append(len(page.runs))
        token = page.next_page_token
        if not token:
            return seen, sizes
    raise AssertionError("pagination never ended")


async def test_pages_of_three_walk_every_run_once_newest_first(runner, seven_runs):
    seen, sizes = await walk(runner.stub, 3)
    assert sizes == [3, 3, 1]
    assert [run.run_id for run in seen] == [run.run_id for run in reversed(seven_runs)]
    created = [run.create_time.ToMicroseconds() for run in seen]
    assert created == sorted(created, reverse=True)
    assert seen == list(reversed(seven_runs))  # the full runs, as GetRun shows them


async def test_a_page_exactly_as_large_as_what_is_left_has_no_next_token(runner, seven_runs):
    page = await runner.stub.ListRuns(pb.ListRunsRequest(page_size=7), timeout=5)
    assert len(page.runs) == 7 and page.next_page_token == ""
    default = await runner.stub.ListRuns(pb.ListRunsRequest(), timeout=5)  # page_size 0: the default (50)
    assert [run.run_id for run in default.runs] == [run.run_id for run in page.runs]
    assert default.next_page_token == ""


async def test_filters_by_state_and_kind(runner, seven_runs):
    def ids(runs):
        return [run.run_id for run in runs]

    newest_first = list(reversed(seven_runs))
    for state, page_size in ((pb.SUCCEEDED, 2), (pb.FAILED, 1)):
        found, _ = await walk(runner.stub, page_size, state=state)
        assert ids(found) == ids(r for r in newest_first if r.state == state)
    assert len(ids(r for r in seven_runs if r.state == pb.SUCCEEDED)) >= 5
    simulation, _ = await walk(runner.stub, 3, kind="simulation")
    assert ids(simulation) == [seven_runs[4].run_id]
    diagnostic_runs, sizes = await walk(runner.stub, 4, kind="diagnostic")
    assert ids(diagnostic_runs) == ids(r for r in newest_first if r.kind == "diagnostic") and sizes == [4, 2]
    both, _ = await walk(runner.stub, 3, state=pb.FAILED, kind="diagnostic")
    assert ids(both) == [seven_runs[3].run_id]
    for state in (pb.RUNNING, pb.QUEUED, pb.CANCELLED):
        assert (await walk(runner.stub, 3, state=state))[0] == []
    assert (await walk(runner.stub, 3, kind="no-such-kind"))[0] == []


async def test_runs_added_while_paging_do_not_shift_the_pages(runner, seven_runs):
    first = await runner.stub.ListRuns(pb.ListRunsRequest(page_size=3), timeout=5)
    newer = await runner.stub.SubmitRun(diagnostic(ticks=0), timeout=5)
    assert final_state(await events_of(runner.stub, newer.run_id)) == pb.SUCCEEDED
    assert first.next_page_token
    rest, _ = await walk(runner.stub, 3, first.next_page_token)
    assert [run.run_id for run in list(first.runs) + rest] == [run.run_id for run in reversed(seven_runs)]
