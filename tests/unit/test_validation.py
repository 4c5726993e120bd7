"""protos.validation: every limit of the runner.v1 schema, read from the descriptors."""

from __future__ import annotations

import math

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.rpc import error_details_pb2

from protos import validation
from protos.runner.v1 import limits_pb2
from protos.runner.v1 import runner_pb2 as pb

DEFAULT_MAX = 100_000


# ------------------------------------------------------------------ builders


def simulation(spec: pb.SimulationSpec) -> pb.SimulationSpec:
    spec.scenario = "skirmish"
    spec.max_ticks = 100
    spec.seed = 7
    spec.config_overrides.update({"sides": {"red": {"units": [{"count": 3}]}}, "weather": "rain"})
    return spec


def fill_simulation(spec):
    simulation(spec.simulation)
    spec.num_iterations = 10


def fill_compare(spec):
    simulation(spec.baseline)
    simulation(spec.variant)
    spec.num_iterations = 10


def fill_sweep(spec):
    simulation(spec.simulation)
    spec.parameter = "sides.red.units.0.count"
    spec.values.add().number_value = 1
    spec.values.add().string_value = "two"
    spec.values.add().struct_value.update({"n": 3})
    spec.num_iterations = 5


def fill_diagnostic(spec):
    spec.ticks = 100
    spec.tick_duration.FromMilliseconds(10)
    spec.mode = pb.DiagnosticSpec.CPU
    spec.fail_at_tick = 50
    spec.log_every = 10
    spec.progress_every = 5


def fill_plugin(spec):
    spec.kind = "my-plugin"
    spec.parameters.update({"depth": 2, "names": ["a", "b"]})


FILLERS = {
    "simulation": lambda spec: simulation(spec),
    "batch": fill_simulation,
    "compare": fill_compare,
    "sweep": fill_sweep,
    "diagnostic": fill_diagnostic,
    "plugin": fill_plugin,
}


def submit(kind: str = "diagnostic") -> pb.SubmitRunRequest:
    """A valid SubmitRunRequest with a spec of ``kind`` and every common field set."""
    request = pb.SubmitRunRequest(request_id="req-1")
    FILLERS[kind](getattr(request.spec, kind))
    request.timeout.FromSeconds(60)
    request.labels["team"] = "core"
    request.labels["env"] = "ci"
    return request


def nested(depth: int, leaf=1) -> dict:
    """A dict of the given depth: nested(1) == {"l1": leaf}, nested(2) == {"l1": {"l2": leaf}}."""
    value = leaf
    for level in range(depth, 0, -1):
        value = {f"l{level}": value}
    return value


def violations(message) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in validation.validate(message)]


def edited(kind: str, edit) -> pb.SubmitRunRequest:
    request = submit(kind)
    edit(request)
    return request


# ------------------------------------------------------------------ valid messages


@pytest.mark.parametrize("kind", sorted(FILLERS))
def test_a_valid_request_of_each_kind_has_no_violation(kind):
    assert violations(submit(kind)) == []


@pytest.mark.parametrize(
    "message",
    [
        pb.GetRunRequest(run_id="r" * 64),
        pb.ListRunsRequest(page_size=500, page_token="t" * 512, state=pb.RUNNING, kind="k" * 128),
        pb.ListRunsRequest(),
        pb.WatchRunRequest(run_id="run-1", after_seq=12),
        pb.CancelRunRequest(run_id="run-1", reason="r" * 1024),
        pb.ListScenariosRequest(),
        pb.GetSummaryRequest(recent_limit=100),
        pb.GetStatusRequest(),
        pb.RestartWorkersRequest(acknowledge_override=True, reason="r" * 1024),
        pb.SubmitRunRequest(spec=pb.RunSpec(diagnostic=pb.DiagnosticSpec())),  # all zero: valid
    ],
    ids=lambda m: m.DESCRIPTOR.name,
)
def test_other_valid_requests_have_no_violation(message):
    assert violations(message) == []


def test_every_message_type_of_the_schema_compiles_and_validates_its_empty_instance():
    for descriptor in pb.DESCRIPTOR.message_types_by_name.values():
        validation.compile_plan(descriptor)
        cls = message_factory.GetMessageClass(descriptor)
        assert isinstance(validation.validate(cls()), list)


# ------------------------------------------------------------------ one limit at a time


def _long(n: int) -> str:
    return "x" * n


def _set_duration(seconds: float):
    def edit(duration):
        duration.FromNanoseconds(round(seconds * 1e9))

    return edit


# (id, kind of the base request, edit, expected field path, expected description)
BROKEN = [
    # SubmitRunRequest
    ("spec required", "diagnostic", lambda r: r.ClearField("spec"), "spec", "is required"),
    (
        "spec oneof required",
        "diagnostic",
        lambda r: r.spec.ClearField("diagnostic"),
        "spec.kind",
        "exactly one of simulation, batch, compare, sweep, diagnostic, plugin must be set",
    ),
    (
        "request_id max_len",
        "diagnostic",
        lambda r: setattr(r, "request_id", _long(129)),
        "request_id",
        "must be at most 128 characters long (got 129)",
    ),
    (
        "timeout min_seconds",
        "diagnostic",
        lambda r: _set_duration(0.0009)(r.timeout),
        "timeout",
        "must be at least 0.001s (got 0.0009s)",
    ),
    (
        "timeout zero but present",
        "diagnostic",
        lambda r: _set_duration(0)(r.timeout),
        "timeout",
        "must be at least 0.001s (got 0s)",
    ),
    (
        "timeout max_seconds",
        "diagnostic",
        lambda r: _set_duration(2592000.5)(r.timeout),
        "timeout",
        "must be at most 2592000s (got 2592000.5s)",
    ),
    (
        "timeout malformed",
        "diagnostic",
        lambda r: (setattr(r.timeout, "seconds", 5), setattr(r.timeout, "nanos", -1)),
        "timeout",
        "is not a valid duration (seconds=5, nanos=-1)",
    ),
    (
        "labels max_items",
        "diagnostic",
        lambda r: r.labels.update({f"k{i}": "v" for i in range(31)}),
        "labels",
        "must have at most 32 entries (got 33)",
    ),
    (
        "labels value max_len",
        "diagnostic",
        lambda r: r.labels.update({"k": _long(257)}),
        'labels["k"]',
        "must be at most 256 characters long (got 257)",
    ),
    (
        "labels key max_len",
        "diagnostic",
        lambda r: r.labels.update({_long(257): "v"}),
        'labels["' + "x" * 64 + '…"]',
        "key must be at most 256 characters long (got 257)",
    ),
    (
        "diagnostic mode not defined",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "mode", 7),
        "spec.diagnostic.mode",
        "must be one of MODE_UNSPECIFIED, SLEEP, CPU (got 7)",
    ),
    (
        "config_overrides too many values",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"k": list(range(10_001))}),
        "spec.simulation.config_overrides",
        "must hold at most 10000 values in all",
    ),
    # SimulationSpec
    (
        "scenario required",
        "simulation",
        lambda r: setattr(r.spec.simulation, "scenario", ""),
        "spec.simulation.scenario",
        "is required",
    ),
    (
        "scenario max_len",
        "simulation",
        lambda r: setattr(r.spec.simulation, "scenario", _long(257)),
        "spec.simulation.scenario",
        "must be at most 256 characters long (got 257)",
    ),
    (
        "max_ticks min",
        "simulation",
        lambda r: setattr(r.spec.simulation, "max_ticks", 0),
        "spec.simulation.max_ticks",
        "must be at least 1 (got 0)",
    ),
    (
        "max_ticks max",
        "simulation",
        lambda r: setattr(r.spec.simulation, "max_ticks", 1_000_001),
        "spec.simulation.max_ticks",
        "must be at most 1000000 (got 1000001)",
    ),
    # BatchSpec
    (
        "batch simulation required",
        "batch",
        lambda r: r.spec.batch.ClearField("simulation"),
        "spec.batch.simulation",
        "is required",
    ),
    (
        "batch nested scenario",
        "batch",
        lambda r: setattr(r.spec.batch.simulation, "scenario", ""),
        "spec.batch.simulation.scenario",
        "is required",
    ),
    (
        "batch num_iterations min",
        "batch",
        lambda r: setattr(r.spec.batch, "num_iterations", 0),
        "spec.batch.num_iterations",
        "must be at least 1 (got 0)",
    ),
    (
        "batch num_iterations max",
        "batch",
        lambda r: setattr(r.spec.batch, "num_iterations", 1001),
        "spec.batch.num_iterations",
        "must be at most 1000 (got 1001)",
    ),
    # CompareSpec
    (
        "compare baseline required",
        "compare",
        lambda r: r.spec.compare.ClearField("baseline"),
        "spec.compare.baseline",
        "is required",
    ),
    (
        "compare variant required",
        "compare",
        lambda r: r.spec.compare.ClearField("variant"),
        "spec.compare.variant",
        "is required",
    ),
    (
        "compare variant max_ticks",
        "compare",
        lambda r: setattr(r.spec.compare.variant, "max_ticks", -5),
        "spec.compare.variant.max_ticks",
        "must be at least 1 (got -5)",
    ),
    (
        "compare num_iterations min",
        "compare",
        lambda r: setattr(r.spec.compare, "num_iterations", 0),
        "spec.compare.num_iterations",
        "must be at least 1 (got 0)",
    ),
    (
        "compare num_iterations max",
        "compare",
        lambda r: setattr(r.spec.compare, "num_iterations", 501),
        "spec.compare.num_iterations",
        "must be at most 500 (got 501)",
    ),
    # SweepSpec
    (
        "sweep simulation required",
        "sweep",
        lambda r: r.spec.sweep.ClearField("simulation"),
        "spec.sweep.simulation",
        "is required",
    ),
    (
        "sweep parameter required",
        "sweep",
        lambda r: setattr(r.spec.sweep, "parameter", ""),
        "spec.sweep.parameter",
        "is required",
    ),
    (
        "sweep parameter max_len",
        "sweep",
        lambda r: setattr(r.spec.sweep, "parameter", _long(1025)),
        "spec.sweep.parameter",
        "must be at most 1024 characters long (got 1025)",
    ),
    (
        "sweep values min_items",
        "sweep",
        lambda r: r.spec.sweep.ClearField("values"),
        "spec.sweep.values",
        "must have at least 1 item (got 0)",
    ),
    (
        "sweep values max_items",
        "sweep",
        lambda r: [r.spec.sweep.values.add(number_value=i) for i in range(48)],
        "spec.sweep.values",
        "must have at most 50 items (got 51)",
    ),
    (
        "sweep value string default max",
        "sweep",
        lambda r: setattr(r.spec.sweep.values[1], "string_value", _long(DEFAULT_MAX + 1)),
        "spec.sweep.values[1]",
        "must be at most 100000 characters long (got 100001)",
    ),
    (
        "sweep value depth",
        "sweep",
        lambda r: r.spec.sweep.values[2].struct_value.update(nested(6)),
        "spec.sweep.values[2]",
        "must be nested at most 5 levels deep (level 6 reached at l1.l2.l3.l4.l5)",
    ),
    (
        "sweep value keys",
        "sweep",
        lambda r: r.spec.sweep.values[2].struct_value.update({f"k{i}": i for i in range(200)}),
        "spec.sweep.values[2]",
        "must have at most 200 keys (got 201)",
    ),
    (
        "sweep num_iterations min",
        "sweep",
        lambda r: setattr(r.spec.sweep, "num_iterations", 0),
        "spec.sweep.num_iterations",
        "must be at least 1 (got 0)",
    ),
    (
        "sweep num_iterations max",
        "sweep",
        lambda r: setattr(r.spec.sweep, "num_iterations", 501),
        "spec.sweep.num_iterations",
        "must be at most 500 (got 501)",
    ),
    # DiagnosticSpec
    (
        "ticks min",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "ticks", -1),
        "spec.diagnostic.ticks",
        "must be at least 0 (got -1)",
    ),
    (
        "ticks max",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "ticks", 2_000_000),
        "spec.diagnostic.ticks",
        "must be at most 1000000 (got 2000000)",
    ),
    (
        "tick_duration min",
        "diagnostic",
        lambda r: _set_duration(-0.5)(r.spec.diagnostic.tick_duration),
        "spec.diagnostic.tick_duration",
        "must be at least 0s (got -0.5s)",
    ),
    (
        "tick_duration max",
        "diagnostic",
        lambda r: _set_duration(3601)(r.spec.diagnostic.tick_duration),
        "spec.diagnostic.tick_duration",
        "must be at most 3600s (got 3601s)",
    ),
    (
        "fail_at_tick min",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "fail_at_tick", -1),
        "spec.diagnostic.fail_at_tick",
        "must be at least 0 (got -1)",
    ),
    (
        "fail_at_tick max",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "fail_at_tick", 1_000_001),
        "spec.diagnostic.fail_at_tick",
        "must be at most 1000000 (got 1000001)",
    ),
    (
        "log_every min",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "log_every", -1),
        "spec.diagnostic.log_every",
        "must be at least 0 (got -1)",
    ),
    (
        "log_every max",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "log_every", 1_000_001),
        "spec.diagnostic.log_every",
        "must be at most 1000000 (got 1000001)",
    ),
    (
        "progress_every min",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "progress_every", -1),
        "spec.diagnostic.progress_every",
        "must be at least 0 (got -1)",
    ),
    (
        "progress_every max",
        "diagnostic",
        lambda r: setattr(r.spec.diagnostic, "progress_every", 1_000_001),
        "spec.diagnostic.progress_every",
        "must be at most 1000000 (got 1000001)",
    ),
    # PluginSpec
    ("plugin kind required", "plugin", lambda r: setattr(r.spec.plugin, "kind", ""), "spec.plugin.kind", "is required"),
    (
        "plugin kind max_len",
        "plugin",
        lambda r: setattr(r.spec.plugin, "kind", _long(129)),
        "spec.plugin.kind",
        "must be at most 128 characters long (got 129)",
    ),
    (
        "plugin parameters depth",
        "plugin",
        lambda r: r.spec.plugin.parameters.update(nested(6)),
        "spec.plugin.parameters",
        "must be nested at most 5 levels deep (level 6 reached at l1.l2.l3.l4.l5)",
    ),
    (
        "plugin parameters keys",
        "plugin",
        lambda r: r.spec.plugin.parameters.update({f"k{i}": i for i in range(199)}),
        "spec.plugin.parameters",
        "must have at most 200 keys (got 201)",
    ),
    (
        "plugin parameters string",
        "plugin",
        lambda r: r.spec.plugin.parameters.update({"s": _long(DEFAULT_MAX + 1)}),
        "spec.plugin.parameters.s",
        "must be at most 100000 characters long (got 100001)",
    ),
    # SimulationSpec.config_overrides
    (
        "config_overrides depth",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update(nested(6)),
        "spec.simulation.config_overrides",
        "must be nested at most 5 levels deep (level 6 reached at l1.l2.l3.l4.l5)",
    ),
    (
        "config_overrides keys",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({f"k{i}": i for i in range(199)}),
        "spec.simulation.config_overrides",
        "must have at most 200 keys (got 201)",
    ),
    (
        "config_overrides nested keys",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"inner": {f"k{i}": i for i in range(201)}}),
        "spec.simulation.config_overrides.inner",
        "must have at most 200 keys (got 201)",
    ),
    (
        "config_overrides nested string",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"a": {"b": _long(DEFAULT_MAX + 1)}}),
        "spec.simulation.config_overrides.a.b",
        "must be at most 100000 characters long (got 100001)",
    ),
    (
        "config_overrides string in a list",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"l": [1, "ok", _long(DEFAULT_MAX + 1)]}),
        "spec.simulation.config_overrides.l[2]",
        "must be at most 100000 characters long (got 100001)",
    ),
    (
        "config_overrides odd key",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"a.b": _long(DEFAULT_MAX + 1)}),
        'spec.simulation.config_overrides["a.b"]',
        "must be at most 100000 characters long (got 100001)",
    ),
    (
        "config_overrides long key",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"k" * (DEFAULT_MAX + 1): 1}),
        'spec.simulation.config_overrides["' + "k" * 64 + '…"]',
        "key must be at most 100000 characters long (got 100001)",
    ),
]


@pytest.mark.parametrize(
    ("kind", "edit", "path", "description"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_breaking_one_limit_yields_exactly_that_violation(kind, edit, path, description):
    assert violations(edited(kind, edit)) == [(path, description)]


# The same limits, met exactly: no violation.
AT_THE_LIMIT = [
    ("request_id 128", "diagnostic", lambda r: setattr(r, "request_id", _long(128))),
    ("timeout 0.001s", "diagnostic", lambda r: _set_duration(0.001)(r.timeout)),
    ("timeout 30 days", "diagnostic", lambda r: _set_duration(2592000)(r.timeout)),
    ("timeout absent", "diagnostic", lambda r: r.ClearField("timeout")),
    ("32 labels", "diagnostic", lambda r: r.labels.update({f"k{i}": "v" for i in range(30)})),
    ("label of 256", "diagnostic", lambda r: r.labels.update({_long(256): _long(256)})),
    ("scenario 256", "simulation", lambda r: setattr(r.spec.simulation, "scenario", _long(256))),
    ("max_ticks 1", "simulation", lambda r: setattr(r.spec.simulation, "max_ticks", 1)),
    ("max_ticks 1000000", "simulation", lambda r: setattr(r.spec.simulation, "max_ticks", 1_000_000)),
    ("batch 1000", "batch", lambda r: setattr(r.spec.batch, "num_iterations", 1000)),
    ("compare 500", "compare", lambda r: setattr(r.spec.compare, "num_iterations", 500)),
    ("sweep 50 values", "sweep", lambda r: [r.spec.sweep.values.add(number_value=i) for i in range(47)]),
    ("sweep 1 value", "sweep", lambda r: [r.spec.sweep.values.pop() for _ in range(2)]),
    ("sweep parameter 1024", "sweep", lambda r: setattr(r.spec.sweep, "parameter", _long(1024))),
    ("sweep value depth 5", "sweep", lambda r: r.spec.sweep.values[2].struct_value.update(nested(5))),
    (
        "sweep value 200 keys",
        "sweep",
        lambda r: r.spec.sweep.values[2].struct_value.update({f"k{i}": i for i in range(199)}),
    ),
    ("ticks 1000000", "diagnostic", lambda r: setattr(r.spec.diagnostic, "ticks", 1_000_000)),
    ("tick_duration 3600s", "diagnostic", lambda r: _set_duration(3600)(r.spec.diagnostic.tick_duration)),
    ("tick_duration 0s", "diagnostic", lambda r: _set_duration(0)(r.spec.diagnostic.tick_duration)),
    ("plugin kind 128", "plugin", lambda r: setattr(r.spec.plugin, "kind", _long(128))),
    ("parameters depth 5", "plugin", lambda r: r.spec.plugin.parameters.update(nested(5))),
    ("config_overrides depth 5", "simulation", lambda r: r.spec.simulation.config_overrides.update(nested(5))),
    (
        "config_overrides 200 keys",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({f"k{i}": i for i in range(198)}),
    ),
    (
        "config_overrides nested 200 keys",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"inner": {f"k{i}": i for i in range(200)}}),
    ),
    (
        "config_overrides string 100000",
        "simulation",
        lambda r: r.spec.simulation.config_overrides.update({"k" * DEFAULT_MAX: {"b": _long(DEFAULT_MAX)}}),
    ),
]


@pytest.mark.parametrize(("kind", "edit"), [case[1:] for case in AT_THE_LIMIT], ids=[case[0] for case in AT_THE_LIMIT])
def test_meeting_a_limit_exactly_is_valid(kind, edit):
    assert violations(edited(kind, edit)) == []


# Limits of the other requests: (message, field path, description).
OTHER_BROKEN = [
    (pb.GetRunRequest(), "run_id", "is required"),
    (pb.GetRunRequest(run_id=_long(65)), "run_id", "must be at most 64 characters long (got 65)"),
    (pb.ListRunsRequest(page_size=-1), "page_size", "must be at least 0 (got -1)"),
    (pb.ListRunsRequest(page_size=501), "page_size", "must be at most 500 (got 501)"),
    (pb.ListRunsRequest(page_token=_long(513)), "page_token", "must be at most 512 characters long (got 513)"),
    (pb.ListRunsRequest(kind=_long(129)), "kind", "must be at most 128 characters long (got 129)"),
    (pb.WatchRunRequest(), "run_id", "is required"),
    (pb.WatchRunRequest(run_id=_long(65)), "run_id", "must be at most 64 characters long (got 65)"),
    (pb.WatchRunRequest(run_id="r", after_seq=-1), "after_seq", "must be at least 0 (got -1)"),
    (pb.CancelRunRequest(), "run_id", "is required"),
    (pb.CancelRunRequest(run_id=_long(65)), "run_id", "must be at most 64 characters long (got 65)"),
    (pb.CancelRunRequest(run_id="r", reason=_long(1025)), "reason", "must be at most 1024 characters long (got 1025)"),
    (pb.GetSummaryRequest(recent_limit=-1), "recent_limit", "must be at least 0 (got -1)"),
    (pb.GetSummaryRequest(recent_limit=101), "recent_limit", "must be at most 100 (got 101)"),
    (pb.RestartWorkersRequest(reason=_long(1025)), "reason", "must be at most 1024 characters long (got 1025)"),
]


@pytest.mark.parametrize(
    ("message", "path", "description"),
    OTHER_BROKEN,
    ids=[f"{m.DESCRIPTOR.name}.{p}:{d[:16]}" for m, p, d in OTHER_BROKEN],
)
def test_other_requests_break_their_limits(message, path, description):
    assert violations(message) == [(path, description)]


# ------------------------------------------------------------------ several at once, caps


def test_several_violations_are_all_listed():
    request = submit("sweep")
    request.request_id = _long(200)
    request.labels["big"] = _long(257)
    request.spec.sweep.num_iterations = 0
    request.spec.sweep.simulation.max_ticks = 0
    request.spec.sweep.simulation.config_overrides.update({"deep": nested(5)})
    request.spec.sweep.values[0].string_value = _long(DEFAULT_MAX + 1)
    assert sorted(v.field for v in validation.validate(request)) == sorted(
        [
            "request_id",
            'labels["big"]',
            "spec.sweep.num_iterations",
            "spec.sweep.simulation.max_ticks",
            "spec.sweep.simulation.config_overrides",
            "spec.sweep.values[0]",
        ]
    )


def test_an_empty_submit_request_names_the_spec_only():
    assert violations(pb.SubmitRunRequest()) == [("spec", "is required")]


def test_the_zero_defaults_take_part_in_numeric_bounds():
    request = pb.SubmitRunRequest()
    request.spec.batch.simulation.scenario = "s"
    assert violations(request) == [
        ("spec.batch.simulation.max_ticks", "must be at least 1 (got 0)"),
        ("spec.batch.num_iterations", "must be at least 1 (got 0)"),
    ]


def test_the_number_of_violations_is_capped():
    request = submit("sweep")
    for _ in range(60):
        request.spec.sweep.values.add().struct_value.update(nested(6))
    found = validation.validate(request)
    assert len(found) == validation.MAX_VIOLATIONS
    assert found[0].field == "spec.sweep.values"


# ------------------------------------------------------------------ Struct depth


def test_struct_depth_counts_lists_as_levels():
    def overrides(value):
        request = submit("simulation")
        request.spec.simulation.config_overrides.update(value)
        return violations(request)

    assert overrides({"a": [[[[1]]]]}) == []  # Struct, then four lists: depth 5
    assert overrides({"a": [[[[[1]]]]]}) == [
        ("spec.simulation.config_overrides", "must be nested at most 5 levels deep (level 6 reached at a[0][0][0][0])")
    ]
    assert overrides({"a": [{"b": [{"c": 1}]}]}) == []  # 5 containers
    assert overrides({"a": [{"b": [{"c": [1]}]}]})[0][1].startswith("must be nested at most 5 levels deep")


def test_struct_depth_is_reported_once_per_field():
    request = submit("simulation")
    request.spec.simulation.config_overrides.update({f"b{i}": nested(8) for i in range(10)})
    found = violations(request)
    assert [path for path, _ in found] == ["spec.simulation.config_overrides"]


def test_a_very_deep_struct_built_in_memory_is_walked_without_recursion():
    request = submit("plugin")
    node = request.spec.plugin.parameters
    for _ in range(3000):
        node = node.fields["a"].struct_value
    node.fields["leaf"].string_value = _long(DEFAULT_MAX + 1)  # below the depth limit: never reached
    found = violations(request)
    assert found == [("spec.plugin.parameters", "must be nested at most 5 levels deep (level 6 reached at a.a.a.a.a)")]


def test_a_scalar_value_has_depth_zero_and_a_struct_value_depth_one():
    request = submit("sweep")
    request.spec.sweep.values[0].list_value.values.add().struct_value.update(nested(4))  # 1 + 4 = 5
    assert violations(request) == []
    request.spec.sweep.values[0].list_value.values[0].struct_value.update(nested(5))  # 1 + 5 = 6
    assert [p for p, _ in violations(request)] == ["spec.sweep.values[0]"]


# ------------------------------------------------------------------ API


def test_check_raises_a_value_error_carrying_the_violations():
    request = edited("diagnostic", lambda r: setattr(r.spec.diagnostic, "ticks", -1))
    with pytest.raises(validation.ValidationError) as caught:
        validation.check(request)
    assert isinstance(caught.value, ValueError)
    assert [v.field for v in caught.value.violations] == ["spec.diagnostic.ticks"]
    assert "spec.diagnostic.ticks: must be at least 0 (got -1)" in str(caught.value)
    validation.check(submit())  # valid: returns


def test_bad_request_wraps_the_violations():
    found = validation.validate(pb.GetRunRequest())
    detail = validation.bad_request(found)
    assert isinstance(detail, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in detail.field_violations] == [("run_id", "is required")]
    assert isinstance(found[0], error_details_pb2.BadRequest.FieldViolation)


def test_plans_are_compiled_once_per_type():
    first = validation.compile_plan(pb.SubmitRunRequest.DESCRIPTOR)
    assert validation.compile_plan(pb.SubmitRunRequest.DESCRIPTOR) is first


# ------------------------------------------------------------------ rules the schema does not use yet

_PROBE_FILE = "tests/unit/validation_probe.proto"


def _probe_classes():
    """Message classes of a small schema built here, with the rules runner.proto does not use:
    a recursive type, proto3 optional, doubles, patterns, repeated strings, maps of messages."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_PROBE_FILE)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto(name=_PROBE_FILE, package="vprobe", syntax="proto3")
        fdp.dependency.append(limits_pb2.DESCRIPTOR.name)
        fdp.options.Extensions[limits_pb2.default_max_string_len] = 10
        node = fdp.message_type.add(name="Node")
        t = descriptor_pb2.FieldDescriptorProto

        def field(name, number, ftype, label=t.LABEL_OPTIONAL, **kw):
            return node.field.add(name=name, number=number, type=ftype, label=label, **kw)

        field("name", 1, t.TYPE_STRING).options.Extensions[limits_pb2.limits].max_len = 3
        field("child", 2, t.TYPE_MESSAGE, type_name=".vprobe.Node")
        field("children", 3, t.TYPE_MESSAGE, t.LABEL_REPEATED, type_name=".vprobe.Node")
        node.oneof_decl.add(name="_opt")
        field("opt", 4, t.TYPE_INT32, oneof_index=0, proto3_optional=True).options.Extensions[limits_pb2.limits].min = 1
        ratio = field("ratio", 5, t.TYPE_DOUBLE).options.Extensions[limits_pb2.limits]
        ratio.min, ratio.max = 0, 1
        tags = field("tags", 6, t.TYPE_STRING, t.LABEL_REPEATED).options.Extensions[limits_pb2.limits]
        tags.pattern, tags.max_items = "[a-z]+", 3
        entry = node.nested_type.add(name="ByNameEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=t.TYPE_MESSAGE, label=t.LABEL_OPTIONAL, type_name=".vprobe.Node")
        field("by_name", 7, t.TYPE_MESSAGE, t.LABEL_REPEATED, type_name=".vprobe.Node.ByNameEntry")
        field("flag", 8, t.TYPE_BOOL).options.Extensions[limits_pb2.limits].required = True
        field("from", 9, t.TYPE_STRING).options.Extensions[limits_pb2.limits].max_len = 2  # a Python keyword
        bad = fdp.message_type.add(name="Bad")
        bad.field.add(name="s", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL).options.Extensions[
            limits_pb2.limits
        ].min = 1
        pool.AddSerializedFile(fdp.SerializeToString())
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("vprobe.Node")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("vprobe.Bad")),
    )


def test_recursive_types_are_checked_at_any_depth():
    node_cls, _ = _probe_classes()
    node = node_cls(flag=True)
    deep = node
    for _ in range(20):  # deeper than the inlining
        deep = deep.child
        deep.flag = True
    deep.name = "abcd"
    assert violations(node) == [("child." * 20 + "name", "must be at most 3 characters long (got 4)")]


def test_probe_rules():
    node_cls, _ = _probe_classes()
    node = node_cls(flag=True, ratio=0.5, tags=["ok"])
    assert violations(node) == []
    node.opt = 0  # explicit presence: checked once set
    node.ratio = math.nan
    node.tags.extend(["Bad", "ok", "ok"])
    node.by_name["k"].name = "toolong"
    node.children.add(flag=True).children.add()
    setattr(node, "from", "abc")
    assert violations(node) == [
        ("children[0].children[0].flag", "is required"),
        ("opt", "must be at least 1 (got 0)"),
        ("ratio", "must be a number (got NaN)"),
        ("tags", "must have at most 3 items (got 4)"),
        ("tags[1]", "must match the pattern '[a-z]+'"),
        ('by_name["k"].name', "must be at most 3 characters long (got 7)"),
        ('by_name["k"].flag', "is required"),
        ("from", "must be at most 2 characters long (got 3)"),
    ]


def test_a_limit_that_does_not_fit_its_field_is_a_schema_error():
    _, bad_cls = _probe_classes()
    with pytest.raises(validation.SchemaError, match=r"vprobe\.Bad\.s"):
        validation.compile_plan(bad_cls.DESCRIPTOR)


def test_a_struct_field_is_a_struct_not_a_message_to_recurse_into():
    # Struct.fields is a map of Values: the walk, not the generic recursion, handles it.
    assert violations(struct_pb2.Struct()) == []


def test_an_undefined_enum_number_is_refused():
    request = pb.ListRunsRequest(state=99)
    assert violations(request) == [
        (
            "state",
            "must be one of RUN_STATE_UNSPECIFIED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, "
            "DEADLINE_EXCEEDED, INTERRUPTED (got 99)",
        )
    ]


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", " lead", ""])
def test_a_scenario_name_must_be_a_plain_name(name):
    request = edited("simulation", lambda r: setattr(r.spec.simulation, "scenario", name))
    assert [path for path, _ in violations(request)] == ["spec.simulation.scenario"]
