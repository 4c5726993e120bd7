"""The simulation job kinds called directly, with a fake context: results, statistics,
failed iterations, the more-than-half rule, cancellation inside an iteration."""

from __future__ import annotations

import json

import pytest

from runner_service.context import JobCancelled
from runner_service.jobs import engine, simulation


class FakeContext:
    def __init__(self, cancel_after_checks: int | None = None) -> None:
        self.progress_calls: list[tuple[int, int, str]] = []
        self.checks = 0
        self.cancel_after_checks = cancel_after_checks

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_after_checks is not None and self.checks > self.cancel_after_checks:
            raise JobCancelled("run")

    def progress(self, done, total=0, message=""):
        self.progress_calls.append((done, total, message))

    def log(self, message, level="INFO"):
        pass


def sim(scenario="duel", max_ticks=1000, seed=1, overrides=None) -> dict:
    return {"scenario": scenario, "max_ticks": max_ticks, "seed": seed, "config_overrides": overrides or {}}


def test_simulation_result_and_progress():
    ctx = FakeContext()
    result = simulation.run_simulation(sim("skirmish", seed=42), ctx)
    assert result["scenario"] == "skirmish" and result["seed"] == "42"
    assert result["winner"] in ("red", "blue", "draw")
    assert set(result["survivors"]) == {"red", "blue"}
    assert ctx.progress_calls[-1][:2] == (result["ticks"], result["ticks"])
    assert ctx.checks == result["ticks"], "cancellation is checked every tick"
    assert simulation.run_simulation(sim("skirmish", seed=42), FakeContext()) == result
    json.dumps(result)


def test_batch_statistics_and_progress_per_iteration():
    ctx = FakeContext()
    result = simulation.run_batch({"simulation": sim("marksman", max_ticks=2, seed=2), "num_iterations": 200}, ctx)
    assert [c[:2] for c in ctx.progress_calls] == [(i, 200) for i in range(1, 201)]
    red, blue = result["sides"]["red"], result["sides"]["blue"]
    assert result["completed"] == 200 and result["failed"] == [] and result["failed_count"] == 0
    assert red["wins"] + result["draws"] == 200 and blue["wins"] == 0
    assert red["win_ci95"][0] <= 1 - 0.7**2 <= red["win_ci95"][1]
    assert blue["win_ci95"] == [0.0, pytest.approx(0.0188, abs=1e-4)]
    assert red["survivors"]["marksman"] == {"mean": 1.0, "std": 0.0, "min": 1, "max": 1}
    assert 1 <= result["ticks"]["mean"] <= 2 and result["ticks"]["max"] == 2
    json.dumps(result)


def test_batch_iterations_that_fail_are_listed(monkeypatch):
    real = engine.simulate
    calls = []

    def flaky(battle, seed, max_ticks, **kw):
        calls.append(seed)
        if len(calls) % 4 == 0:
            raise ArithmeticError("boom")
        return real(battle, seed, max_ticks, **kw)

    monkeypatch.setattr(engine, "simulate", flaky)
    result = simulation.run_batch({"simulation": sim(), "num_iterations": 20}, FakeContext())
    assert result["completed"] == 15 and result["failed_count"] == 5 and result["iterations"] == 20
    assert [f["iteration"] for f in result["failed"]] == [3, 7, 11, 15, 19]
    assert result["failed"][0]["error"] == "ArithmeticError: boom"
    assert result["failed"][0]["seed"] == str(engine.derive_seed(1, 3))


def test_more_than_half_failing_fails_the_run(monkeypatch):
    def broken(*args, **kw):
        raise ArithmeticError("always")

    monkeypatch.setattr(engine, "simulate", broken)
    ctx = FakeContext()
    with pytest.raises(simulation.IterationsFailed, match=r"6 of 10 iterations failed.*always"):
        simulation.run_batch({"simulation": sim(), "num_iterations": 10}, ctx)
    assert len(ctx.progress_calls) == 5, "it stops as soon as the outcome is certain"


def test_cancellation_inside_an_iteration_propagates():
    immortal = {"sides": {side: {"units": {"0": {"strength": 1e12}}} for side in ("red", "blue")}}
    ctx = FakeContext(cancel_after_checks=50)
    with pytest.raises(JobCancelled):
        simulation.run_batch({"simulation": sim(overrides=immortal, max_ticks=1_000_000), "num_iterations": 5}, ctx)
    assert ctx.checks == 51 and ctx.progress_calls == []


def test_compare_reports_the_difference():
    params = {"baseline": sim("marksman", max_ticks=1), "variant": sim("marksman", max_ticks=5), "num_iterations": 300}
    ctx = FakeContext()
    result = simulation.run_compare(params, ctx)
    assert ctx.progress_calls[-1][:2] == (600, 600)
    red = result["difference"]["sides"]["red"]
    true_difference = (1 - 0.7**5) - 0.3
    assert red["ci95"][0] <= true_difference <= red["ci95"][1]
    assert red["win_probability"] == pytest.approx(
        result["variant"]["sides"]["red"]["win_probability"] - result["baseline"]["sides"]["red"]["win_probability"],
        abs=1e-3,
    )
    json.dumps(result)


def test_sweep_one_row_per_value_and_a_rejected_value_fails_its_row():
    params = {
        "simulation": sim("marksman", max_ticks=1),
        "parameter": "sides.red.units.0.accuracy",
        "values": [0.0, 1.0, "high"],
        "num_iterations": 10,
    }
    result = simulation.run_sweep(params, FakeContext())
    rows = result["rows"]
    assert [r["value"] for r in rows] == [0.0, 1.0, "high"]
    assert rows[0]["sides"]["red"]["win_probability"] == 0.0
    assert rows[1]["sides"]["red"]["win_probability"] == 1.0
    assert "accuracy" in rows[2]["error"] and rows[2]["failed_count"] == 10
    params["values"] = [1.0, "high", -1]
    with pytest.raises(simulation.IterationsFailed):
        simulation.run_sweep(params, FakeContext())


def test_unknown_scenario_and_bad_paths_fail_with_the_name():
    with pytest.raises(simulation.SimulationError, match="nowhere"):
        simulation.run_simulation(sim("nowhere"), FakeContext())
    bad = {"sides": {"red": {"units": {"0": {"strenght": 2}}}}}
    with pytest.raises(
        simulation.SimulationError, match=r"batch.simulation.config_overrides.sides.red.units.0.strenght"
    ):
        simulation.run_batch({"simulation": sim(overrides=bad), "num_iterations": 1}, FakeContext())
    with pytest.raises(simulation.SimulationError, match=r"sweep.parameter.*sides.red.units.9"):
        simulation.run_sweep(
            {"simulation": sim(), "parameter": "sides.red.units.9.count", "values": [1], "num_iterations": 1},
            FakeContext(),
        )
