"""The scenario catalog: built-ins, the operator's directory, malformed files, the mtime cache."""

from __future__ import annotations

import json
import logging
import os

import pytest

from runner_service.jobs import catalog

GOOD = {
    "description": "a test scenario",
    "sides": {
        "north": {"units": [{"type": "pikes", "count": 4, "strength": 5, "attack": 2}]},
        "south": {"units": [{"type": "bows", "count": 3, "strength": 4, "attack": 3, "accuracy": 0.6}]},
    },
}


def write(directory, name: str, content) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (directory / name).write_text(text)


def bump(directory) -> None:
    """Make sure the directory's mtime moves (coarse file systems)."""
    st = os.stat(directory)
    os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_builtins_are_listed_with_summaries():
    entries = {e.name: e for e in catalog.Catalog().entries()}
    assert {"skirmish", "duel", "marksman", "three_way"} <= set(entries)
    assert all(not e.error for e in entries.values())
    skirmish = entries["skirmish"]
    assert skirmish.source == "builtin" and skirmish.description
    assert skirmish.sides == (
        ("red", (("infantry", 30), ("archers", 12))),
        ("blue", (("infantry", 26), ("cavalry", 8))),
    )


def test_malformed_files_are_listed_with_their_error_and_logged(tmp_path, caplog):
    write(tmp_path, "good.json", GOOD)
    write(tmp_path, "broken.json", "{not json")
    write(tmp_path, "wrong.json", {"sides": {"only": GOOD["sides"]["north"]}})
    write(tmp_path, "notes.txt", "ignored")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with caplog.at_level(logging.WARNING, logger="runner_service.jobs.catalog"):
        entries = {e.name: e for e in catalog.Catalog(str(tmp_path)).entries()}
    assert "notes" not in entries
    assert entries["good"].error == "" and entries["good"].description == "a test scenario"
    assert entries["broken"].error.startswith("not valid JSON")
    assert "at least two sides" in entries["wrong"].error
    assert entries["binary"].error
    assert "skirmish" in entries, "built-ins are still there"
    logged = {r.scenario for r in caplog.records if r.getMessage() == "malformed scenario file"}
    assert logged == {"broken", "wrong", "binary"}


def test_get_raises_for_unknown_and_malformed(tmp_path):
    write(tmp_path, "broken.json", "[")
    cat = catalog.Catalog(str(tmp_path))
    with pytest.raises(catalog.ScenarioNotFound):
        cat.get("nope")
    with pytest.raises(catalog.ScenarioUnavailable, match="broken"):
        cat.get("broken")
    first = cat.get("skirmish")
    first["sides"].clear()
    assert cat.get("skirmish")["sides"], "get returns a copy"


def test_an_operator_file_replaces_a_builtin(tmp_path):
    write(tmp_path, "duel.json", GOOD)
    assert catalog.Catalog(str(tmp_path)).get("duel") == GOOD


def test_rescanned_only_when_the_directory_mtime_changes(tmp_path, monkeypatch):
    write(tmp_path, "a.json", GOOD)
    cat = catalog.Catalog(str(tmp_path))
    scans = []
    real_scan = catalog._scan
    monkeypatch.setattr(catalog, "_scan", lambda d: scans.append(d) or real_scan(d))
    assert "a" in {e.name for e in cat.entries()}
    cat.entries()
    cat.get("a")
    assert len(scans) == 1, "cached while the directory is unchanged"
    write(tmp_path, "b.json", GOOD)
    bump(tmp_path)
    assert {"a", "b"} <= {e.name for e in cat.entries()}
    assert len(scans) == 2
    (tmp_path / "a.json").unlink()
    bump(tmp_path)
    assert "a" not in {e.name for e in cat.entries()}


def test_a_missing_directory_leaves_the_builtins(tmp_path):
    names = {e.name for e in catalog.Catalog(str(tmp_path / "absent")).entries()}
    assert "skirmish" in names


def test_directory_for_job_comes_from_the_context_never_from_parameters(monkeypatch):
    class Ctx:
        scenario_dir = ""

    monkeypatch.setenv("RUNNER_SCENARIO_DIR", "/from/env")
    assert catalog.directory_for_job(Ctx()) == "/from/env"
    ctx = Ctx()
    ctx.scenario_dir = "/from/settings"
    assert catalog.directory_for_job(ctx) == "/from/settings"
    assert catalog.directory_for_job({"scenario_dir": "/from/params"}) == "/from/env"
    monkeypatch.delenv("RUNNER_SCENARIO_DIR")
    assert catalog.directory_for_job(Ctx()) == ""
