"""The diagnostic job: a synthetic workload for operators and benchmarks."""

from __future__ import annotations

import time


class DiagnosticFailure(Exception):
    """The failure a diagnostic run was asked to produce."""


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(params: dict, ctx) -> dict:
    ticks = int(params.get("ticks", 0))
    tick_s = float(params.get("tick_duration", 0.0))
    cpu = params.get("mode") == "CPU"
    cooperative = not params.get("ignore_cancellation", False)
    fail_at = int(params.get("fail_at_tick", 0))
    log_every = int(params.get("log_every", 0))
    progress_every = int(params.get("progress_every", 0)) or 1
    started = time.perf_counter()
    for tick in range(1, ticks + 1):
        if cooperative:
            ctx.check_cancelled()
        if tick_s > 0:
            if cpu:
                _spin(tick_s)
            elif cooperative:
                ctx.sleep(tick_s)
            else:
                time.sleep(tick_s)
        if tick == fail_at:
            raise DiagnosticFailure(f"failed at tick {tick} as requested")
        if log_every and tick % log_every == 0:
            ctx.log(f"tick {tick}")
        if tick % progress_every == 0 or tick == ticks:
            ctx.progress(tick, ticks, f"tick {tick}/{ticks}")
    return {"ticks": ticks, "elapsed_s": round(time.perf_counter() - started, 6)}
