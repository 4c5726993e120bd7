"""Following one run to its end on the terminal, and what Ctrl-C does meanwhile.

`runner run` owns the run it started: the first Ctrl-C asks the runner to cancel
it and keeps following until the run ends (CANCELLED, exit 3); a second Ctrl-C
detaches: the command exits 130 and the run goes on in whatever state it has
(its cancellation, once asked for, still happens). `runner watch` does not own
the run: its first Ctrl-C detaches at once.
"""

from __future__ import annotations

import asyncio
import signal

from protos.runner.v1 import runner_pb2 as pb
from runner_client import AsyncRunnerClient, RunnerError
from runner_client.cli import exits
from runner_client.cli.display import RunView, show_outcome
from runner_client.events import TERMINAL_STATES, state_name


class Follower:
    """Watches one run with the client, shows it in `view`, and maps the end to an
    exit code. The SIGINT handler records why (cancel, then detach) before it acts;
    `run()` is the one place that turns the watch's end into an exit code."""

    def __init__(
        self,
        client: AsyncRunnerClient,
        view: RunView,
        run_id: str,
        *,
        after_seq: int = 0,
        owns_run: bool,
    ) -> None:
        self.client = client
        self.view = view
        self.run_id = run_id
        self.after_seq = after_seq
        self.owns_run = owns_run
        self.interrupts = 0
        self.detached = False
        self.final_state: int | None = None
        self._watch: asyncio.Task | None = None
        self._cancel: asyncio.Task | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._watch = asyncio.create_task(self._follow(), name=f"watch-{self.run_id}")
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        try:
            await self._watch
        except asyncio.CancelledError:
            if not self.detached:
                raise
            return exits.DETACHED
        except RunnerError as exc:
            self.view.end()
            self.view.note(f"[red]error:[/] {exc}")
            return exits.for_error(exc)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            self.view.end()
            if self._cancel is not None and not self._cancel.done():
                self._cancel.cancel()
        assert self.final_state is not None
        if not self.view.json_output:
            await self._show_outcome()
        return exits.for_state(self.final_state)

    async def _follow(self) -> None:
        async for event in self.client.watch_run(self.run_id, after_seq=self.after_seq):
            self.view.event(event)
            if event.WhichOneof("event") == "state_change":
                self.final_state = event.state_change.state
        # watch_run returns only after the terminal event.

    async def _show_outcome(self) -> None:
        try:
            run = await self.client.get_run(self.run_id)
        except RunnerError as exc:
            self.view.note(f"run {self.run_id} {state_name(self.final_state or 0)} (could not read it back: {exc})")
            return
        show_outcome(self.view.console, run)

    def _on_interrupt(self) -> None:
        self.interrupts += 1
        if self.owns_run and self.interrupts == 1:
            self.view.note(f"[yellow]cancelling run {self.run_id}[/] (Ctrl-C again to detach)")
            self._cancel = asyncio.get_running_loop().create_task(self._request_cancel(), name="cancel-run")
            return
        self.detached = True  # why, before the watch is stopped
        state = state_name(self.view.state) if self.view.state else "its current state"
        self.view.note(f"detached: run {self.run_id} keeps {state}; follow it with `runner watch {self.run_id}`")
        if self._watch is not None:
            self._watch.cancel()

    async def _request_cancel(self) -> None:
        try:
            run = await self.client.cancel_run(self.run_id, reason="Ctrl-C in runner run")
        except RunnerError as exc:
            self.view.note(f"[red]could not cancel:[/] {exc} (Ctrl-C again to detach)")
            return
        if run.state in (pb.QUEUED, pb.RUNNING) and self.final_state not in TERMINAL_STATES:
            self.view.note("cancel requested; waiting for the run to stop")
