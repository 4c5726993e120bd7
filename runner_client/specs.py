"""Run specs from plain Python values, and the submission request around one (pure).

    from runner_client import specs
    spec = specs.batch("duel", iterations=500, max_ticks=1000, seed=1)
    request = specs.submit_request(spec, labels={"team": "red"}, run_timeout_s=60)

Every field is the schema's (protos/runner/v1/runner.proto); the runner checks
the limits and answers INVALID_ARGUMENT with the fields that break them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from protos.runner.v1 import runner_pb2 as pb


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not values:
        return None
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out


def simulation_spec(
    scenario: str, *, max_ticks: int = 1000, seed: int = 0, overrides: Mapping[str, Any] | None = None
) -> pb.SimulationSpec:
    """One battle of `scenario`; `overrides` changes scenario parameters by path
    ({"sides": {"red": {"units": {"0": {"count": 30}}}}})."""
    sim = pb.SimulationSpec(scenario=scenario, max_ticks=max_ticks, seed=seed)
    struct = _struct(overrides)
    if struct is not None:
        sim.config_overrides.CopyFrom(struct)
    return sim


def simulation(
    scenario: str, *, max_ticks: int = 1000, seed: int = 0, overrides: Mapping[str, Any] | None = None
) -> pb.RunSpec:
    return pb.RunSpec(simulation=simulation_spec(scenario, max_ticks=max_ticks, seed=seed, overrides=overrides))


def batch(
    scenario: str,
    *,
    iterations: int,
    max_ticks: int = 1000,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> pb.RunSpec:
    sim = simulation_spec(scenario, max_ticks=max_ticks, seed=seed, overrides=overrides)
    return pb.RunSpec(batch=pb.BatchSpec(simulation=sim, num_iterations=iterations))


def compare(baseline: pb.SimulationSpec, variant: pb.SimulationSpec, *, iterations: int) -> pb.RunSpec:
    return pb.RunSpec(compare=pb.CompareSpec(baseline=baseline, variant=variant, num_iterations=iterations))


def sweep(simulation: pb.SimulationSpec, parameter: str, values: Sequence[Any], *, iterations: int) -> pb.RunSpec:
    """One row per value of `parameter` (a dotted path, e.g. "sides.red.units.0.count")."""
    spec = pb.RunSpec(sweep=pb.SweepSpec(simulation=simulation, parameter=parameter, num_iterations=iterations))
    holder = struct_pb2.ListValue()
    holder.extend(list(values))
    spec.sweep.values.extend(holder.values)
    return spec


def diagnostic(
    *,
    ticks: int = 100,
    tick_s: float = 0.01,
    cpu: bool = False,
    ignore_cancellation: bool = False,
    fail_at_tick: int = 0,
    log_every: int = 0,
    progress_every: int = 0,
) -> pb.RunSpec:
    """The synthetic workload: `ticks` ticks of `tick_s` seconds each, sleeping or
    spinning the CPU; optionally ignoring cancellation or failing at a tick."""
    spec = pb.DiagnosticSpec(
        ticks=ticks,
        mode=pb.DiagnosticSpec.CPU if cpu else pb.DiagnosticSpec.SLEEP,
        ignore_cancellation=ignore_cancellation,
        fail_at_tick=fail_at_tick,
        log_every=log_every,
        progress_every=progress_every,
    )
    spec.tick_duration.FromNanoseconds(round(tick_s * 1e9))
    return pb.RunSpec(diagnostic=spec)


def plugin(kind: str, parameters: Mapping[str, Any] | None = None) -> pb.RunSpec:
    """A job kind registered by the operator, with its parameters."""
    spec = pb.RunSpec(plugin=pb.PluginSpec(kind=kind))
    struct = _struct(parameters)
    if struct is not None:
        spec.plugin.parameters.CopyFrom(struct)
    return spec


def kind_of(spec: pb.RunSpec) -> str:
    """ "diagnostic", "batch", ... or a plugin's kind; "" for an empty spec."""
    which = spec.WhichOneof("kind")
    if which == "plugin":
        return spec.plugin.kind
    return which or ""


def new_request_id() -> str:
    return uuid.uuid4().hex


def submit_request(
    spec: pb.RunSpec | pb.SubmitRunRequest,
    *,
    request_id: str | None = None,
    labels: Mapping[str, str] | None = None,
    run_timeout_s: float | None = None,
    max_attempts: int | None = None,
) -> pb.SubmitRunRequest:
    """The SubmitRunRequest for `spec` (a RunSpec, or a whole request to complete).
    It always carries a request_id: `request_id` when given, the request's own
    when it has one, else a new random one. Retrying the same request can then
    never create a second run (the runner answers a known request_id with its run)."""
    if isinstance(spec, pb.SubmitRunRequest):
        request = pb.SubmitRunRequest()
        request.CopyFrom(spec)
    else:
        request = pb.SubmitRunRequest(spec=spec)
    if request_id:
        request.request_id = request_id
    elif not request.request_id:
        request.request_id = new_request_id()
    for key, value in (labels or {}).items():
        request.labels[key] = value
    if run_timeout_s is not None:
        request.timeout.FromNanoseconds(round(run_timeout_s * 1e9))
    if max_attempts is not None:
        request.max_attempts = max_attempts
    return request
