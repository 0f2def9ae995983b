"""The send-rate arithmetic (AIMD on an injected clock) and the limiter that applies it."""

from __future__ import annotations

import asyncio

import pytest

from messaging_service.ratelimit import SendRateLimiter
from messaging_service.throttle import (
    AdaptiveRate,
    AimdPolicy,
    PushBack,
    RateMeter,
    is_throttling,
)


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
    limiter = SendRateLimiter(AdaptiveRate(None))
    for _ in range(8):
        await limiter.acquire()
    assert limiter.allowed() is None
    assert limiter.throttled() is None  # one or two deferred messages are not push-back
    assert limiter.throttled() is None
    new_rate = limiter.throttled()
    assert new_rate is not None
    assert 1 <= new_rate < 5  # half of the 8 per second we were sending, recovering
    assert limiter.throttled() is None  # within the cooldown: no second cut


def test_push_back_needs_several_throttling_replies_making_up_a_real_share() -> None:
    clock = Clock()
    push_back = PushBack(min_share=0.25, min_count=3, clock=clock)
    for _ in range(100):
        push_back.attempt()
    # A relay deferring one message in ten (greylisting, a full mailbox) is not pushing back.
    assert not any(push_back.throttled() for _ in range(10))
    clock.now += 5
    for _ in range(8):
        push_back.attempt()
    assert [push_back.throttled() for _ in range(3)] == [False, False, True]
