"""`runner`: the command line of the runner, on runner_client.

    runner run diagnostic --ticks 100 --tick-ms 20      # submit, follow live, print the result
    runner run batch --scenario duel --iterations 500
    runner submit simulation --scenario duel --seed 1    # print the run and return
    runner watch RUN_ID | cancel RUN_ID | get RUN_ID | list --state FAILED
    runner scenarios | summary | admin status | admin restart

Exit codes: see runner_client.cli.exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console

from protos.runner.v1 import runner_pb2 as pb
from runner_client import AsyncRunnerClient, RetryNotice, RetryPolicy, RunnerClient, RunnerError, TlsFiles, specs
from runner_client.cli import display, exits, flags
from runner_client.cli.follow import Follower
from runner_client.connection import DEFAULT_TARGET, TARGET_ENV

STATE_NAMES = [name for name in pb.RunState.keys() if name != "RUN_STATE_UNSPECIFIED"]  # noqa: SIM118 - an enum wrapper, not a dict


@dataclasses.dataclass
class Cli:
    """The connection flags every command takes, and the consoles."""

    target: str
    rpc_timeout_s: float
    max_attempts: int
    tls: TlsFiles | None
    json_output: bool
    admin_token: str | None = None
    console: Console = dataclasses.field(default_factory=Console)
    err: Console = dataclasses.field(default_factory=lambda: Console(stderr=True))
    retry_note: Callable[[RetryNotice], None] | None = None

    def _on_retry(self, notice: RetryNotice) -> None:
        if self.retry_note is not None:
            self.retry_note(notice)

    def _kwargs(self) -> dict[str, Any]:
        return dict(
            tls=self.tls,
            admin_token=self.admin_token,
            call_timeout_s=self.rpc_timeout_s,
            retry=RetryPolicy(max_attempts=self.max_attempts),
            on_retry=self._on_retry,
        )

    def client(self) -> RunnerClient:
        return RunnerClient(self.target, **self._kwargs())

    def async_client(self) -> AsyncRunnerClient:
        return AsyncRunnerClient(self.target, **self._kwargs())

    def print_json(self, message: Any) -> None:
        sys.stdout.write(display.json_line(message) + "\n")
        sys.stdout.flush()

    def fail(self, error: RunnerError) -> NoReturn:
        self.err.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(exits.for_error(error))


def _retry_note(console: Console) -> Callable[[RetryNotice], None]:
    def note(notice: RetryNotice) -> None:
        what = "resuming the watch" if notice.resuming else f"retrying {notice.method}"
        reason = notice.error.reason or notice.error.code.name
        console.print(
            f"[dim]{reason}: {what} in {notice.delay_s:.1f} s (attempt {notice.attempt} failed)[/]", highlight=False
        )

    return note


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--target, --rpc-timeout, --max-attempts, TLS and --json, gathered into `cli`."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        target: str,
        rpc_timeout: float,
        max_attempts: int,
        tls_ca: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        tls_server_name: str | None,
        json_output: bool,
        **kwargs: Any,
    ) -> Any:
        tls = None
        if tls_ca or tls_cert or tls_key or tls_server_name:
            try:
                tls = TlsFiles(tls_ca, tls_cert, tls_key, tls_server_name)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
        cli = Cli(target, rpc_timeout, max_attempts, tls, json_output)
        cli.retry_note = _retry_note(cli.err)
        try:
            return func(*args, cli=cli, **kwargs)
        except OSError as exc:  # a TLS file that cannot be read
            raise click.UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None

    options = [
        click.option(
            "--target",
            envvar=TARGET_ENV,
            default=DEFAULT_TARGET,
            show_default=True,
            help=f"The runner's gRPC address (any gRPC target; env {TARGET_ENV}).",
        ),
        click.option(
            "--rpc-timeout",
            type=click.FloatRange(min=0.001),
            default=10.0,
            show_default=True,
            help="Deadline of each call attempt, seconds.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=RetryPolicy().max_attempts,
            show_default=True,
            help="Attempts per call on retryable errors (UNAVAILABLE, QUEUE_FULL).",
        ),
        click.option("--tls-ca", type=click.Path(dir_okay=False), help="TLS: trust this CA (PEM)."),
        click.option("--tls-cert", type=click.Path(dir_okay=False), help="mTLS: client certificate (PEM)."),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="mTLS: client key (PEM)."),
        click.option("--tls-server-name", help="TLS: the name to check on the runner's certificate."),
        click.option(
            "--json", "json_output", is_flag=True, help="Machine-readable output: proto3 JSON, one message a line."
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def admin_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, admin_token: str | None, cli: Cli, **kwargs: Any) -> Any:
        cli.admin_token = admin_token
        return func(*args, cli=cli, **kwargs)

    return click.option(
        "--admin-token", envvar="RUNNER_ADMIN_TOKEN", help="Bearer token of the admin API (env RUNNER_ADMIN_TOKEN)."
    )(client_options(wrapper))


def spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The spec flags of `run` and `submit`, gathered into `request`."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        kind: str | None,
        spec_file: str | None,
        label: tuple[str, ...],
        request_id: str | None,
        timeout: float | None,
        run_attempts: int | None,
        **kwargs: Any,
    ) -> Any:
        names = {field.name for field in dataclasses.fields(flags.SpecFlags)}
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        try:
            spec = flags.spec_from(kind, flags.SpecFlags(**given), spec_file)
            request = specs.submit_request(
                spec,
                request_id=request_id,
                labels=flags.labels(label),
                run_timeout_s=timeout,
                max_attempts=run_attempts,
            )
        except flags.FlagError as exc:
            raise click.UsageError(str(exc)) from None
        return func(*args, request=request, **kwargs)

    options = [
        click.argument("kind", required=False),
        click.option(
            "--spec-file", help="The RunSpec as proto3 JSON ('-': standard input) instead of KIND and its flags."
        ),
        click.option("--scenario", help="simulation, batch, compare, sweep: the scenario (see `runner scenarios`)."),
        click.option("--max-ticks", type=int, help="Ticks before a battle is called off (default 1000)."),
        click.option("--seed", type=int, help="Seed of the run's generator (default 0)."),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="PATH=VALUE",
            help="A scenario parameter, e.g. sides.red.units.0.count=30 (repeatable).",
        ),
        click.option("--iterations", type=int, help="batch (default 100), compare, sweep (default 50): iterations."),
        click.option("--variant-scenario", help="compare: the variant's scenario (default: --scenario)."),
        click.option(
            "--variant-set",
            "variant_overrides",
            multiple=True,
            metavar="PATH=VALUE",
            help="compare: a parameter of the variant.",
        ),
        click.option("--parameter", help="sweep: the parameter's dotted path."),
        click.option("--values", help="sweep: the values, comma-separated or a JSON list."),
        click.option("--ticks", type=int, help="diagnostic: ticks (default 100)."),
        click.option("--tick-ms", type=float, help="diagnostic: milliseconds per tick (default 10)."),
        click.option("--cpu", is_flag=True, help="diagnostic: spin the CPU instead of sleeping."),
        click.option("--ignore-cancellation", is_flag=True, help="diagnostic: never look at the cancel flag."),
        click.option("--fail-at-tick", type=int, help="diagnostic: fail at this tick."),
        click.option("--log-every", type=int, help="diagnostic: a log line every N ticks."),
        click.option("--progress-every", type=int, help="diagnostic: progress every N ticks."),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help="A plugin kind's parameter (JSON value or text; repeatable).",
        ),
        click.option("--label", multiple=True, metavar="KEY=VALUE", help="A label of the run (repeatable)."),
        click.option("--request-id", help="Idempotency key (default: a new random one)."),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.001),
            help="The run's own deadline, seconds: past it the run ends DEADLINE_EXCEEDED.",
        ),
        click.option(
            "--run-attempts",
            type=click.IntRange(0, 5),
            help="Starts allowed if the run's replica is lost (0 or 1: no restart).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


# ------------------------------------------------------------ the group


class _Group(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C outside a followed run (e.g. while submitting)
            sys.exit(exits.DETACHED)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=exits.DESCRIPTION,
)
def main() -> None:
    """Submit, follow, cancel and list runs of the runner service."""


def _follow(cli: Cli, run_id: str, *, request: pb.SubmitRunRequest | None, after_seq: int = 0, owns_run: bool) -> int:
    async def go() -> int:
        async with cli.async_client() as client:
            if request is not None:
                try:
                    run = await client.submit_run(request)
                except RunnerError as exc:
                    cli.fail(exc)
                current = run.run_id
                kind = run.kind or specs.kind_of(run.spec)
            else:
                current, kind = run_id, ""
            view = display.RunView(cli.console, json_output=cli.json_output, err_console=cli.err)
            cli.retry_note = lambda notice: view.note(
                f"[dim]{notice.error.reason or notice.error.code.name}: "
                f"{'resuming' if notice.resuming else 'retrying'} in {notice.delay_s:.1f} s[/]"
            )
            view.begin(current, kind)
            return await Follower(client, view, current, after_seq=after_seq, owns_run=owns_run).run()

    return asyncio.run(go())


@main.command()
@spec_options
@client_options
def run(cli: Cli, request: pb.SubmitRunRequest) -> None:
    """Submit a run of KIND and follow it to its end with a live progress bar.

    KIND is simulation, batch, compare, sweep, diagnostic or a plugin's kind.
    Ctrl-C cancels the run and waits for it to stop; a second Ctrl-C detaches.
    The exit code tells how the run ended (see below)."""
    sys.exit(_follow(cli, "", request=request, owns_run=True))


@main.command()
@spec_options
@client_options
def submit(cli: Cli, request: pb.SubmitRunRequest) -> None:
    """Submit a run of KIND and print it (its id first) without waiting."""
    with cli.client() as client:
        try:
            run = client.submit_run(request)
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output:
        cli.print_json(run)
    else:
        cli.console.print(run.run_id, highlight=False)
        cli.err.print(f"submitted ({display.state_name(run.state)}); follow it with `runner watch {run.run_id}`")


@main.command()
@click.argument("run_id")
@click.option("--after-seq", type=click.IntRange(min=0), default=0, help="Only events after this seq.")
@client_options
def watch(cli: Cli, run_id: str, after_seq: int) -> None:
    """Follow a run to its end (resuming across lost connections). Ctrl-C only
    stops watching. The exit code tells how the run ended."""
    sys.exit(_follow(cli, run_id, request=None, after_seq=after_seq, owns_run=False))


@main.command()
@click.argument("run_id")
@click.option("--reason", default="", help="Why (kept with the run's events).")
@click.option("--wait", is_flag=True, help="Follow the run until it stops; the exit code tells its final state.")
@client_options
def cancel(cli: Cli, run_id: str, reason: str, wait: bool) -> None:
    """Ask for a run to be cancelled (idempotent)."""
    with cli.client() as client:
        try:
            run = client.cancel_run(run_id, reason=reason)
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output and not wait:
        cli.print_json(run)
    elif not cli.json_output:
        cli.console.print(
            f"run {run.run_id}: {display.styled_state(run.state)}"
            + (", cancel requested" if run.cancel_requested else "")
        )
    if wait:
        sys.exit(_follow(cli, run_id, request=None, owns_run=False))


@main.command()
@click.argument("run_id")
@client_options
def get(cli: Cli, run_id: str) -> None:
    """Show a run: state, progress, times, error and result."""
    with cli.client() as client:
        try:
            run = client.get_run(run_id)
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output:
        cli.print_json(run)
    else:
        display.show_run(cli.console, run)


@main.command(name="list")
@click.option("--state", type=click.Choice(STATE_NAMES, case_sensitive=False), help="Only runs in this state.")
@click.option("--kind", help="Only runs of this kind.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many runs (newest first)."
)
@click.option(
    "--page-size", type=click.IntRange(0, 500), default=0, help="Runs per call (default: --limit, at most 500)."
)
@client_options
def list_runs(cli: Cli, state: str | None, kind: str | None, limit: int, page_size: int) -> None:
    """List runs, newest first, page after page up to --limit."""
    state_value = pb.RunState.Value(state.upper()) if state else None
    with cli.client() as client:
        try:
            runs = []
            for item in client.list_runs(state=state_value, kind=kind, page_size=page_size, limit=limit):
                if cli.json_output:
                    cli.print_json(item)
                else:
                    runs.append(item)
        except RunnerError as exc:
            cli.fail(exc)
    if not cli.json_output:
        cli.console.print(display.runs_table(runs))


@main.command()
@client_options
def scenarios(cli: Cli) -> None:
    """List the scenarios the runner knows."""
    with cli.client() as client:
        try:
            found = client.list_scenarios()
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output:
        cli.print_json(pb.ListScenariosResponse(scenarios=found))
    else:
        cli.console.print(display.scenarios_table(found))


@main.command()
@click.option(
    "--recent", type=click.IntRange(0, 100), default=0, help="Recent runs to show (default: the runner's, 10)."
)
@client_options
def summary(cli: Cli, recent: int) -> None:
    """Runs by state and the recent runs."""
    with cli.client() as client:
        try:
            answer = client.get_summary(recent_limit=recent)
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output:
        cli.print_json(answer)
    else:
        display.show_summary(cli.console, answer)


@main.group()
def admin() -> None:
    """Operator commands (need the admin token)."""


@admin.command()
@admin_options
def status(cli: Cli) -> None:
    """Workers, churn policy, queue and the resilience recommendation."""
    with cli.client() as client:
        try:
            answer = client.get_status()
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output:
        cli.print_json(answer)
    else:
        display.show_admin_status(cli.console, answer)


@admin.command()
@click.option("--acknowledge-override", is_flag=True, help="Needed while the churn policy is blocked (audited).")
@click.option("--reason", default="", help="Why (written to the audit log).")
@admin_options
def restart(cli: Cli, acknowledge_override: bool, reason: str) -> None:
    """Restart the worker pool gracefully (running runs end INTERRUPTED after the grace)."""
    with cli.client() as client:
        try:
            answer = client.restart_workers(acknowledge_override=acknowledge_override, reason=reason)
        except RunnerError as exc:
            cli.fail(exc)
    if cli.json_output:
        cli.print_json(answer)
    else:
        cli.console.print("workers restarted" + (" (override used)" if answer.override_used else ""))
        display.show_admin_status(cli.console, answer.status)
