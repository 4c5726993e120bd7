"""The scenario catalog: built-in scenarios (package data in runner_service/scenarios)
plus an operator's directory (settings.scenario_dir, RUNNER_SCENARIO_DIR).

A scenario is a JSON file `<name>.json` (the format is in jobs/engine.py); its name
is the file name without `.json`. An operator's scenario replaces a built-in one of
the same name. A file that cannot be read, parsed or validated is kept in the
listing with its error (and logged) and never hides the others.

The directory is rescanned only when its mtime changes: adding, removing or
renaming a file is seen at the next call; a file rewritten in place is not (write
a new file and rename it over the old one, as editors and deploy tools do).
The same catalog is used in the runner (ListScenarios, checks at submission) and
in worker processes (a job loads its scenario by name).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import json
import logging
import os
import re
import threading

from runner_service.jobs import engine

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "runner_service.scenarios"
ENV_VAR = "RUNNER_SCENARIO_DIR"
MAX_FILE_BYTES = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # as SimulationSpec.scenario


class ScenarioNotFound(LookupError):
    """No scenario of that name in the catalog."""


class ScenarioUnavailable(ValueError):
    """The scenario's file exists but could not be loaded (see its error)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    source: str  # "builtin" or the file's path
    description: str = ""
    # ((side, ((unit type, count), ...)), ...) in scenario order
    sides: tuple = ()
    error: str = ""
    scenario: dict | None = dataclasses.field(default=None, repr=False, compare=False)


def load_entry(name: str, source: str, text: str | bytes) -> Entry:
    """Parse and validate one scenario file; never raises (errors go in the entry)."""
    if not _NAME.match(name):
        return Entry(name, source, error="the file name is not a valid scenario name (letters, digits, '_', '.', '-')")
    try:
        scenario = json.loads(text)
        battle = engine.Battle(scenario)
    except json.JSONDecodeError as exc:
        return Entry(name, source, error=f"not valid JSON: {exc}")
    except UnicodeDecodeError as exc:
        return Entry(name, source, error=f"not UTF-8 text: {exc}")
    except engine.ScenarioError as exc:
        return Entry(name, source, error=f"invalid scenario: {exc}")
    sides = tuple((side, tuple(units)) for side, units in battle.summary())
    return Entry(name, source, battle.description, sides, scenario=scenario)


def _builtin_entries(package: str) -> dict[str, Entry]:
    out = {}
    for resource in importlib.resources.files(package).iterdir():
        if resource.name.endswith(".json") and resource.is_file():
            name = resource.name[: -len(".json")]
            out[name] = load_entry(name, "builtin", resource.read_bytes())
    return out


def _scan(directory: str) -> dict[str, Entry]:
    out = {}
    for file_name in sorted(os.listdir(directory)):
        if not file_name.endswith(".json") or file_name.startswith("."):
            continue
        path = os.path.join(directory, file_name)
        name = file_name[: -len(".json")]
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except IsADirectoryError:
            continue
        except OSError as exc:
            out[name] = Entry(name, path, error=f"cannot read the file: {exc.strerror or exc}")
            continue
        if len(data) > MAX_FILE_BYTES:
            out[name] = Entry(name, path, error=f"the file is larger than {MAX_FILE_BYTES} bytes")
            continue
        out[name] = load_entry(name, path, data)
    return out


class Catalog:
    """Scenarios by name. Thread-safe; cheap to call often (one stat per call once
    the directory was scanned)."""

    def __init__(self, directory: str = "", package: str = BUILTIN_PACKAGE) -> None:
        self.directory = directory
        self._package = package
        self._builtin: dict[str, Entry] | None = None
        self._dir_key: object = None
        self._dir_entries: dict[str, Entry] = {}
        self._merged: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> dict[str, Entry]:
        with self._lock:
            if self._builtin is None:
                self._builtin = _builtin_entries(self._package)
                self._log_errors(self._builtin.values())
                self._merged = dict(self._builtin)
            if not self.directory:
                return self._merged
            try:
                # Stat before listing: a change during the scan shows as a newer mtime next time.
                key: object = os.stat(self.directory).st_mtime_ns
            except OSError as exc:
                key = ("missing", type(exc).__name__)
                if key != self._dir_key:
                    log.warning(
                        "scenario directory unavailable", extra={"directory": self.directory, "error": str(exc)}
                    )
                    self._dir_key, self._dir_entries = key, {}
                    self._merged = dict(self._builtin)
                return self._merged
            if key != self._dir_key:
                try:
                    entries = _scan(self.directory)
                except OSError as exc:
                    log.warning(
                        "cannot list the scenario directory", extra={"directory": self.directory, "error": str(exc)}
                    )
                    entries = {}
                self._log_errors(entries.values())
                self._dir_key, self._dir_entries = key, entries
                self._merged = {**self._builtin, **entries}
            return self._merged

    @staticmethod
    def _log_errors(entries) -> None:
        for entry in entries:
            if entry.error:
                log.warning(
                    "malformed scenario file",
                    extra={"scenario": entry.name, "source": entry.source, "error": entry.error},
                )

    def entries(self) -> list[Entry]:
        """Every scenario, malformed ones included, sorted by name."""
        merged = self._refresh()
        return [merged[name] for name in sorted(merged)]

    def get(self, name: str) -> dict:
        """A scenario's dict (a copy). Raises ScenarioNotFound or ScenarioUnavailable."""
        entry = self._refresh().get(name)
        if entry is None:
            raise ScenarioNotFound(f"scenario {name!r} not found")
        if entry.error:
            raise ScenarioUnavailable(f"scenario {name!r} cannot be used: {entry.error}")
        assert entry.scenario is not None  # an entry without an error has its scenario
        return copy.deepcopy(entry.scenario)


def directory_for_job(ctx) -> str:
    """The operator's scenario directory as a job in a worker process sees it: the
    runner's setting carried by the job's context, else RUNNER_SCENARIO_DIR from
    the environment (a job called outside a worker). Never a job parameter: a
    client does not choose which directory a worker reads."""
    return str(getattr(ctx, "scenario_dir", "") or os.environ.get(ENV_VAR, ""))
