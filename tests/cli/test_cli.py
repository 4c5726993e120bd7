"""`runner` in a pseudo-terminal against a real runner process: the progress bar
moves, Ctrl-C cancels and a second one detaches, the exit codes tell the final
state, the tables and the --json output."""

from __future__ import annotations

import json
import re
import time

import pexpect
import pytest
from google.protobuf import json_format

from protos.runner.v1 import runner_pb2 as pb
from runner_client import RunnerClient, specs
from runner_client.cli import exits
from tests.cli.conftest import ADMIN_TOKEN, Cli, plain
from tests.e2e.test_process import free_port

pytestmark = pytest.mark.timeout(90)

RUN_ID = re.compile(r"run ([0-9a-f]{32})")


def run_id_in(text: str) -> str:
    found = RUN_ID.search(text)
    assert found, f"no run id in:\n{text}"
    return found.group(1)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_shows_a_moving_progress_bar_prints_the_result_and_exits_0(cli, tmp_path):
    child = cli.spawn("run", "diagnostic", "--ticks", "100", "--tick-ms", "20", "--log-every", "50")
    child.logfile_read = open(tmp_path / "transcript.txt", "w")  # noqa: SIM115 - closed with the child
    child.expect(pexpect.EOF)
    child.close()
    child.logfile_read.close()
    raw = child.before
    text = plain((tmp_path / "transcript.txt").read_text())
    percentages = {int(p) for p in re.findall(r"(\d+)%", text)}
    assert len(percentages - {100}) >= 2, f"the bar never moved: {sorted(percentages)}\n{text}"
    assert 100 in percentages
    assert "\r" in raw and "\x1b[" in raw  # redrawn in place, as a live display does
    assert "info: tick 50" in text and "info: tick 100" in text
    assert re.search(r"run [0-9a-f]{32} SUCCEEDED in \d+\.\d+ s", text), text
    assert re.search(r"ticks\s+│\s+100", text), text  # the result table
    assert child.exitstatus == exits.OK


def test_ctrl_c_cancels_the_run_and_waits_for_it_to_end(cli):
    child = cli.spawn("run", "diagnostic", "--ticks", "6000", "--tick-ms", "10")
    child.expect(r"\d+%")
    child.sendintr()
    child.expect("cancelling run")
    child.expect(pexpect.EOF)
    child.close()
    text = plain(child.before)
    assert child.exitstatus == exits.CANCELLED, text
    run_id = run_id_in(text)
    with RunnerClient(cli.runner.address) as client:
        run = client.get_run(run_id)
    assert run.state == pb.CANCELLED and run.cancel_requested
    assert f"run {run_id} CANCELLED" in text


def test_a_second_ctrl_c_detaches_and_the_run_keeps_its_state(cli):
    child = cli.spawn("run", "diagnostic", "--ticks", "6000", "--tick-ms", "10", "--ignore-cancellation")
    child.expect(r"run (?:\x1b\[[0-9;]*m)*([0-9a-f]{32})")  # in bold
    run_id = child.match.group(1)
    child.expect(r"\d+%")
    child.sendintr()
    child.expect("cancel requested")  # the runner has the request: the job ignores it for 30 s
    child.sendintr()
    child.expect("detached")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == exits.DETACHED, plain(child.before)
    with RunnerClient(cli.runner.address) as client:
        run = client.get_run(run_id)
        assert run.state == pb.RUNNING and run.cancel_requested
        # `runner watch` picks it up where it is; its Ctrl-C only stops watching.
        watcher = cli.spawn("watch", run_id)
        watcher.expect(r"\d+%")
        watcher.sendintr()
        watcher.expect("detached")
        watcher.expect(pexpect.EOF)
        watcher.close()
        assert watcher.exitstatus == exits.DETACHED
        assert client.get_run(run_id).state == pb.RUNNING


def test_exit_codes_tell_a_failed_run_a_deadline_and_an_unreachable_runner(cli):
    text, status = cli.run("run", "diagnostic", "--ticks", "10", "--fail-at-tick", "5")
    assert status == exits.FAILED, text
    assert "FAILED" in text and "failed at tick 5 as requested" in text
    failed_id = run_id_in(text)
    text, status = cli.run("watch", failed_id)  # a finished run: replayed, same code
    assert status == exits.FAILED and "FAILED" in text

    text, status = cli.run("run", "diagnostic", "--ticks", "1000", "--tick-ms", "10", "--timeout", "0.3")
    assert status == exits.DEADLINE_EXCEEDED, text

    nobody = f"127.0.0.1:{free_port()}"
    text, status = cli.run("get", "x", "--target", nobody, "--max-attempts", "2")
    assert status == exits.UNREACHABLE and "UNAVAILABLE" in text, text
    text, status = cli.run("run", "diagnostic", "--max-attempts", "1", RUNNER_TARGET=nobody)
    assert status == exits.UNREACHABLE, text

    text, status = cli.run("get", "no-such-run")
    assert status == exits.REFUSED and "NOT_FOUND" in text


def test_usage_errors_exit_2(cli):
    text, status = cli.run("run", "diagnostic", "--scenario", "duel")
    assert status == exits.USAGE and "--scenario does not apply to diagnostic runs" in text
    text, status = cli.run("run", "batch")
    assert status == exits.USAGE and "--scenario is required" in text
    text, status = cli.run("run", "diagnostic", "--ticks", "-5")  # the runner's own check
    assert status == exits.USAGE and "spec.diagnostic.ticks" in text
    text, status = cli.run("run", "sweep", "--scenario", "duel")
    assert status == exits.USAGE and "--parameter" in text
    text, status = cli.run("list", "--state", "NOPE")
    assert status == exits.USAGE


def test_json_output_parses_for_run_submit_get_list_cancel_and_scenarios(cli):
    # As a script reads it: standard output holds JSON lines and nothing else.
    text, status = cli.run_piped("run", "diagnostic", "--ticks", "5", "--log-every", "1", "--json")
    assert status == exits.OK, text
    events = [json_format.ParseDict(line, pb.RunEvent()) for line in json_lines(text)]
    assert events[0].state_change.state == pb.QUEUED and events[-1].state_change.state == pb.SUCCEEDED
    assert [e.log.message for e in events if e.WhichOneof("event") == "log"] == [f"tick {i}" for i in range(1, 6)]
    assert [e.seq for e in events] == sorted({e.seq for e in events})

    args = ["submit", "diagnostic", "--ticks", "6000", "--tick-ms", "10", "--label", "team=red"]
    text, status = cli.run_piped(*args, "--request-id", "cli-json-1", "--json")
    assert status == exits.OK, text
    submitted = json_format.ParseDict(json_lines(text)[0], pb.Run())
    assert submitted.request_id == "cli-json-1" and dict(submitted.labels) == {"team": "red"}
    text, _ = cli.run_piped(*args, "--request-id", "cli-json-1", "--json")  # the same submission: the same run
    assert json_lines(text)[0]["runId"] == submitted.run_id

    text, status = cli.run_piped("get", submitted.run_id, "--json")
    assert status == exits.OK and json_format.ParseDict(json_lines(text)[0], pb.Run()).run_id == submitted.run_id
    text, status = cli.run_piped("cancel", submitted.run_id, "--json")
    assert status == exits.OK and json_format.ParseDict(json_lines(text)[0], pb.Run()).cancel_requested
    text, status = cli.run_piped("list", "--json", "--limit", "3")
    listed = [json_format.ParseDict(line, pb.Run()) for line in json_lines(text)]
    assert status == exits.OK and len(listed) == 3 and listed[0].run_id == submitted.run_id
    text, status = cli.run_piped("list", "--json", "--kind", "diagnostic", "--state", "succeeded", "--page-size", "1")
    assert status == exits.OK and all(line["state"] == "SUCCEEDED" for line in json_lines(text))
    text, status = cli.run_piped("scenarios", "--json")
    answer = json_format.ParseDict(json_lines(text)[0], pb.ListScenariosResponse())
    assert status == exits.OK and "duel" in {s.name for s in answer.scenarios}


def test_tables_for_list_get_scenarios_summary_and_admin(cli):
    text, status = cli.run("submit", "diagnostic", "--ticks", "1")
    assert status == exits.OK
    run_id = text.split()[0]
    with RunnerClient(cli.runner.address) as client:
        assert list(client.watch_run(run_id))[-1].state_change.state == pb.SUCCEEDED
    text, status = cli.run("list", "--limit", "50")
    assert status == exits.OK and run_id in text and "state" in text
    text, status = cli.run("get", run_id)
    assert status == exits.OK and "SUCCEEDED" in text and "request id" in text
    text, status = cli.run("scenarios")
    assert status == exits.OK and all(name in text for name in ("duel", "skirmish", "marksman", "three_way"))
    text, status = cli.run("summary")
    assert status == exits.OK and "runs by state" in text
    text, status = cli.run("admin", "status", "--admin-token", ADMIN_TOKEN)
    assert status == exits.OK and "workers" in text and "churn policy" in text
    text, status = cli.run("admin", "status")
    assert status == exits.REFUSED and "UNAUTHENTICATED" in text
    text, status = cli.run("cancel", run_id)  # a finished run: unchanged
    assert status == exits.OK and "SUCCEEDED" in text


def test_statistics_tables_for_batch_compare_and_sweep_and_a_spec_file(cli, tmp_path):
    text, status = cli.run("run", "batch", "--scenario", "duel", "--iterations", "40", "--seed", "1")
    assert status == exits.OK, text
    assert "duel: 40 iterations" in text and "P(win)" in text and "95 % CI" in text and "draw" in text
    text, status = cli.run(
        "run", "compare", "--scenario", "duel", "--variant-set", "sides.red.units.0.count=30", "--iterations", "20"
    )
    assert status == exits.OK, text
    assert "compare: 20 iterations each" in text and "difference" in text
    text, status = cli.run(
        "run", "sweep", "--scenario", "duel", "--parameter", "sides.red.units.0.count", "--values", "10,20,30"
    )
    assert status == exits.OK, text
    assert "sweep of sides.red.units.0.count" in text and "P(red wins)" in text
    spec = {"simulation": {"scenario": "duel", "maxTicks": 500, "seed": "3"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    text, status = cli.run("run", "--spec-file", str(tmp_path / "spec.json"))
    assert status == exits.OK and "winner" in text, text


def test_watch_resumes_across_a_runner_restart(processes, tmp_path):
    """`runner watch` of a queued run while its runner is killed (-9) and started
    again on the same port and SQLite file: the command says it resumes, follows
    the run to its end on the new process and exits 0."""
    db = tmp_path / "runner.db"
    first = processes.start("runner", db=db)
    with RunnerClient(first.address) as client:
        blocker = client.submit_run(specs.diagnostic(ticks=6000, tick_s=0.01))
        deadline = time.monotonic() + 10
        while client.get_run(blocker.run_id).state != pb.RUNNING:
            assert time.monotonic() < deadline, "the blocker never started"
            time.sleep(0.02)
        waiting = client.submit_run(specs.diagnostic(ticks=30, tick_s=0.01, log_every=10))
    cli = Cli(first)
    child = cli.spawn("watch", waiting.run_id, timeout_s=60)
    child.expect("QUEUED")
    processes.kill(first)
    child.expect("resuming")
    processes.start("runner", port=first.port, db=db)
    child.expect(pexpect.EOF)
    child.close()
    text = plain(child.before)
    assert child.exitstatus == exits.OK, text
    assert "tick 30" in text and f"run {waiting.run_id} SUCCEEDED" in text
