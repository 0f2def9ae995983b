"""The relay circuit breaker: alone, in the handler, and in the pipeline with fakes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from messaging_service.core.circuit import CircuitBreaker, CircuitState
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.throttle import AdaptiveRate
from messaging_service.core.values import InboundRecord, Outcome, OutgoingEmail, SendReport
from messaging_service.errors import SmtpTransientError, SmtpUnavailableError
from messaging_service.service.delivery import Delivery, Finished, Parked, RetryIn
from messaging_service.service.health import Health
from messaging_service.service.ratelimit import SendRateLimiter
from messaging_service.service.relay import Relay as RelayState
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeSender, record
from support.handler import make_handler
from support.pipeline import TP, running


def request(offset: int) -> InboundRecord:
    payload = {"id": f"r-{offset}", "to": "a@example.com", "subject": "s", "text": "t"}
    return record(json.dumps(payload).encode(), offset=offset)


def test_opens_after_threshold_failures_in_a_row_and_tells_listeners() -> None:
    circuit = CircuitBreaker(threshold=3)
    seen: list[CircuitState] = []
    circuit.subscribe(seen.append)
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()  # the relay answered: the count starts again
    circuit.record_failure()
    circuit.record_failure()
    assert not is_open(circuit)
    circuit.record_failure()
    assert is_open(circuit)
    assert seen == [CircuitState.OPEN]
    circuit.record_failure()  # failures while open change nothing
    circuit.record_success()  # nor does a late success: only a probe closes it
    assert circuit.is_open
    circuit.close()
    assert circuit.state is CircuitState.CLOSED
    assert seen == [CircuitState.OPEN, CircuitState.CLOSED]
    assert circuit.opened_count == 1
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=0)


def is_open(circuit: CircuitBreaker) -> bool:
    """Read afresh: mypy would keep ``circuit.is_open`` narrowed across the calls between."""
    return circuit.is_open


class Harness:
    def __init__(self, sender: FakeSender, *, threshold: int = 2, rate: float | None = None):
        self.sender = sender
        self.dead_letters = FakeDeadLetters()
        self.registry = CollectorRegistry()
        self.circuit = CircuitBreaker(threshold=threshold)
        self.relay = RelayState(self.circuit)
        self.health = Health(relay=self.relay)
        self.limiter = SendRateLimiter(AdaptiveRate(rate))
        self.handler = make_handler(
            renderer=TemplateRenderer(),
            builder=MessageBuilder("shop@example.com"),
            sender=sender,
            dead_letters=self.dead_letters,
            policy=RetryPolicy(max_retries=3, delays=(1, 5, 10)),
            metrics=Metrics(self.registry),
            health=self.health,
            relay=self.relay,
            limiter=self.limiter,
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels or None) or 0.0


async def test_an_outage_parks_requests_without_spending_their_attempts() -> None:
    down = SmtpUnavailableError("SMTP relay unreachable: connection refused")
    harness = Harness(FakeSender(down, down), threshold=2)
    first, second = Delivery(request(0)), Delivery(request(1))

    assert await harness.handler.process(first) == RetryIn(1)  # one failure: a normal retry
    assert first.attempts == 1
    assert await harness.handler.process(second) == Parked()  # the second opens the circuit
    assert second.attempts == 0
    assert harness.circuit.is_open
    assert not harness.relay.reachable

    assert await harness.handler.process(first) == Parked()  # open: the relay is not tried
    assert harness.sender.attempts == 2

    harness.circuit.close()  # a probe answered
    assert await harness.handler.process(first) == Finished(Outcome.SENT)
    assert await harness.handler.process(second) == Finished(Outcome.SENT)
    assert (first.attempts, second.attempts) == (2, 1)
    assert harness.dead_letters.published == []
    assert harness.metric("email_send_errors_total", kind="unavailable") == 2


async def test_a_reply_from_the_relay_is_not_an_outage() -> None:
    busy = SmtpTransientError("451 try later", code=451)
    harness = Harness(FakeSender(busy, busy, busy), threshold=2)
    steps = [await harness.handler.process(Delivery(request(n))) for n in range(3)]
    assert all(isinstance(step, RetryIn) for step in steps)
    assert not harness.circuit.is_open


async def test_throttling_replies_cut_the_send_rate_once_they_are_push_back() -> None:
    slow_down = SmtpTransientError("421 slow down", code=421)
    # Push-back needs enough attempts to mean something (20), a real share of them deferred.
    harness = Harness(FakeSender(*[slow_down] * 20), rate=100)
    for n in range(19):
        assert await harness.handler.process(Delivery(request(n))) == RetryIn(1)
    assert harness.limiter.allowed() == 100
    assert await harness.handler.process(Delivery(request(19))) == RetryIn(1)
    assert harness.metric("email_throttled_total") == 20
    assert harness.limiter.allowed() == pytest.approx(50, abs=1)  # recovering from 50


async def test_a_stray_deferral_among_many_sends_does_not_slow_the_service() -> None:
    script = [SendReport()] * 30 + [SmtpTransientError("451 greylisted", code=451)]
    harness = Harness(FakeSender(*script), rate=100)
    for n in range(31):
        await harness.handler.process(Delivery(request(n)))
    assert harness.metric("email_throttled_total") == 1
    assert harness.limiter.allowed() == 100


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the fakes offer no event for these states
        await asyncio.sleep(0.01)


class DownRelay:
    """A sender whose relay is down until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[OutgoingEmail] = []
        self.tries = 0

    async def send(self, email: OutgoingEmail) -> SendReport:
        self.tries += 1
        await asyncio.sleep(0)
        if not self.up:
            raise SmtpUnavailableError("SMTP relay unreachable: connection refused")
        self.sent.append(email)
        return SendReport()


async def test_pipeline_pauses_during_an_outage_and_sends_everything_after_it() -> None:
    relay = DownRelay()
    circuit = CircuitBreaker(threshold=3)
    records = [request(n) for n in range(30)]
    async with running(relay, records, buffer=4, retry_delay=0.01, circuit=circuit) as run:
        source = run.source
        async with asyncio.timeout(20):
            await wait_until(lambda: circuit.is_open and run.relay.parked > 0 and source.paused)
            tries = relay.tries
            for _ in range(20):  # open: nothing reaches the relay, nothing is admitted
                await asyncio.sleep(0.01)
            assert relay.tries == tries
            assert source.pending  # the rest of the batch waits in Kafka
            relay.up = True
            circuit.close()
            await wait_until(lambda: len(relay.sent) == 30 and source.committed.get(TP) == 30)
    assert run.dead_letters.published == []
    assert len({email.message for email in relay.sent}) == 30


class _FlakyProbe:
    """A sender whose first probe fails with an error nobody translated (a bug)."""

    def __init__(self) -> None:
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if self.probes == 1:
            raise RuntimeError("a bug in the probe")


async def test_prober_survives_an_unexpected_error_and_still_closes_the_circuit() -> None:
    """The prober is the only thing that closes the circuit: if it died, the service would
    hold its parked requests and stay paused for good, and the watchdog excuses that."""
    circuit = CircuitBreaker(threshold=1)
    circuit.record_failure()
    closed = asyncio.Event()
    circuit.subscribe(lambda state: closed.set() if state is CircuitState.CLOSED else None)
    relay = RelayState(circuit)
    sender = _FlakyProbe()
    task = asyncio.create_task(relay.watch(sender.probe, interval=0.01))
    waiter = asyncio.create_task(closed.wait())
    try:
        await asyncio.wait([task, waiter], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task.exception()
        assert not circuit.is_open
        assert relay.reachable
    finally:
        for pending in (task, waiter):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await pending


async def test_prober_survives_a_listener_that_raises_when_the_circuit_closes() -> None:
    """Defect: an exception after a successful probe (closing the circuit notifies listeners)
    ended the prober; the circuit then never closed again and /healthz stayed 200."""
    circuit = CircuitBreaker(threshold=1)
    relay = RelayState(circuit)
    relay.on_release(lambda job: None)
    calls = 0

    def flaky_listener(state: CircuitState) -> None:
        nonlocal calls
        if state is CircuitState.CLOSED:
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in a listener")

    relay.subscribe(flaky_listener)
    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1

    circuit.record_failure()
    task = asyncio.create_task(relay.watch(probe, interval=0.01))
    try:
        async with asyncio.timeout(30):
            await wait_until(lambda: calls == 1)
            circuit.record_success()
            relay.unreachable()  # a second outage: only a live prober can end it
            assert circuit.is_open
            await wait_until(lambda: not circuit.is_open)
        assert not task.done()
        assert calls == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
