"""The liveness watchdog: a stall is time with requests waiting and none finishing."""

from __future__ import annotations

import pytest

from messaging_service.core.watchdog import Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_nothing_waiting_is_never_a_stall() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock=clock)
    clock.now += 3600
    assert watchdog.stalled(waiting=False) == 0
    assert watchdog.alive(waiting=False)


def test_waiting_without_progress_fails_once_the_timeout_passes() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock=clock)
    watchdog.stalled(waiting=False)
    clock.now += 9.5
    assert watchdog.stalled(waiting=True) == 9.5
    assert watchdog.alive(waiting=True)
    clock.now += 0.5
    assert not watchdog.alive(waiting=True)


def test_progress_starts_the_stall_clock_again() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock=clock)
    clock.now += 8
    watchdog.progress()
    clock.now += 8
    assert watchdog.stalled(waiting=True) == 8
    assert watchdog.alive(waiting=True)


def test_work_arriving_after_a_quiet_spell_is_measured_from_its_arrival() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock=clock)
    clock.now += 3600  # idle: the last request finished an hour ago
    watchdog.stalled(waiting=False)  # what the pipeline reports just before admitting work
    clock.now += 1
    assert watchdog.stalled(waiting=True) == 1


def test_an_open_circuit_excuses_the_pause_and_the_clock_restarts_after_it() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock=clock)
    clock.now += 5
    assert watchdog.stalled(waiting=True) == 5
    clock.now += 120
    assert watchdog.alive(waiting=True, excused=True)
    assert watchdog.stalled(waiting=True, excused=True) == 0
    clock.now += 3
    assert watchdog.stalled(waiting=True) == 3


def test_timeout_zero_measures_but_never_fails() -> None:
    clock = Clock()
    watchdog = Watchdog(0, clock=clock)
    watchdog.stalled(waiting=False)
    clock.now += 10_000
    assert watchdog.alive(waiting=True)
    assert watchdog.stalled(waiting=True) == 10_000


def test_a_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Watchdog(-1)
