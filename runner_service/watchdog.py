"""Worker churn: counts unexpected worker restarts in a sliding window and derives
a policy (pure logic; the clock is injected).

- ``allowed``: churn is low; crashed workers are replaced at once.
- ``cooling_down``: `cooldown_threshold` restarts in the window; replacements wait
  until `cooldown_s` after the last restart.
- ``blocked``: `block_threshold` restarts in the window; replacements still wait the
  cooldown, and an operator restart of the pool needs an explicit override.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

ALLOWED = "allowed"
COOLING_DOWN = "cooling_down"
BLOCKED = "blocked"


@dataclasses.dataclass(frozen=True)
class Policy:
    state: str
    restarts_in_window: int
    cooldown_remaining_s: float
    recommended_action: str


class Watchdog:
    def __init__(
        self,
        window_s: float = 60.0,
        cooldown_threshold: int = 3,
        block_threshold: int = 6,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < cooldown_threshold <= block_threshold:
            raise ValueError("need 0 < cooldown_threshold <= block_threshold")
        self.window_s = window_s
        self.cooldown_threshold = cooldown_threshold
        self.block_threshold = block_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._restarts: collections.deque[float] = collections.deque()
        self.restarts_total = 0

    def record_restart(self) -> None:
        """A worker died unexpectedly (exit, signal, out of memory) and is replaced."""
        self._restarts.append(self._clock())
        self.restarts_total += 1

    def _trim(self, now: float) -> None:
        while self._restarts and now - self._restarts[0] > self.window_s:
            self._restarts.popleft()

    def policy(self) -> Policy:
        now = self._clock()
        self._trim(now)
        count = len(self._restarts)
        remaining = 0.0
        if count >= self.cooldown_threshold:
            remaining = max(0.0, self.cooldown_s - (now - self._restarts[-1]))
        if count >= self.block_threshold:
            return Policy(
                BLOCKED,
                count,
                remaining,
                "recover: workers keep crashing; find the failing job kind, then restart workers "
                "with acknowledge_override",
            )
        if count >= self.cooldown_threshold and remaining > 0:
            return Policy(
                COOLING_DOWN,
                count,
                remaining,
                f"throttle: replacements are delayed; wait {remaining:.1f} s and watch the churn",
            )
        return Policy(ALLOWED, count, 0.0, "observe: no action needed")

    def respawn_delay_s(self) -> float:
        """How long to wait before replacing a crashed worker."""
        policy = self.policy()
        return policy.cooldown_remaining_s if policy.state != ALLOWED else 0.0
