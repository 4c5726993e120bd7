"""The simulation job kinds through a real runner: determinism across worker processes
and restarts, a known win probability inside its interval, bad paths rejected at
submission, cancellation mid-batch, ListScenarios with a malformed file."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import detail_of, events_of, final_state, rich_status, wait_for_state

IMMORTAL = {"sides": {side: {"units": {"0": {"strength": 1e12}}} for side in ("red", "blue")}}


def fill(sim: pb.SimulationSpec, scenario: str, max_ticks: int = 10_000, seed: int = 0, overrides=None) -> None:
    sim.scenario = scenario
    sim.max_ticks = max_ticks
    sim.seed = seed
    if overrides:
        sim.config_overrides.update(overrides)


def simulation_request(scenario: str, **kw) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    fill(request.spec.simulation, scenario, **kw)
    return request


def batch_request(scenario: str, iterations: int, **kw) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    fill(request.spec.batch.simulation, scenario, **kw)
    request.spec.batch.num_iterations = iterations
    return request


async def finished(stub, run_id: str, timeout: float = 60.0) -> pb.Run:
    events = await events_of(stub, run_id, timeout=timeout)
    run = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
    assert final_state(events) == run.state
    return run


async def execute(stub, request: pb.SubmitRunRequest) -> pb.Run:
    run = await stub.SubmitRun(request, timeout=5)
    run = await finished(stub, run.run_id)
    assert run.state == pb.SUCCEEDED, run.error.message
    return run


def result_dict(run: pb.Run) -> dict:
    return json_format.MessageToDict(run.result)


# ------------------------------------------------------------------ determinism


async def test_same_spec_same_result_in_two_worker_processes_and_after_a_restart(start_runner):
    request = batch_request(
        "three_way", 150, seed=20240611, overrides={"sides": {"blue": {"units": {"0": {"count": 15}}}}}
    )
    async with start_runner(workers=2) as running:
        # Both submitted before either finishes: each runs on its own idle worker.
        runs = await asyncio.gather(*(running.stub.SubmitRun(request, timeout=5) for _ in range(2)))
        first, second = await asyncio.gather(*(finished(running.stub, r.run_id) for r in runs))
        single = await execute(running.stub, simulation_request("skirmish", seed=99))
    assert first.state == second.state == pb.SUCCEEDED
    assert first.result == second.result  # bit for bit: doubles compared exactly
    assert result_dict(first)["completed"] == 150
    async with start_runner(workers=1) as restarted:
        again = await execute(restarted.stub, request)
        single_again = await execute(restarted.stub, simulation_request("skirmish", seed=99))
    assert again.result == first.result
    assert single_again.result == single.result


# ------------------------------------------------------------------ statistics


async def test_a_known_win_probability_lands_inside_its_interval(runner):
    # marksman: red wins within n ticks with probability 1 - 0.7**n, blue never.
    run = await execute(runner.stub, batch_request("marksman", 1000, max_ticks=3, seed=5))
    result = result_dict(run)
    red, blue = result["sides"]["red"], result["sides"]["blue"]
    assert result["completed"] == 1000 and result["failed"] == []
    low, high = red["win_ci95"]
    assert low <= 1 - 0.7**3 <= high
    assert high - low < 0.07
    assert blue["wins"] == 0 and blue["win_ci95"][0] == 0.0
    assert red["wins"] + result["draws"] == 1000


async def test_compare_of_a_symmetric_scenario_contains_no_difference(runner):
    request = pb.SubmitRunRequest()
    fill(request.spec.compare.baseline, "duel", seed=1)
    fill(request.spec.compare.variant, "duel", seed=2)
    request.spec.compare.num_iterations = 300
    result = result_dict(await execute(runner.stub, request))
    for side in ("red", "blue"):
        low, high = result["difference"]["sides"][side]["ci95"]
        assert low <= 0.0 <= high


async def test_sweep_gives_one_row_per_value(runner):
    request = pb.SubmitRunRequest()
    fill(request.spec.sweep.simulation, "marksman", max_ticks=1, seed=3)
    request.spec.sweep.parameter = "sides.red.units.0.accuracy"
    for value in (0.0, 0.5, 1.0):
        request.spec.sweep.values.add().number_value = value
    request.spec.sweep.num_iterations = 50
    result = result_dict(await execute(runner.stub, request))
    assert [row["value"] for row in result["rows"]] == [0.0, 0.5, 1.0]
    assert result["rows"][0]["sides"]["red"]["win_probability"] == 0.0
    assert result["rows"][2]["sides"]["red"]["win_probability"] == 1.0


# ------------------------------------------------------------------ rejected at submission


def sweep_with_parameter(parameter: str) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    fill(request.spec.sweep.simulation, "skirmish")
    request.spec.sweep.parameter = parameter
    request.spec.sweep.values.add().number_value = 3
    request.spec.sweep.num_iterations = 2
    return request


def compare_with_variant(overrides: dict) -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    fill(request.spec.compare.baseline, "skirmish")
    fill(request.spec.compare.variant, "skirmish", overrides=overrides)
    request.spec.compare.num_iterations = 2
    return request


BAD_PATHS = {
    "simulation": (
        simulation_request("skirmish", overrides={"sides": {"red": {"units": {"0": {"strenght": 12}}}}}),
        "spec.simulation.config_overrides.sides.red.units.0.strenght",
    ),
    "batch, unknown side": (
        batch_request("skirmish", 3, overrides={"sides": {"purple": {"units": {"0": {"count": 1}}}}}),
        "spec.batch.simulation.config_overrides.sides.purple",
    ),
    "compare variant, index out of range": (
        compare_with_variant({"sides": {"blue": {"units": {"7": {"count": 1}}}}}),
        "spec.compare.variant.config_overrides.sides.blue.units.7",
    ),
    "simulation, invalid value": (
        simulation_request("skirmish", overrides={"sides": {"red": {"units": {"0": {"count": -4}}}}}),
        "spec.simulation.config_overrides.sides.red.units.0.count",
    ),
    "sweep parameter": (sweep_with_parameter("sides.red.units.0.speed"), "spec.sweep.parameter"),
}


@pytest.mark.parametrize("case", list(BAD_PATHS))
async def test_a_bad_override_path_is_rejected_naming_it(runner, case):
    request, field = BAD_PATHS[case]
    for call in ("SubmitRun", "ExecuteRun"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if call == "SubmitRun":
                await runner.stub.SubmitRun(request, timeout=5)
            else:
                async for _ in runner.stub.ExecuteRun(request, timeout=5):
                    pytest.fail("no event for a rejected run")
        err = caught.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        bad = detail_of(rich_status(err), error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == [field]
        assert field in err.details()
        if case == "sweep parameter":
            assert "sides.red.units.0.speed" in bad.field_violations[0].description
    assert (await runner.stub.ListRuns(pb.ListRunsRequest(), timeout=5)).runs == []


async def test_an_unknown_scenario_is_not_found(runner):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.SubmitRun(batch_request("atlantis", 2), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "atlantis" in caught.value.details()


# ------------------------------------------------------------------ cancellation


async def cancel_quickly(stub, run_id: str) -> tuple[float, pb.Run]:
    started = time.monotonic()
    await stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=5)
    run = await finished(stub, run_id, timeout=10)
    return time.monotonic() - started, run


async def wait_for_progress(stub, run_id: str, timeout: float = 20.0) -> pb.Progress:
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout)
    try:
        async for event in call:
            if event.WhichOneof("event") == "progress" and event.progress.done > 0:
                return event.progress
    finally:
        call.cancel()
    raise AssertionError("the run ended without progress")


async def test_cancel_between_iterations_of_a_batch_ends_cancelled_quickly(start_runner):
    # The grace is long: only the job's own check can end the run this fast.
    async with start_runner(workers=1, cancel_grace_s=10.0) as running:
        stub = running.stub
        run = await stub.SubmitRun(
            batch_request(
                "skirmish",
                1000,
                overrides={
                    "sides": {"red": {"units": {"0": {"count": 600}}}, "blue": {"units": {"0": {"count": 600}}}}
                },
            ),
            timeout=5,
        )
        await wait_for_progress(stub, run.run_id)
        elapsed, ended = await cancel_quickly(stub, run.run_id)
        assert ended.state == pb.CANCELLED
        assert elapsed < 1.5
        assert "killed" not in ended.error.message
        assert 0 < ended.progress.done < 1000


async def test_cancel_inside_an_endless_iteration_ends_cancelled_within_a_tick(start_runner):
    async with start_runner(workers=1, cancel_grace_s=10.0) as running:
        stub = running.stub
        run = await stub.SubmitRun(batch_request("duel", 5, max_ticks=1_000_000, overrides=IMMORTAL), timeout=5)
        await wait_for_state(stub, run.run_id, pb.RUNNING)
        await asyncio.sleep(0.2)  # well inside the first (endless) iteration
        elapsed, ended = await cancel_quickly(stub, run.run_id)
        assert ended.state == pb.CANCELLED
        assert elapsed < 1.5 and "killed" not in ended.error.message
        assert ended.progress.done == 0


async def test_cancel_a_single_simulation_within_a_tick(start_runner):
    async with start_runner(workers=1, cancel_grace_s=10.0) as running:
        stub = running.stub
        run = await stub.SubmitRun(simulation_request("duel", max_ticks=1_000_000, overrides=IMMORTAL), timeout=5)
        progress = await wait_for_progress(stub, run.run_id)
        assert progress.total == 1_000_000
        elapsed, ended = await cancel_quickly(stub, run.run_id)
        assert ended.state == pb.CANCELLED and elapsed < 1.5 and "killed" not in ended.error.message


# ------------------------------------------------------------------ ListScenarios


async def test_list_scenarios_reports_a_malformed_file_and_lists_the_others(start_runner, tmp_path):
    directory = tmp_path / "scenarios"
    directory.mkdir()
    good = {
        "description": "north and south",
        "sides": {
            "north": {"units": [{"type": "pikes", "count": 4, "strength": 5, "attack": 2}]},
            "south": {"units": [{"type": "bows", "count": 3, "strength": 4, "attack": 3}]},
        },
    }
    (directory / "border.json").write_text(json.dumps(good))
    (directory / "broken.json").write_text('{"sides": ')
    async with start_runner(scenario_dir=str(directory)) as running:
        listing = await running.stub.ListScenarios(pb.ListScenariosRequest(), timeout=5)
        by_name = {s.name: s for s in listing.scenarios}
        assert {"border", "broken", "skirmish", "duel", "marksman", "three_way"} <= set(by_name)
        assert by_name["broken"].error.startswith("not valid JSON")
        border = by_name["border"]
        assert border.error == "" and border.description == "north and south"
        assert [(s.name, [(u.unit_type, u.count) for u in s.units]) for s in border.sides] == [
            ("north", [("pikes", 4)]),
            ("south", [("bows", 3)]),
        ]
        assert [s.name for s in listing.scenarios] == sorted(by_name)
        # A malformed scenario cannot be used, and says why.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.SubmitRun(simulation_request("broken"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not valid JSON" in caught.value.details()
        # A file added later is seen (the directory's mtime changed).
        (directory / "later.json").write_text(json.dumps(good))
        listing = await running.stub.ListScenarios(pb.ListScenariosRequest(), timeout=5)
        assert "later" in {s.name for s in listing.scenarios}


# ------------------------------------------------------------------ heavy kinds


def endless_compare() -> pb.SubmitRunRequest:
    request = pb.SubmitRunRequest()
    fill(request.spec.compare.baseline, "duel", max_ticks=1_000_000, overrides=IMMORTAL)
    fill(request.spec.compare.variant, "duel", max_ticks=1_000_000, overrides=IMMORTAL)
    request.spec.compare.num_iterations = 3
    return request


async def test_compare_and_sweep_share_their_own_concurrency_limit(start_runner):
    async with start_runner(workers=3, max_heavy_concurrent=2, cancel_grace_s=1.0) as running:
        stub = running.stub
        heavy = [await stub.SubmitRun(endless_compare(), timeout=5) for _ in range(3)]
        await wait_for_state(stub, heavy[0].run_id, pb.RUNNING)
        await wait_for_state(stub, heavy[1].run_id, pb.RUNNING)
        # A third worker is idle, but the third heavy run waits for the limit; a
        # run of another kind submitted after it passes it and takes that worker.
        light = await stub.SubmitRun(
            pb.SubmitRunRequest(spec=pb.RunSpec(diagnostic=pb.DiagnosticSpec(ticks=1))), timeout=5
        )
        assert (await finished(stub, light.run_id)).state == pb.SUCCEEDED
        third = await stub.GetRun(pb.GetRunRequest(run_id=heavy[2].run_id), timeout=5)
        assert third.state == pb.QUEUED
        # One heavy run ends: the waiting one starts.
        await stub.CancelRun(pb.CancelRunRequest(run_id=heavy[0].run_id), timeout=5)
        await wait_for_state(stub, heavy[2].run_id, pb.RUNNING)
        for run in heavy[1:]:
            await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id), timeout=5)
            assert (await finished(stub, run.run_id)).state == pb.CANCELLED


# ------------------------------------------------------------------ RUNNER_JOBS


async def test_a_job_module_named_in_configuration_runs(start_runner, tmp_path, monkeypatch):
    package = tmp_path / "opjobs"
    package.mkdir()
    (package / "square.py").write_text(
        "def run(params, ctx):\n    ctx.progress(1, 1, 'squared')\n    return {'square': params['n'] ** 2}\n"
    )
    # Workers import the module: it must be on their path, as an operator's would be.
    monkeypatch.setenv("PYTHONPATH", str(package))
    monkeypatch.syspath_prepend(str(package))
    async with start_runner(jobs="square=square:run") as running:
        request = pb.SubmitRunRequest()
        request.spec.plugin.kind = "square"
        request.spec.plugin.parameters.update({"n": 7})
        run = await execute(running.stub, request)
    assert result_dict(run) == {"square": 49}


def test_a_malformed_job_entry_is_refused_at_start_up():
    from runner_service import settings as settings_mod

    with pytest.raises(ValueError, match="RUNNER_JOBS"):
        settings_mod.from_env({"RUNNER_JOBS": "square"})
    assert settings_mod.parse_jobs(" a = m:f , b=n.o:g ") == {"a": "m:f", "b": "n.o:g"}
