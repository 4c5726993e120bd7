"""Job kinds built on the simulation engine: simulation, batch, compare, sweep.

Each is ``fn(params, ctx) -> dict`` with `params` from convert.spec_params (the spec
message as a dict). The scenario comes from the catalog by name (see
catalog.directory_for_job for where a worker finds the operator's directory).

Seeds: a single simulation uses the spec's seed; iteration i of a batch (and of
each side of a compare, and of each sweep row) uses engine.derive_seed(seed, i),
so rows and arms share their random streams (common random numbers) and every
result is reproducible from the spec alone. Results carry no timings, so the same
spec gives the same result, bit for bit.

An iteration that raises is listed under "failed" with its error; when more than
half of a run's iterations fail, the run fails (IterationsFailed).
"""

from __future__ import annotations

from runner_service.context import JobCancelled
from runner_service.jobs import catalog as catalog_mod
from runner_service.jobs import engine, stats

MAX_LISTED_FAILURES = 100
MAX_ERROR_CHARS = 500

# One catalog per worker process: the directory comes from the runner's settings,
# so there is one; a different one replaces it (the cache never grows).
_catalog_slot: list[catalog_mod.Catalog] = []


class SimulationError(Exception):
    """A spec that cannot run: unknown scenario, bad override path or value."""


class IterationsFailed(Exception):
    """More than half of a run's iterations failed."""


def _catalog(ctx) -> catalog_mod.Catalog:
    directory = catalog_mod.directory_for_job(ctx)
    if not _catalog_slot or _catalog_slot[0].directory != directory:
        _catalog_slot[:] = [catalog_mod.Catalog(directory)]
    return _catalog_slot[0]


def load_scenario(catalog: catalog_mod.Catalog, sim: dict, where: str) -> dict:
    """The scenario of a simulation spec with its overrides merged, validated.
    Raises SimulationError naming the field (e.g. "simulation.config_overrides.sides.x")."""
    name = sim.get("scenario", "")
    try:
        scenario = catalog.get(name)
    except (catalog_mod.ScenarioNotFound, catalog_mod.ScenarioUnavailable) as exc:
        raise SimulationError(f"{where}.scenario: {exc}") from None
    try:
        merged = engine.apply_overrides(scenario, sim.get("config_overrides") or {})
        engine.Battle(merged)
    except engine.ScenarioError as exc:
        raise SimulationError(
            f"{where}.config_overrides.{exc.path}: {exc.reason}" if exc.path else f"{where}.config_overrides: {exc}"
        ) from None
    return merged


# ------------------------------------------------------------ tallies


class Tally:
    """Outcomes of many iterations of one scenario, and their statistics."""

    def __init__(self, battle: engine.Battle) -> None:
        self.summary = battle.summary()
        self.wins = {side: 0 for side, _ in self.summary}
        self.draws = 0
        self.ticks: list[int] = []
        self.survivors: dict[str, dict[str, list[int]]] = {
            side: {unit: [] for unit, _ in units} for side, units in self.summary
        }
        self.totals: dict[str, list[int]] = {side: [] for side, _ in self.summary}
        self.failed: list[dict] = []
        self.failed_count = 0

    @property
    def completed(self) -> int:
        return len(self.ticks)

    def add(self, outcome: dict) -> None:
        winner = outcome["winner"]
        if winner in self.wins:
            self.wins[winner] += 1
        else:
            self.draws += 1
        self.ticks.append(outcome["ticks"])
        for side, units in outcome["survivors"].items():
            total = 0
            for unit, count in units.items():
                self.survivors[side][unit].append(count)
                total += count
            self.totals[side].append(total)

    def fail(self, iteration: int, seed: int, exc: BaseException) -> None:
        self.failed_count += 1
        if len(self.failed) < MAX_LISTED_FAILURES:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            self.failed.append({"iteration": iteration, "seed": str(seed), "error": error})

    def result(self) -> dict:
        n = self.completed
        sides = {}
        for side, units in self.summary:
            win = stats.proportion(self.wins[side], n)
            sides[side] = {
                "wins": win["count"],
                "win_probability": win["probability"],
                "win_ci95": win["ci95"],
                "survivors": {unit: stats.describe(self.survivors[side][unit]) for unit, _ in units},
                "survivors_total": stats.describe(self.totals[side]),
            }
        draw = stats.proportion(self.draws, n)
        return {
            "iterations": n + self.failed_count,
            "completed": n,
            "sides": sides,
            "draws": draw["count"],
            "draw_probability": draw["probability"],
            "draw_ci95": draw["ci95"],
            "ticks": stats.describe(self.ticks),
            "failed_count": self.failed_count,
            "failed": list(self.failed),
        }


def _iterate(ctx, battle: engine.Battle, tally: Tally, seed: int, i: int, max_ticks: int) -> None:
    """Iteration i into the tally; a failure is recorded, a cancellation propagates."""
    iteration_seed = engine.derive_seed(seed, i)
    try:
        tally.add(engine.simulate(battle, iteration_seed, max_ticks, check=ctx.check_cancelled))
    except JobCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad iteration is data, not the end of the run
        tally.fail(i, iteration_seed, exc)


def _check_failures(failed: int, total: int, first_error: str) -> None:
    """Raise IterationsFailed once more than half of `total` iterations failed."""
    if failed * 2 > total:
        raise IterationsFailed(f"{failed} of {total} iterations failed (more than half); first error: {first_error}")


def _first_error(*tallies: Tally) -> str:
    for tally in tallies:
        if tally.failed:
            return tally.failed[0]["error"]
    return ""


def _spec_fields(sim: dict, name: str) -> dict:
    return {"scenario": name, "seed": str(int(sim.get("seed", 0))), "max_ticks": int(sim["max_ticks"])}


# ------------------------------------------------------------ the job kinds


def run_simulation(params: dict, ctx) -> dict:
    """One battle: progress every tick batch, cancellation checked every tick."""
    merged = load_scenario(_catalog(ctx), params, "simulation")
    battle = engine.Battle(merged)
    max_ticks = int(params["max_ticks"])
    every = max(100, max_ticks // 100)
    outcome = engine.simulate(
        battle,
        int(params.get("seed", 0)),
        max_ticks,
        check=ctx.check_cancelled,
        on_progress=lambda tick: ctx.progress(tick, max_ticks, f"tick {tick}"),
        progress_every=every,
    )
    ctx.progress(outcome["ticks"], outcome["ticks"], f"finished after {outcome['ticks']} ticks")
    return {**_spec_fields(params, params["scenario"]), **outcome}


def run_batch(params: dict, ctx) -> dict:
    """num_iterations battles; progress per iteration."""
    sim = params["simulation"]
    battle = engine.Battle(load_scenario(_catalog(ctx), sim, "batch.simulation"))
    n = int(params["num_iterations"])
    seed, max_ticks = int(sim.get("seed", 0)), int(sim["max_ticks"])
    tally = Tally(battle)
    for i in range(n):
        ctx.check_cancelled()
        _iterate(ctx, battle, tally, seed, i, max_ticks)
        _check_failures(tally.failed_count, n, _first_error(tally))
        ctx.progress(i + 1, n, f"iteration {i + 1}/{n}")
    return {**_spec_fields(sim, sim["scenario"]), **tally.result()}


def run_compare(params: dict, ctx) -> dict:
    """Baseline and variant, num_iterations each, interleaved; the difference of
    win probabilities (variant - baseline) per side with Newcombe's interval."""
    catalog = _catalog(ctx)
    arms = []
    for arm in ("baseline", "variant"):
        sim = params[arm]
        battle = engine.Battle(load_scenario(catalog, sim, f"compare.{arm}"))
        arms.append((sim, battle, Tally(battle)))
    n = int(params["num_iterations"])
    for i in range(n):
        for k, (sim, battle, tally) in enumerate(arms):
            ctx.check_cancelled()
            _iterate(ctx, battle, tally, int(sim.get("seed", 0)), i, int(sim["max_ticks"]))
            _check_failures(sum(t.failed_count for _, _, t in arms), 2 * n, _first_error(*(t for _, _, t in arms)))
            ctx.progress(2 * i + k + 1, 2 * n, f"iteration {i + 1}/{n} ({'baseline' if k == 0 else 'variant'})")
    (base_sim, _, base), (var_sim, _, var) = arms
    difference = {}
    for side in base.wins:
        if side in var.wins:
            d, low, high = stats.difference_interval(base.wins[side], base.completed, var.wins[side], var.completed)
            difference[side] = {"win_probability": d, "ci95": [low, high]}
    d, low, high = stats.difference_interval(base.draws, base.completed, var.draws, var.completed)
    return {
        "iterations": n,
        "baseline": {**_spec_fields(base_sim, base_sim["scenario"]), **base.result()},
        "variant": {**_spec_fields(var_sim, var_sim["scenario"]), **var.result()},
        "difference": {"sides": difference, "draw_probability": d, "draw_ci95": [low, high]},
    }


def run_sweep(params: dict, ctx) -> dict:
    """One row per value of the parameter, num_iterations each. A value the
    scenario rejects fails its whole row (listed with the error)."""
    sim = params["simulation"]
    parameter = params["parameter"]
    merged = load_scenario(_catalog(ctx), sim, "sweep.simulation")
    try:
        engine.check_path(merged, parameter)
    except engine.OverrideError as exc:
        raise SimulationError(f"sweep.parameter: {exc}") from None
    values = list(params.get("values") or [])
    n = int(params["num_iterations"])
    seed, max_ticks = int(sim.get("seed", 0)), int(sim["max_ticks"])
    total = n * len(values)
    failed = 0
    first_error = ""
    rows = []
    for r, value in enumerate(values):
        ctx.check_cancelled()
        try:
            battle = engine.Battle(engine.set_path(merged, parameter, value))
        except engine.ScenarioError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            rows.append({"value": value, "error": error, "iterations": n, "completed": 0, "failed_count": n})
            failed += n
            first_error = first_error or error
            _check_failures(failed, total, first_error)
            ctx.progress((r + 1) * n, total, f"value {r + 1}/{len(values)} rejected")
            continue
        tally = Tally(battle)
        for i in range(n):
            ctx.check_cancelled()
            _iterate(ctx, battle, tally, seed, i, max_ticks)
            first_error = first_error or _first_error(tally)
            _check_failures(failed + tally.failed_count, total, first_error)
            ctx.progress(r * n + i + 1, total, f"value {r + 1}/{len(values)}, iteration {i + 1}/{n}")
        failed += tally.failed_count
        rows.append({"value": value, **tally.result()})
    return {**_spec_fields(sim, sim["scenario"]), "parameter": parameter, "iterations": n, "rows": rows}
