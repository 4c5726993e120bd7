"""The reference simulation engine: a stochastic, tick-based battle (pure, no I/O).

A scenario is a plain dict (the JSON of a scenario file)::

    {
      "description": "two equal companies",          # optional
      "sides": {                                      # two or more, in this order
        "red":  {"units": [{"type": "infantry", "count": 20, "strength": 10,
                            "attack": 4, "defence": 0.2, "accuracy": 0.5}]},
        "blue": {"units": [...]}
      }
    }

Each unit type has ``count`` units of ``strength`` hit points. Every tick all sides
fire at once, from the state at the start of the tick: each surviving unit of a type
hits with probability ``accuracy``; all hits of a type land on one enemy unit type,
drawn in proportion to the enemy units alive (first an enemy side, uniformly among
those still standing), and each does ``attack * (1 - defence of the target)``
damage. Damage kills the target type's units one at a time (a wounded unit carries
its damage to the next tick); overkill is lost. The battle ends when at most one
side has units left (that side wins; none left is a "draw") or after ``max_ticks``
ticks (a "draw").

Every draw comes from one ``random.Random(seed)``, in a fixed order (sides in
scenario order, unit types in list order), so the same scenario, overrides and seed
give the same outcome, bit for bit, in any process.

``config_overrides`` is a nested dict merged onto the scenario by path: dict keys,
and list indices written "0", "1", ... A path that does not exist raises
OverrideError naming it, e.g. "sides.red.units.3.count".
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import re
from collections.abc import Callable

DEFAULT_ACCURACY = 0.5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_SCENARIO_KEYS = {"description", "sides"}
_SIDE_KEYS = {"units", "description"}
_UNIT_KEYS = {"type", "count", "strength", "attack", "defence", "accuracy"}
MAX_UNITS_PER_TYPE = 1_000_000


class ScenarioError(ValueError):
    """A scenario (or its overrides) is not valid; `path` names the offending
    parameter ("" for the whole scenario)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


class OverrideError(ScenarioError):
    """An override (or sweep parameter) path that does not exist in the scenario."""

    def __init__(self, path: str) -> None:
        super().__init__("no such parameter in the scenario", path)


# ------------------------------------------------------------ overrides by path


def _child(container, key: str, path: str):
    """The child of a dict or list by key ("0", "1"... for lists), or OverrideError."""
    if isinstance(container, dict) and key in container:
        return key
    elif isinstance(container, list) and key.isdigit() and int(key) < len(container):
        return int(key)
    raise OverrideError(path)


def apply_overrides(scenario: dict, overrides: dict | None) -> dict:
    """A copy of `scenario` with `overrides` merged in by path. A dict in the
    overrides descends into the dict or list at that key (never replaces it); any
    other value replaces the value at that key. Raises OverrideError for a path that
    does not exist (the first in key order)."""
    merged = copy.deepcopy(scenario)
    if overrides:
        _merge(merged, overrides, "")
    return merged


def _merge(target, overrides: dict, prefix: str) -> None:
    for key, value in overrides.items():
        key = str(key)
        path = f"{prefix}.{key}" if prefix else key
        index = _child(target, key, path)
        if isinstance(value, dict):
            if isinstance(target[index], (dict, list)):
                _merge(target[index], value, path)
            elif value:  # keys below a plain value: a path that does not exist
                raise OverrideError(f"{path}.{next(iter(value))}")
        else:
            target[index] = copy.deepcopy(value)


def set_path(scenario: dict, dotted: str, value) -> dict:
    """A copy of `scenario` with the parameter at the dotted path replaced by
    `value`. Raises OverrideError when the path does not exist."""
    keys = dotted.split(".")
    # Replace, not merge, at the leaf: a dict value must not descend.
    merged = copy.deepcopy(scenario)
    target = merged
    for i, key in enumerate(keys):
        index = _child(target, key, ".".join(keys[: i + 1]))
        if i == len(keys) - 1:
            target[index] = copy.deepcopy(value)
        else:
            target = target[index]
    return merged


def check_path(scenario: dict, dotted: str) -> None:
    """Raise OverrideError unless the dotted path names a parameter of the scenario."""
    target = scenario
    keys = dotted.split(".")
    for i, key in enumerate(keys):
        target = target[_child(target, key, ".".join(keys[: i + 1]))]


# ------------------------------------------------------------ validation


def _number(unit: dict, key: str, path: str, low: float, high: float | None = None, default=None) -> float:
    value = unit.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(f"must be a finite number, not {value!r}", f"{path}.{key}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ScenarioError(f"must be {bound} (got {value:g})", f"{path}.{key}")
    return float(value)


class Battle:
    """A validated scenario flattened into parallel lists, one slot per unit type.
    Built once, simulated many times (each simulate() copies only `counts`)."""

    __slots__ = (
        "accuracy",
        "attack",
        "counts",
        "defence",
        "description",
        "enemies",
        "side_names",
        "side_of",
        "side_types",
        "strength",
        "type_names",
    )

    def __init__(self, scenario: dict) -> None:
        if not isinstance(scenario, dict):
            raise ScenarioError("a scenario must be a JSON object")
        unknown = set(scenario) - _SCENARIO_KEYS
        if unknown:
            raise ScenarioError(f"unknown key(s) {', '.join(sorted(unknown))}")
        description = scenario.get("description", "")
        if not isinstance(description, str):
            raise ScenarioError("must be a string", "description")
        self.description = description
        sides = scenario.get("sides")
        if not isinstance(sides, dict) or len(sides) < 2:
            raise ScenarioError("must be an object with at least two sides", "sides")
        self.side_names: list[str] = []
        self.type_names: list[str] = []
        self.side_of: list[int] = []
        self.counts: list[int] = []
        self.strength: list[float] = []
        self.attack: list[float] = []
        self.defence: list[float] = []
        self.accuracy: list[float] = []
        self.side_types: list[list[int]] = []
        for side_name, side in sides.items():
            spath = f"sides.{side_name}"
            if not _NAME.match(side_name):
                raise ScenarioError("a side name is letters, digits, '_' and '-'", spath)
            if not isinstance(side, dict) or set(side) - _SIDE_KEYS:
                raise ScenarioError("a side is an object with 'units' (and an optional 'description')", spath)
            units = side.get("units")
            if not isinstance(units, list) or not units:
                raise ScenarioError("must be a non-empty list of unit types", f"{spath}.units")
            s = len(self.side_names)
            self.side_names.append(side_name)
            indices = []
            seen = set()
            for u, unit in enumerate(units):
                upath = f"{spath}.units.{u}"
                if not isinstance(unit, dict):
                    raise ScenarioError("a unit type is an object", upath)
                unknown = set(unit) - _UNIT_KEYS
                if unknown:
                    raise ScenarioError(f"unknown key(s) {', '.join(sorted(unknown))}", upath)
                type_name = unit.get("type")
                if not isinstance(type_name, str) or not _NAME.match(type_name):
                    raise ScenarioError("a unit type name is letters, digits, '_' and '-'", f"{upath}.type")
                if type_name in seen:
                    raise ScenarioError(f"unit type {type_name!r} appears twice in side {side_name!r}", f"{upath}.type")
                seen.add(type_name)
                count = _number(unit, "count", upath, 0, MAX_UNITS_PER_TYPE)
                if count != int(count):
                    raise ScenarioError(f"must be a whole number (got {count:g})", f"{upath}.count")
                strength = _number(unit, "strength", upath, 0)
                if strength <= 0:
                    raise ScenarioError("must be greater than 0", f"{upath}.strength")
                indices.append(len(self.type_names))
                self.type_names.append(type_name)
                self.side_of.append(s)
                self.counts.append(int(count))
                self.strength.append(strength)
                self.attack.append(_number(unit, "attack", upath, 0))
                self.defence.append(_number(unit, "defence", upath, 0, 1, default=0.0))
                self.accuracy.append(_number(unit, "accuracy", upath, 0, 1, default=DEFAULT_ACCURACY))
            self.side_types.append(indices)
        # For each unit type: its enemy sides, each as the list of its unit types.
        self.enemies = [
            [types for s2, types in enumerate(self.side_types) if s2 != self.side_of[i]]
            for i in range(len(self.type_names))
        ]

    def summary(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """[(side, [(unit type, count), ...]), ...] in scenario order."""
        return [
            (name, [(self.type_names[i], self.counts[i]) for i in types])
            for name, types in zip(self.side_names, self.side_types)
        ]


def compile_scenario(scenario: dict, overrides: dict | None = None) -> Battle:
    """Merge overrides, then validate. Raises OverrideError or ScenarioError."""
    return Battle(apply_overrides(scenario, overrides) if overrides else scenario)


# ------------------------------------------------------------ seeds


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed derived from `seed` and labels (e.g. an iteration number), the
    same in every process (a hash of their text, never Python's randomized hash())."""
    text = "/".join([str(int(seed))] + [str(label) for label in labels])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


# ------------------------------------------------------------ the tick loop


def simulate(
    battle: Battle,
    seed: int,
    max_ticks: int,
    check: Callable[[], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 0,
) -> dict:
    """Fight one battle. `check()` is called before every tick (it may raise to
    stop the run); `on_progress(tick)` every `progress_every` ticks. Returns
    {"winner": side or "draw", "ticks": n, "survivors": {side: {unit type: count}}}."""
    rng = random.Random(int(seed))
    rnd = rng.random
    alive = list(battle.counts)
    n_types = len(alive)
    wound = [0.0] * n_types
    pending = [0.0] * n_types
    strength, attack, defence, accuracy = battle.strength, battle.attack, battle.defence, battle.accuracy
    enemies, side_types = battle.enemies, battle.side_types
    rng_types = range(n_types)
    tick = 0
    standing = _standing(alive, side_types)
    while standing > 1 and tick < max_ticks:
        if check is not None:
            check()
        tick += 1
        for i in rng_types:
            n = alive[i]
            if n == 0:
                continue
            acc = accuracy[i]
            # Binomial(n, acc) by n Bernoulli draws; no draw when the outcome is certain.
            if acc >= 1.0:
                hits = n
            elif acc <= 0.0:
                continue
            else:
                hits = 0
                for _ in range(n):
                    if rnd() < acc:
                        hits += 1
                if hits == 0:
                    continue
            # The target: an enemy side still standing (uniformly), then one of its
            # unit types in proportion to its units alive.
            # (`alive` changes only after every side has fired, so with two sides
            # the enemy is standing.)
            sides = enemies[i]
            if len(sides) == 1:
                types = sides[0]
            else:
                live_sides = [types for types in sides if any(alive[j] for j in types)]
                if not live_sides:
                    continue
                types = live_sides[int(rnd() * len(live_sides))] if len(live_sides) > 1 else live_sides[0]
            total = 0
            for j in types:
                total += alive[j]
            pick = rnd() * total
            target = types[-1]
            for j in types:
                pick -= alive[j]
                if pick < 0:
                    target = j
                    break
            if alive[target] == 0:  # only by float rounding at the very end of the walk
                for j in reversed(types):
                    if alive[j]:
                        target = j
                        break
            pending[target] += hits * attack[i] * (1.0 - defence[target])
        for t in rng_types:
            damage = pending[t]
            if damage:
                pending[t] = 0.0
                w = wound[t] + damage
                killed = int(w // strength[t])
                if killed >= alive[t]:
                    alive[t] = 0
                    wound[t] = 0.0
                else:
                    alive[t] -= killed
                    wound[t] = w - killed * strength[t]
        standing = _standing(alive, side_types)
        if on_progress is not None and progress_every and tick % progress_every == 0:
            on_progress(tick)
    winner = "draw"
    if standing == 1:
        for s, types in enumerate(side_types):
            if any(alive[j] for j in types):
                winner = battle.side_names[s]
    survivors = {
        name: {battle.type_names[j]: alive[j] for j in types} for name, types in zip(battle.side_names, side_types)
    }
    return {"winner": winner, "ticks": tick, "survivors": survivors}


def _standing(alive: list[int], side_types: list[list[int]]) -> int:
    count = 0
    for types in side_types:
        for j in types:
            if alive[j]:
                count += 1
                break
    return count
