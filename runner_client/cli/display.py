"""What the `runner` command shows: a live progress bar while a run goes, then its
result (statistics tables for batch, compare and sweep), and tables of runs,
scenarios, the summary and the admin status. With --json, proto3 JSON lines instead."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from protos.runner.v1 import runner_pb2 as pb
from runner_client import specs
from runner_client.events import state_name

STATE_STYLE = {
    "QUEUED": "cyan",
    "RUNNING": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "DEADLINE_EXCEEDED": "magenta",
    "INTERRUPTED": "magenta",
}


def json_line(message: Message) -> str:
    """A message as one line of proto3 JSON."""
    return json_format.MessageToJson(message, indent=None)


def styled_state(state: int) -> str:
    name = state_name(state)
    return f"[{STATE_STYLE.get(name, 'white')}]{name}[/]"


def plain(value: Any) -> Any:
    """A Struct value as Python, with integral numbers as ints (Struct numbers are doubles)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def struct_dict(message: Message) -> dict:
    return plain(json_format.MessageToDict(message))


def timestamp(ts: Any) -> datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC)


def when(ts: Any) -> str:
    moment = timestamp(ts)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def duration_s(run: pb.Run) -> float | None:
    start, end = timestamp(run.start_time), timestamp(run.end_time)
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def error_reason(status: status_pb2.Status) -> str | None:
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason or None
    return None


def _fraction(progress: pb.Progress) -> str:
    if progress.total > 0:
        return f"{progress.done}/{progress.total} ({100 * progress.done / progress.total:.0f}%)"
    return str(progress.done) if progress.done else "-"


def _p(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else str(value)


def _ci(pair: Any) -> str:
    if isinstance(pair, list) and len(pair) == 2:
        return f"[{_p(pair[0])}, {_p(pair[1])}]"
    return "-"


def _mean_std(described: Any) -> str:
    if not isinstance(described, dict):
        return "-"
    return f"{described.get('mean', 0):.2f} ± {described.get('std', 0):.2f}"


class RunView:
    """A followed run on the terminal: a live progress bar with the run's state,
    its log lines printed above it. `note()` tells the user something (to stderr
    with --json, where stdout holds only events)."""

    def __init__(self, console: Console, *, json_output: bool, err_console: Console | None = None) -> None:
        self.console = console
        self.err_console = err_console or Console(stderr=True)
        self.json_output = json_output
        self.state = pb.RUN_STATE_UNSPECIFIED
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._run_id = ""

    def begin(self, run_id: str, kind: str) -> None:
        self._run_id = run_id
        if self.json_output:
            return
        self.console.print(f"run [bold]{run_id}[/] ({kind or 'run'})")
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=self.console,
            refresh_per_second=10,
        )
        self._task = self._progress.add_task(styled_state(pb.QUEUED), total=None, counts="", message="")
        self._progress.start()

    def note(self, text: str) -> None:
        if self.json_output:
            self.err_console.print(text)
        elif self._progress is not None:
            self._progress.console.print(text)
        else:
            self.console.print(text)

    def event(self, event: pb.RunEvent) -> None:
        if self.json_output:
            sys.stdout.write(json_line(event) + "\n")
            sys.stdout.flush()
            return
        which = event.WhichOneof("event")
        if which == "state_change":
            self.state = event.state_change.state
            reason = f" ({event.state_change.reason})" if event.state_change.reason else ""
            self.note(f"{styled_state(self.state)}{reason}")
            self._update(description=styled_state(self.state))
        elif which == "progress":
            p = event.progress
            counts = f"{p.done}/{p.total}" if p.total > 0 else str(p.done)
            self._update(total=p.total if p.total > 0 else None, completed=p.done, counts=counts, message=p.message)
        elif which == "log":
            self.note(f"[dim]{event.log.level.lower() or 'log'}:[/] {event.log.message}")

    def _update(self, **fields: Any) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **fields)

    def end(self) -> None:
        """Stop the live display (its last frame stays on the terminal). Idempotent."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# ------------------------------------------------------------ one run


def show_run(console: Console, run: pb.Run, *, with_result: bool = True) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", run.run_id)
    table.add_row("kind", run.kind or specs.kind_of(run.spec))
    state = styled_state(run.state) + (" (cancel requested)" if run.cancel_requested else "")
    table.add_row("state", state)
    table.add_row("progress", _fraction(run.progress) + (f"  {run.progress.message}" if run.progress.message else ""))
    table.add_row("created", when(run.create_time))
    table.add_row("started", when(run.start_time))
    table.add_row("ended", when(run.end_time))
    took = duration_s(run)
    if took is not None:
        table.add_row("took", f"{took:.2f} s")
    if run.replica:
        table.add_row("replica", run.replica)
    if run.attempt > 1 or run.max_attempts > 1:
        table.add_row("attempt", f"{run.attempt} of {max(run.max_attempts, 1)}")
    if run.request_id:
        table.add_row("request id", run.request_id)
    if run.labels:
        table.add_row("labels", ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items())))
    if run.HasField("error") and run.error.message:
        reason = error_reason(run.error)
        table.add_row("error", f"[red]{run.error.message}[/]" + (f" [{reason}]" if reason else ""))
    console.print(table)
    if with_result and run.HasField("result"):
        show_result(console, run.kind or specs.kind_of(run.spec), struct_dict(run.result))


def show_outcome(console: Console, run: pb.Run) -> None:
    """The closing lines of a followed run: its final state, duration, error and result."""
    took = duration_s(run)
    line = f"run {run.run_id} {styled_state(run.state)}" + (f" in {took:.2f} s" if took is not None else "")
    console.print(line)
    if run.HasField("error") and run.error.message:
        reason = error_reason(run.error)
        console.print(f"[red]error:[/] {run.error.message}" + (f" [{reason}]" if reason else ""))
    if run.HasField("result"):
        show_result(console, run.kind or specs.kind_of(run.spec), struct_dict(run.result))


def show_result(console: Console, kind: str, result: dict) -> None:
    if kind == "batch":
        _show_tally(console, result, f"{result.get('scenario', '')}: {result.get('iterations', '?')} iterations")
    elif kind == "compare":
        _show_compare(console, result)
    elif kind == "sweep":
        _show_sweep(console, result)
    elif kind == "simulation":
        _show_simulation(console, result)
    else:
        _show_mapping(console, result)


def _show_mapping(console: Console, result: dict) -> None:
    table = Table(title="result", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)


def _show_simulation(console: Console, result: dict) -> None:
    table = Table(title=f"{result.get('scenario', '')} (seed {result.get('seed', 0)})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("winner", str(result.get("winner", "-")))
    table.add_row("ticks", str(result.get("ticks", "-")))
    for side, units in sorted((result.get("survivors") or {}).items()):
        left = ", ".join(f"{count} {unit}" for unit, count in units.items())
        table.add_row(f"survivors {side}", left or "none")
    console.print(table)


def _show_tally(console: Console, tally: dict, title: str) -> None:
    table = Table(title=title)
    for column in ("outcome", "wins", "P(win)", "95 % CI", "survivors (mean ± sd)"):
        table.add_column(column, justify="left" if column == "outcome" else "right")
    for side, stats in sorted((tally.get("sides") or {}).items()):
        table.add_row(
            side,
            str(stats.get("wins", 0)),
            _p(stats.get("win_probability", 0)),
            _ci(stats.get("win_ci95")),
            _mean_std(stats.get("survivors_total")),
        )
    table.add_row(
        "draw", str(tally.get("draws", 0)), _p(tally.get("draw_probability", 0)), _ci(tally.get("draw_ci95")), ""
    )
    ticks = tally.get("ticks") or {}
    table.caption = (
        f"{tally.get('completed', 0)} completed, {tally.get('failed_count', 0)} failed; "
        f"ticks {_mean_std(ticks)} (min {ticks.get('min', '-')}, max {ticks.get('max', '-')})"
    )
    console.print(table)


def _show_compare(console: Console, result: dict) -> None:
    base, var = result.get("baseline") or {}, result.get("variant") or {}
    diff = result.get("difference") or {}
    table = Table(title=f"compare: {result.get('iterations', '?')} iterations each")
    for column in ("outcome", "baseline P", "variant P", "difference", "95 % CI"):
        table.add_column(column, justify="left" if column == "outcome" else "right")
    for side in sorted((diff.get("sides") or {}).keys()):
        d = diff["sides"][side]
        table.add_row(
            f"{side} wins",
            _p((base.get("sides") or {}).get(side, {}).get("win_probability", 0)),
            _p((var.get("sides") or {}).get(side, {}).get("win_probability", 0)),
            f"{d.get('win_probability', 0):+.3f}",
            _ci(d.get("ci95")),
        )
    table.add_row(
        "draw",
        _p(base.get("draw_probability", 0)),
        _p(var.get("draw_probability", 0)),
        f"{diff.get('draw_probability', 0):+.3f}",
        _ci(diff.get("draw_ci95")),
    )
    table.caption = "difference = variant - baseline"
    console.print(table)


def _show_sweep(console: Console, result: dict) -> None:
    rows = result.get("rows") or []
    sides = sorted({side for row in rows for side in (row.get("sides") or {})})
    table = Table(
        title=f"sweep of {result.get('parameter', '?')}: {result.get('iterations', '?')} iterations per value"
    )
    table.add_column("value", justify="right")
    table.add_column("completed", justify="right")
    for side in sides:
        table.add_column(f"P({side} wins)", justify="right")
    table.add_column("P(draw)", justify="right")
    table.add_column("ticks (mean)", justify="right")
    for row in rows:
        value = json.dumps(row.get("value"))
        if row.get("error"):
            table.add_row(value, "0", *(["-"] * len(sides)), "-", f"[red]{row['error']}[/]")
            continue
        probabilities = [_p(((row.get("sides") or {}).get(side) or {}).get("win_probability", 0)) for side in sides]
        mean_ticks = (row.get("ticks") or {}).get("mean", 0)
        table.add_row(
            value, str(row.get("completed", 0)), *probabilities, _p(row.get("draw_probability", 0)), f"{mean_ticks:.1f}"
        )
    console.print(table)


# ------------------------------------------------------------ lists


def runs_table(runs: Iterable[pb.Run]) -> Table:
    table = Table()
    for column in ("run", "kind", "state", "progress", "created", "took", "replica", "labels"):
        table.add_column(column, no_wrap=column in ("run", "created"))
    for run in runs:
        took = duration_s(run)
        table.add_row(
            run.run_id,
            run.kind or specs.kind_of(run.spec),
            styled_state(run.state),
            _fraction(run.progress),
            when(run.create_time),
            f"{took:.2f} s" if took is not None else "-",
            run.replica or "-",
            ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items())),
        )
    return table


def scenarios_table(scenarios: Iterable[pb.Scenario]) -> Table:
    table = Table()
    for column in ("name", "description", "sides"):
        table.add_column(column)
    for scenario in scenarios:
        sides = "; ".join(
            f"{side.name}: " + ", ".join(f"{unit.count} {unit.unit_type}" for unit in side.units)
            for side in scenario.sides
        )
        description = scenario.description if not scenario.error else f"[red]unavailable: {scenario.error}[/]"
        table.add_row(scenario.name, description, sides)
    return table


def show_summary(console: Console, summary: pb.Summary) -> None:
    cache = pb.CacheStatus.Name(summary.cache) if summary.cache in pb.CacheStatus.values() else str(summary.cache)
    console.print(f"summary at {when(summary.generated_time)} (cache: {cache.removeprefix('CACHE_').lower()})")
    counts = Table(title="runs by state")
    counts.add_column("state")
    counts.add_column("runs", justify="right")
    for item in summary.counts:
        counts.add_row(styled_state(item.state), str(item.count))
    console.print(counts)
    if summary.recent_runs:
        table = runs_table(summary.recent_runs)
        table.title = "recent runs"
        console.print(table)


def show_admin_status(console: Console, status: pb.AdminStatus) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    w, d = status.workers, status.watchdog
    table.add_row("workers", f"{w.alive}/{w.size} alive, {w.busy} busy, {w.restarts_total} restarts")
    table.add_row("queue", f"{status.queued} queued, {status.running} running")
    policy = pb.PolicyState.Name(d.policy_state) if d.policy_state in pb.PolicyState.values() else str(d.policy_state)
    cooldown = d.cooldown_remaining.ToNanoseconds() / 1e9
    table.add_row(
        "churn policy",
        f"{policy.lower()} ({d.restarts_in_window} restarts in {d.window.ToNanoseconds() / 1e9:.0f} s; "
        f"cooldown at {d.cooldown_threshold}, block at {d.block_threshold}"
        + (f"; {cooldown:.1f} s of cooldown left" if cooldown > 0 else "")
        + ")",
    )
    if d.recommended_action:
        table.add_row("next action", d.recommended_action)
    if status.HasField("resilience"):
        r = status.resilience
        table.add_row("recommendation", r.recommendation + (f" ({'; '.join(r.reasons)})" if r.reasons else ""))
    console.print(table)
