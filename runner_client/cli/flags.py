"""Run specs from the command line's flags or a JSON file (pure).

>>> spec = build_spec("batch", SpecFlags(scenario="duel", iterations=500))
>>> spec.batch.num_iterations, spec.batch.simulation.max_ticks
(500, 1000)
>>> parse_assignment("sides.red.units.0.count=30")
({'sides': {'red': {'units': {'0': {'count': 30}}}}}, 'sides.red.units.0.count')
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any

from google.protobuf import json_format

from protos.runner.v1 import runner_pb2 as pb
from runner_client import specs

#: Kinds with flags of their own; any other KIND is a plugin kind (--param k=v).
BUILT_IN_KINDS = ("simulation", "batch", "compare", "sweep", "diagnostic")
DEFAULT_ITERATIONS = {"batch": 100, "compare": 50, "sweep": 50}


class FlagError(ValueError):
    """Flags (or a spec file) that do not make a run spec; the message says why."""


@dataclasses.dataclass(frozen=True)
class SpecFlags:
    """The spec flags as given (None / empty: not given)."""

    scenario: str | None = None
    max_ticks: int | None = None
    seed: int | None = None
    overrides: tuple[str, ...] = ()
    iterations: int | None = None
    variant_scenario: str | None = None
    variant_overrides: tuple[str, ...] = ()
    parameter: str | None = None
    values: str | None = None
    ticks: int | None = None
    tick_ms: float | None = None
    cpu: bool = False
    ignore_cancellation: bool = False
    fail_at_tick: int | None = None
    log_every: int | None = None
    progress_every: int | None = None
    params: tuple[str, ...] = ()

    def given(self) -> set[str]:
        """Names of the fields that were given."""
        out = set()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value not in (None, (), False):
                out.add(field.name)
        return out


_SIM = {"scenario", "max_ticks", "seed", "overrides"}
ALLOWED = {
    "simulation": _SIM,
    "batch": _SIM | {"iterations"},
    "compare": _SIM | {"iterations", "variant_scenario", "variant_overrides"},
    "sweep": _SIM | {"iterations", "parameter", "values"},
    "diagnostic": {"ticks", "tick_ms", "cpu", "ignore_cancellation", "fail_at_tick", "log_every", "progress_every"},
}
PLUGIN_ALLOWED = {"params"}

_FLAG_NAMES = {"overrides": "--set", "variant_overrides": "--variant-set", "params": "--param"}


def flag_name(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def parse_value(text: str) -> Any:
    """A JSON value when `text` is one (30, 0.5, true, "x", [1, 2]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignment(text: str) -> tuple[dict, str]:
    """`a.b.c=value` as the nested dict {"a": {"b": {"c": value}}}, and its path."""
    path, sep, raw = text.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise FlagError(f"expected PATH=VALUE (e.g. sides.red.units.0.count=30), got {text!r}")
    value: Any = parse_value(raw)
    for key in reversed(keys):
        value = {key: value}
    return value, path.strip()


def merge(into: dict, more: dict) -> dict:
    """Merge nested dicts (`more` wins on a leaf)."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def assignments(items: tuple[str, ...]) -> dict:
    out: dict = {}
    for item in items:
        merge(out, parse_assignment(item)[0])
    return out


def labels(items: tuple[str, ...]) -> dict[str, str]:
    """`--label k=v` pairs."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlagError(f"expected --label KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _values(text: str | None) -> list[Any]:
    if not text:
        raise FlagError("a sweep needs --values (comma-separated, e.g. --values 10,20,30)")
    stripped = text.strip()
    if stripped.startswith("["):
        parsed = parse_value(stripped)
        if isinstance(parsed, list):
            return parsed
    return [parse_value(item.strip()) for item in text.split(",") if item.strip()]


def _simulation(flags: SpecFlags, scenario: str | None, overrides: tuple[str, ...]) -> pb.SimulationSpec:
    if not scenario:
        raise FlagError("--scenario is required (see `runner scenarios` for the names)")
    return specs.simulation_spec(
        scenario,
        max_ticks=flags.max_ticks if flags.max_ticks is not None else 1000,
        seed=flags.seed or 0,
        overrides=assignments(overrides),
    )


def build_spec(kind: str, flags: SpecFlags) -> pb.RunSpec:
    """The RunSpec for KIND and its flags. Raises FlagError for a flag that does
    not apply to the kind, or a missing one."""
    allowed = ALLOWED.get(kind, PLUGIN_ALLOWED)
    extra = sorted(flags.given() - allowed)
    if extra:
        names = ", ".join(flag_name(name) for name in extra)
        what = f"{kind} runs" if kind in ALLOWED else f"plugin kind {kind!r} (use --param KEY=VALUE)"
        raise FlagError(f"{names} do{'es' if len(extra) == 1 else ''} not apply to {what}")
    iterations = flags.iterations if flags.iterations is not None else DEFAULT_ITERATIONS.get(kind, 0)
    if kind == "simulation":
        return pb.RunSpec(simulation=_simulation(flags, flags.scenario, flags.overrides))
    if kind == "batch":
        return pb.RunSpec(
            batch=pb.BatchSpec(
                simulation=_simulation(flags, flags.scenario, flags.overrides), num_iterations=iterations
            )
        )
    if kind == "compare":
        baseline = _simulation(flags, flags.scenario, flags.overrides)
        variant = _simulation(flags, flags.variant_scenario or flags.scenario, flags.variant_overrides)
        if baseline == variant:
            raise FlagError("the variant is the baseline: give --variant-set PATH=VALUE or --variant-scenario")
        return specs.compare(baseline, variant, iterations=iterations)
    if kind == "sweep":
        if not flags.parameter:
            raise FlagError("a sweep needs --parameter (a dotted path, e.g. sides.red.units.0.count)")
        sim = _simulation(flags, flags.scenario, flags.overrides)
        return specs.sweep(sim, flags.parameter, _values(flags.values), iterations=iterations)
    if kind == "diagnostic":
        return specs.diagnostic(
            ticks=flags.ticks if flags.ticks is not None else 100,
            tick_s=(flags.tick_ms if flags.tick_ms is not None else 10.0) / 1000.0,
            cpu=flags.cpu,
            ignore_cancellation=flags.ignore_cancellation,
            fail_at_tick=flags.fail_at_tick or 0,
            log_every=flags.log_every or 0,
            progress_every=flags.progress_every or 0,
        )
    params: dict = {}
    for item in flags.params:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FlagError(f"expected --param KEY=VALUE, got {item!r}")
        params[key] = parse_value(raw)
    return specs.plugin(kind, params)


def load_spec_file(path: str) -> pb.RunSpec:
    """A RunSpec from proto3 JSON (`-`: standard input), e.g.
    {"batch": {"simulation": {"scenario": "duel", "maxTicks": 1000}, "numIterations": 500}}."""
    try:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    except OSError as exc:
        raise FlagError(f"cannot read --spec-file {path}: {exc.strerror or exc}") from None
    try:
        return json_format.Parse(text, pb.RunSpec())
    except json_format.ParseError as exc:
        raise FlagError(f"--spec-file {path} is not a RunSpec in proto3 JSON: {exc}") from None


def spec_from(kind: str | None, flags: SpecFlags, spec_file: str | None) -> pb.RunSpec:
    """The spec from the file or from KIND and its flags (not both)."""
    if spec_file is not None:
        if flags.given():
            names = ", ".join(flag_name(name) for name in sorted(flags.given()))
            raise FlagError(f"{names} cannot be combined with --spec-file")
        spec = load_spec_file(spec_file)
        if kind is not None and specs.kind_of(spec) != kind:
            raise FlagError(f"--spec-file holds a {specs.kind_of(spec) or 'empty'} spec, not {kind}")
        return spec
    if kind is None:
        raise FlagError("give KIND (simulation, batch, compare, sweep, diagnostic or a plugin kind) or --spec-file")
    return build_spec(kind, flags)
