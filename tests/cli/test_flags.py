"""The command line's spec flags and exit codes (pure)."""

from __future__ import annotations

import doctest

import grpc
import pytest

from protos.runner.v1 import runner_pb2 as pb
from runner_client.cli import exits, flags
from runner_client.errors import make_error


def test_the_module_examples_hold():
    assert doctest.testmod(flags).failed == 0


def test_flags_make_each_kind_of_spec():
    sim = flags.build_spec("simulation", flags.SpecFlags(scenario="duel", max_ticks=50, seed=7, overrides=("a.b=1",)))
    assert (sim.simulation.scenario, sim.simulation.max_ticks, sim.simulation.seed) == ("duel", 50, 7)
    assert sim.simulation.config_overrides["a"]["b"] == 1
    compare = flags.build_spec(
        "compare", flags.SpecFlags(scenario="duel", variant_overrides=("sides.red.units.0.count=30",), iterations=5)
    )
    assert compare.compare.variant.scenario == "duel" and compare.compare.num_iterations == 5
    assert not compare.compare.baseline.HasField("config_overrides")
    sweep = flags.build_spec("sweep", flags.SpecFlags(scenario="duel", parameter="p", values="10, 2.5,x"))
    assert [v.WhichOneof("kind") for v in sweep.sweep.values] == ["number_value", "number_value", "string_value"]
    assert (
        flags.build_spec("sweep", flags.SpecFlags(scenario="d", parameter="p", values='[1, "a"]'))
        .sweep.values[1]
        .string_value
        == "a"
    )
    diag = flags.build_spec("diagnostic", flags.SpecFlags(ticks=3, tick_ms=20, cpu=True, fail_at_tick=2))
    assert diag.diagnostic.tick_duration.ToMilliseconds() == 20 and diag.diagnostic.mode == pb.DiagnosticSpec.CPU
    plugin = flags.build_spec("count", flags.SpecFlags(params=("n=3", "name=x")))
    assert plugin.plugin.kind == "count" and dict(plugin.plugin.parameters) == {"n": 3, "name": "x"}


@pytest.mark.parametrize(
    ("kind", "given", "message"),
    [
        ("diagnostic", dict(scenario="duel"), "--scenario does not apply to diagnostic runs"),
        ("batch", dict(ticks=3), "--ticks does not apply to batch runs"),
        ("count", dict(ticks=3), "plugin kind 'count'"),
        ("simulation", {}, "--scenario is required"),
        ("sweep", dict(scenario="duel"), "--parameter"),
        ("compare", dict(scenario="duel"), "the variant is the baseline"),
        ("simulation", dict(scenario="duel", overrides=("nothing",)), "PATH=VALUE"),
    ],
)
def test_flags_that_do_not_make_a_spec_are_refused(kind, given, message):
    with pytest.raises(flags.FlagError, match=message):
        flags.build_spec(kind, flags.SpecFlags(**given))


def test_a_spec_file_or_flags_not_both(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"diagnostic": {"ticks": 4}}')
    assert flags.spec_from(None, flags.SpecFlags(), str(path)).diagnostic.ticks == 4
    with pytest.raises(flags.FlagError, match="cannot be combined"):
        flags.spec_from(None, flags.SpecFlags(ticks=3), str(path))
    with pytest.raises(flags.FlagError, match="not batch"):
        flags.spec_from("batch", flags.SpecFlags(), str(path))
    path.write_text('{"nope": 1}')
    with pytest.raises(flags.FlagError, match="not a RunSpec"):
        flags.spec_from(None, flags.SpecFlags(), str(path))
    with pytest.raises(flags.FlagError, match="give KIND"):
        flags.spec_from(None, flags.SpecFlags(), None)
    assert flags.labels(("a=1", "b=x=y")) == {"a": "1", "b": "x=y"}


def test_exit_codes():
    assert [
        exits.for_state(s) for s in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.DEADLINE_EXCEEDED, pb.INTERRUPTED)
    ] == [0, 1, 3, 4, 5]
    assert exits.for_error(make_error(grpc.StatusCode.UNAVAILABLE, "x")) == exits.UNREACHABLE
    assert exits.for_error(make_error(grpc.StatusCode.DEADLINE_EXCEEDED, "x")) == exits.UNREACHABLE
    assert exits.for_error(make_error(grpc.StatusCode.INVALID_ARGUMENT, "x")) == exits.USAGE
    assert exits.for_error(make_error(grpc.StatusCode.NOT_FOUND, "x")) == exits.REFUSED
