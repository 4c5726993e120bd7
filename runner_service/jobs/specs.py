"""Checks of a run's spec against the job kinds and the scenario catalog, made at
submission (in the runner process), and the catalog as ListScenarios returns it.

Kept out of the worker's import path (it imports protos and errors).
"""

from __future__ import annotations

from google.protobuf import json_format
from google.rpc import error_details_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_service import errors
from runner_service.jobs import catalog as catalog_mod
from runner_service.jobs import engine
from runner_service.runs import kind_of

_FieldViolation = error_details_pb2.BadRequest.FieldViolation

#: Job kinds with a typed spec (the members of RunSpec.kind but `plugin`). A run
#: of one of these is reached only through its typed field, so its checks (and
#: its limits in the schema) always apply.
TYPED_KINDS = frozenset(field.name for field in pb.RunSpec.DESCRIPTOR.oneofs_by_name["kind"].fields) - {"plugin"}


def _invalid(field: str, description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument([_FieldViolation(field=field, description=description)])


def simulations_of(spec: pb.RunSpec) -> list[tuple[str, pb.SimulationSpec]]:
    """The simulation specs a run spec carries, each with its field path."""
    which = spec.WhichOneof("kind")
    if which == "simulation":
        return [("spec.simulation", spec.simulation)]
    if which in ("batch", "sweep"):
        return [(f"spec.{which}.simulation", getattr(spec, which).simulation)]
    if which == "compare":
        return [("spec.compare.baseline", spec.compare.baseline), ("spec.compare.variant", spec.compare.variant)]
    return []


def check_scenario(catalog: catalog_mod.Catalog, sim: pb.SimulationSpec, where: str) -> dict:
    """The scenario of one simulation spec with its overrides merged. Raises NotFound
    (no such scenario), FailedPrecondition (its file is malformed) or InvalidArgument
    (an override path that does not exist, or a value the scenario rejects)."""
    try:
        scenario = catalog.get(sim.scenario)
    except catalog_mod.ScenarioNotFound as exc:
        raise errors.NotFound(str(exc)) from None
    except catalog_mod.ScenarioUnavailable as exc:
        raise errors.FailedPrecondition(str(exc)) from None
    overrides = json_format.MessageToDict(sim.config_overrides) if sim.HasField("config_overrides") else {}
    try:
        merged = engine.apply_overrides(scenario, overrides)
    except engine.OverrideError as exc:
        raise _invalid(
            f"{where}.config_overrides.{exc.path}", f"no parameter {exc.path!r} in scenario {sim.scenario!r}"
        ) from None
    try:
        engine.Battle(merged)
    except engine.ScenarioError as exc:
        field = f"{where}.config_overrides" + (f".{exc.path}" if exc.path else "")
        raise _invalid(field, exc.reason) from None
    return merged


def check_spec(spec: pb.RunSpec, catalog: catalog_mod.Catalog, known_kinds) -> None:
    """Raise a RunnerError when the run could never start: a plugin spec naming a
    built-in kind (InvalidArgument: the typed field must be used), an unknown job
    kind (InvalidArgument listing the known ones), or a scenario problem (check_scenario),
    or a sweep parameter that is not in the scenario (InvalidArgument)."""
    kind = kind_of(spec)
    if spec.WhichOneof("kind") == "plugin" and kind in TYPED_KINDS:
        raise _invalid(
            "spec.plugin.kind",
            f"{kind!r} is a built-in job kind: use the typed field spec.{kind} instead of spec.plugin",
        )
    if kind not in known_kinds:
        field = "spec.plugin.kind" if spec.WhichOneof("kind") == "plugin" else "spec"
        known = ", ".join(sorted(known_kinds))
        raise _invalid(field, f"unknown job kind {kind!r}; known kinds: {known}")
    for where, sim in simulations_of(spec):
        merged = check_scenario(catalog, sim, where)
        if spec.WhichOneof("kind") == "sweep":
            try:
                engine.check_path(merged, spec.sweep.parameter)
            except engine.OverrideError:
                raise _invalid(
                    "spec.sweep.parameter", f"no parameter {spec.sweep.parameter!r} in scenario {sim.scenario!r}"
                ) from None


def scenarios_response(entries: list[catalog_mod.Entry]) -> pb.ListScenariosResponse:
    response = pb.ListScenariosResponse()
    for entry in entries:
        scenario = response.scenarios.add(name=entry.name, description=entry.description, error=entry.error)
        for side, units in entry.sides:
            summary = scenario.sides.add(name=side)
            for unit_type, count in units:
                summary.units.add(unit_type=unit_type, count=min(count, 2**31 - 1))
    return response
