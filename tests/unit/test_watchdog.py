import pytest

from runner_service.watchdog import ALLOWED, BLOCKED, COOLING_DOWN, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_policy_follows_churn_in_the_window():
    clock = Clock()
    dog = Watchdog(window_s=60, cooldown_threshold=2, block_threshold=4, cooldown_s=10, clock=clock)
    assert dog.policy().state == ALLOWED and dog.respawn_delay_s() == 0
    dog.record_restart()
    assert dog.policy().state == ALLOWED
    clock.now += 1
    dog.record_restart()
    policy = dog.policy()
    assert policy.state == COOLING_DOWN and policy.restarts_in_window == 2
    assert policy.cooldown_remaining_s == pytest.approx(10)
    clock.now += 4
    assert dog.respawn_delay_s() == pytest.approx(6)
    clock.now += 7  # cooldown over: allowed again though churn is still counted
    assert dog.policy().state == ALLOWED and dog.policy().restarts_in_window == 2
    dog.record_restart()
    dog.record_restart()
    assert dog.policy().state == BLOCKED and "acknowledge_override" in dog.policy().recommended_action
    clock.now += 61  # the window slides past every restart
    assert dog.policy().state == ALLOWED and dog.policy().restarts_in_window == 0
    assert dog.restarts_total == 4


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError):
        Watchdog(cooldown_threshold=5, block_threshold=2)
