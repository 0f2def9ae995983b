"""The send-rate arithmetic (AIMD on an injected clock) and the limiter that applies it."""

from __future__ import annotations

import asyncio

import pytest

from messaging_service.core.throttle import (
    AdaptiveRate,
    AimdPolicy,
    PushBack,
    RateMeter,
    is_throttling,
)
from messaging_service.service.ratelimit import SendRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttling_codes_are_the_ones_relays_use_to_push_back() -> None:
    assert all(is_throttling(code) for code in (421, 450, 451, 452, 454))
    assert not any(is_throttling(code) for code in (None, 400, 453, 550))


def test_no_ceiling_means_no_limit_until_the_relay_pushes_back() -> None:
    clock = Clock()
    rate = AdaptiveRate(None, clock=clock)
    assert rate.allowed() is None
    assert rate.on_throttle(observed=200)
    assert rate.allowed() == 100  # half of what was too much
    assert rate.throttled


def test_the_rate_climbs_back_linearly_then_the_limit_is_lifted() -> None:
    clock = Clock()
    rate = AdaptiveRate(None, policy=AimdPolicy(recovery=0.05), clock=clock)
    rate.on_throttle(observed=200)
    clock.now += 5  # 5 % of 200 per second
    assert rate.allowed() == pytest.approx(150)
    clock.now += 5
    assert rate.allowed() is None
    assert not rate.throttled


def test_a_ceiling_is_cut_and_regained_but_never_passed() -> None:
    clock = Clock()
    rate = AdaptiveRate(40, clock=clock)
    assert rate.allowed() == 40
    rate.on_throttle(observed=1000)  # what we measured does not matter under a ceiling
    assert rate.allowed() == 20
    clock.now += 100
    assert rate.allowed() == 40


def test_a_burst_of_throttling_replies_is_one_cut() -> None:
    clock = Clock()
    rate = AdaptiveRate(64, policy=AimdPolicy(cooldown=1.0), clock=clock)
    assert rate.on_throttle(observed=64)
    assert not rate.on_throttle(observed=64)
    assert rate.allowed() == 32
    clock.now += 1.0
    assert rate.on_throttle(observed=64)
    assert rate.allowed() == pytest.approx((32 + 64 * 0.05) / 2)
    assert rate.cuts == 2


def test_the_rate_never_falls_below_the_floor() -> None:
    clock = Clock()
    rate = AdaptiveRate(2, policy=AimdPolicy(floor=1.0, cooldown=0), clock=clock)
    for _ in range(10):
        rate.on_throttle(observed=2)
    assert rate.allowed() == 1.0


def test_policy_and_ceiling_are_validated() -> None:
    with pytest.raises(ValueError, match="decrease"):
        AimdPolicy(decrease=1.0)
    with pytest.raises(ValueError, match="recovery"):
        AimdPolicy(recovery=0)
    with pytest.raises(ValueError, match="ceiling"):
        AdaptiveRate(0)
    with pytest.raises(ValueError, match="min_attempts"):
        PushBack(min_count=5, min_attempts=4)
    with pytest.raises(ValueError, match="memory"):
        RateMeter(memory=0)


def test_rate_meter_reports_the_last_whole_second() -> None:
    clock = Clock()
    meter = RateMeter(clock)
    for _ in range(30):
        meter.mark()
    assert meter.rate() == 30  # the current second, before one is complete
    clock.now += 1
    for _ in range(10):
        meter.mark()
    assert meter.rate() == 30
    clock.now += 5  # idle seconds in between: nothing carried over
    assert meter.rate() == 0


async def test_limiter_makes_the_next_send_wait_once_the_burst_is_spent() -> None:
    limiter = SendRateLimiter(AdaptiveRate(1))
    await limiter.acquire()  # one second's worth of burst at 1 email/s
    waiting = asyncio.create_task(limiter.acquire())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()


async def test_limiter_without_a_limit_never_waits_and_cuts_from_the_measured_rate() -> None:
    clock = Clock()
    limiter = SendRateLimiter(AdaptiveRate(None, clock=clock), clock=clock)
    for _ in range(40):
        await limiter.acquire()
    assert limiter.allowed() is None
    assert limiter.throttled() is None  # one or two deferred messages are not push-back
    assert limiter.throttled() is None
    results = [limiter.throttled() for _ in range(8)]
    assert results[:7] == [None] * 7  # 10 of 40 is the first real share
    assert results[7] == 20  # half of the 40 per second we were sending
    assert limiter.throttled() is None  # within the cooldown: no second cut


def test_push_back_needs_several_throttling_replies_making_up_a_real_share() -> None:
    clock = Clock()
    push_back = PushBack(min_share=0.25, min_count=3, min_attempts=20, clock=clock)
    for _ in range(100):
        push_back.attempt()
    # A relay deferring one message in ten (greylisting, a full mailbox) is not pushing back.
    assert not any(push_back.throttled() for _ in range(10))
    clock.now += 60  # long after: those attempts are out of the window
    for _ in range(20):
        push_back.attempt()
    assert [push_back.throttled() for _ in range(5)] == [False] * 4 + [True]


def test_push_back_needs_enough_attempts_whatever_the_share() -> None:
    clock = Clock()
    push_back = PushBack(min_share=0.25, min_count=3, min_attempts=20, clock=clock)
    for _ in range(8):
        push_back.attempt()
    assert not any(push_back.throttled() for _ in range(3))  # 3 of 8: too few to mean anything
    for _ in range(12):
        push_back.attempt()
    assert [push_back.throttled(), push_back.throttled()] == [False, True]  # 4, then 5 of 20


def test_push_back_judges_the_last_seconds_that_hold_enough_attempts() -> None:
    clock = Clock()
    push_back = PushBack(min_share=0.25, min_count=3, min_attempts=20, window=30, clock=clock)
    for _ in range(10):  # a slow sender: 2 attempts a second, a quarter of them deferred
        for _ in range(2):
            push_back.attempt()
        clock.now += 1
    verdicts = [push_back.throttled() for _ in range(5)]
    assert verdicts == [False] * 4 + [True]  # 5 of the 20 attempts of the last 10 s
    clock.now += 30  # all of it now older than the window
    push_back.attempt()
    assert not any(push_back.throttled() for _ in range(3))


def test_rate_meter_peak_skips_idle_seconds() -> None:
    clock = Clock()
    meter = RateMeter(clock, memory=60)
    for _ in range(100):
        meter.mark()
    clock.now += 1
    for _ in range(50):
        meter.mark()
    clock.now += 1000  # a long outage: idle seconds do not push the busy ones out
    for _ in range(5):
        meter.mark()
    assert meter.rate() == 5
    assert meter.peak() == 100


# Issue 9, defect 6: the reported scenario. A replica sends 100/s, every twentieth recipient is
# a flaky one (a routine 451), the relay goes away for 15 s, and right after the circuit closes
# the first handful of attempts happen to include three of the flaky ones.

RATE = 100


async def send_steadily(
    limiter: SendRateLimiter, clock: Clock, *, seconds: int, rate: int = RATE
) -> list[float | None]:
    """``rate`` attempts in each of the next whole ``seconds``, every twentieth deferred.

    Returns what each throttling reply did to the rate (None: no cut).
    """
    cuts = []
    for _ in range(seconds):
        start = float(int(clock.now) + 1)
        for n in range(rate):
            clock.now = start + (n + 0.5) / rate
            await limiter.acquire()
            if n % 20 == 19:
                cuts.append(limiter.throttled())
    clock.now = float(int(clock.now) + 1)
    return cuts


async def before_and_during_an_outage(limiter: SendRateLimiter, clock: Clock) -> None:
    for _ in range(10):
        assert await send_steadily(limiter, clock, seconds=1) == [None] * (RATE // 20)
    clock.now += 15.6  # the relay is away and the circuit open: nothing is attempted


async def test_a_few_deferrals_among_the_first_attempts_after_an_outage_cut_nothing() -> None:
    clock = Clock()
    limiter = SendRateLimiter(AdaptiveRate(None, clock=clock), clock=clock)
    await before_and_during_an_outage(limiter, clock)
    for _ in range(8):  # the first handful of attempts after the circuit closed...
        await limiter.acquire()
        clock.now += 0.01
    # ...three of which were flaky recipients: a routine 451 each, not push-back.
    assert [limiter.throttled() for _ in range(3)] == [None, None, None]
    assert limiter.allowed() is None
    # The backlog then goes at full speed, one in twenty deferred as always: still no cut.
    assert await send_steadily(limiter, clock, seconds=5, rate=3 * RATE) == [None] * 75
    assert limiter.allowed() is None


async def test_push_back_right_after_an_outage_recovers_to_the_rate_sent_before_it() -> None:
    clock = Clock()
    rate = AdaptiveRate(None, clock=clock)
    limiter = SendRateLimiter(rate, clock=clock)
    await before_and_during_an_outage(limiter, clock)
    for _ in range(24):  # a quiet start, and the relay really does defer most of it
        await limiter.acquire()
        clock.now += 0.01
    cuts = [limiter.throttled() for _ in range(12)]
    assert [cut for cut in cuts if cut is not None] == [12.0]  # half of the 24 of this second
    clock.now += 10
    # Still climbing, by 5 % of the rate of before the outage a second, not of this quiet one.
    assert limiter.allowed() == pytest.approx(12 + RATE * 0.05 * 10)
    assert rate.target == RATE
    clock.now += 10
    assert limiter.allowed() is None  # back to 100/s, and only then the limit is lifted


def test_without_a_ceiling_recovery_climbs_to_the_recent_peak_or_the_rate_now() -> None:
    clock = Clock()
    rate = AdaptiveRate(None, clock=clock)
    assert rate.on_throttle(observed=40, peak=100)
    assert rate.allowed() == 20
    assert rate.target == 100
    other = AdaptiveRate(None, clock=clock)
    assert other.on_throttle(observed=200, peak=100)
    assert other.target == 200
