"""Job kinds: built-in ones and the operator's, all found through the
``runner_service.jobs`` entry point group (name = kind, value = "module:function").

A job function has the signature ``run(params: dict, ctx: JobContext) -> dict``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "runner_service.jobs"

# Built-in kinds, also declared as entry points in pyproject.toml; listed here so a
# checkout that is not installed still runs them.
BUILTIN = {
    "diagnostic": "runner_service.jobs.diagnostic:run",
    "simulation": "runner_service.jobs.simulation:run_simulation",
    "batch": "runner_service.jobs.simulation:run_batch",
    "compare": "runner_service.jobs.simulation:run_compare",
    "sweep": "runner_service.jobs.simulation:run_sweep",
}

JobFunction = Callable[[dict, object], object]


def _load(target: str) -> JobFunction:
    module_name, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"{target} is not callable")
    return fn


def discover(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Map each job kind to its "module:function" target: built-ins, then entry
    points, then `extra` (from configuration). Later sources win."""
    kinds = dict(BUILTIN)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        kinds[ep.name] = ep.value
    kinds.update(extra or {})
    return kinds


class Registry:
    """Resolves kinds to functions lazily, caching them (inside a worker process)."""

    def __init__(self, targets: dict[str, str]) -> None:
        self._targets = targets
        self._cache: dict[str, JobFunction] = {}

    def get(self, kind: str) -> JobFunction:
        fn = self._cache.get(kind)
        if fn is None:
            target = self._targets.get(kind)
            if target is None:
                raise KeyError(kind)
            fn = self._cache[kind] = _load(target)
        return fn
