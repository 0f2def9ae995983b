"""The admission loop with fakes: commits never pass unfinished work, backpressure, draining."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Callable

from messaging_service.core.events import EventType
from messaging_service.core.offsetmap import OffsetMap, decode
from messaging_service.core.values import InboundRecord, OutgoingEmail, SendReport
from messaging_service.core.watchdog import Watchdog
from messaging_service.errors import SmtpTransientError
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeEvents, record
from support.pipeline import TP, running
from support.samples import sample_sum


def request(offset: int) -> InboundRecord:
    payload = {"id": f"r-{offset}", "to": "a@example.com", "subject": "s", "text": "t"}
    return record(json.dumps(payload).encode(), offset=offset)


def email_id(email: OutgoingEmail) -> str:
    for line in email.message.split(b"\r\n"):
        if line.startswith(b"X-Email-Id: "):
            return line.removeprefix(b"X-Email-Id: ").decode()
    raise AssertionError("no X-Email-Id header")


class ScriptedSender:
    """Sends succeed unless gated (held until released) or scripted to fail once."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.fail_once: set[str] = set()
        self.sent: list[str] = []
        self.running = 0
        self.peak = 0
        self.sent_event = asyncio.Event()

    def gate(self, id_: str) -> asyncio.Event:
        self.gates[id_] = asyncio.Event()
        return self.gates[id_]

    async def send(self, email: OutgoingEmail) -> SendReport:
        id_ = email_id(email)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if id_ in self.gates:
                await self.gates[id_].wait()
            else:
                await asyncio.sleep(0)
            if id_ in self.fail_once:
                self.fail_once.discard(id_)
                raise SmtpTransientError("451 try later", code=451)
        finally:
            self.running -= 1
        self.sent.append(id_)
        self.sent_event.set()
        return SendReport()

    async def wait_sent(self, predicate: Callable[[list[str]], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate(self.sent):
                self.sent_event.clear()
                await self.sent_event.wait()


async def test_every_request_is_sent_and_committed() -> None:
    sender = ScriptedSender()
    async with running(sender, [request(i) for i in range(50)]) as run:
        await sender.wait_sent(lambda sent: len(sent) == 50)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 50
    assert sorted(sender.sent) == sorted(f"r-{i}" for i in range(50))


async def test_commit_never_passes_an_unfinished_request() -> None:
    sender = ScriptedSender()
    release = sender.gate("r-3")
    async with running(sender, [request(i) for i in range(20)]) as run:
        await sender.wait_sent(lambda sent: len(sent) == 19)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 3
        assert run.tracker.pending == 1
        release.set()
        await sender.wait_sent(lambda sent: len(sent) == 20)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 20
    # FakeSource.commit also fails the test if a commit ever goes backwards.


async def test_a_request_waiting_for_its_retry_holds_no_worker() -> None:
    sender = ScriptedSender()
    sender.fail_once.add("r-0")
    async with running(
        sender, [request(i) for i in range(30)], workers=1, retry_delay=3600, shutdown_timeout=0.1
    ) as run:
        # One worker: the others can only be sent if r-0's hour-long wait does not hold it.
        await sender.wait_sent(lambda sent: len(sent) == 29)
        assert "r-0" not in sender.sent
        await run.pipeline.commit()
        assert run.source.committed.get(TP, 0) == 0
        assert run.tracker.pending == 1


async def test_backpressure_pauses_the_source_and_bounds_in_flight_requests() -> None:
    sender = ScriptedSender()
    releases = [sender.gate(f"r-{i}") for i in range(40)]
    async with running(
        sender, [request(i) for i in range(40)], workers=2, buffer=2, max_in_flight=6
    ) as run:
        async with asyncio.timeout(10):
            await run.source.was_paused.wait()
        assert run.tracker.pending <= 6
        assert sender.peak <= 2
        for release in releases:
            release.set()
        await sender.wait_sent(lambda sent: len(sent) == 40)
    assert sender.peak == 2


async def test_stop_drains_in_flight_requests_then_commits() -> None:
    sender = ScriptedSender()
    release = sender.gate("r-5")
    async with running(sender, [request(i) for i in range(10)]) as run:
        await sender.wait_sent(lambda sent: len(sent) == 9)
        run.stop.set()
        await asyncio.sleep(0.05)
        assert not run.task.done(), "stop must wait for the in-flight request"
        release.set()
        async with asyncio.timeout(10):
            await run.task
        assert run.source.committed[TP] == 10


async def test_drain_gives_up_after_the_timeout_without_committing_past_unfinished() -> None:
    sender = ScriptedSender()
    sender.gate("r-2")  # never released
    async with running(sender, [request(i) for i in range(6)], shutdown_timeout=0.2) as run:
        await sender.wait_sent(lambda sent: len(sent) == 5)
        run.stop.set()
        async with asyncio.timeout(10):
            await run.task
        assert run.source.committed[TP] == 2


async def test_a_request_of_a_revoked_partition_is_not_retried_here() -> None:
    """After revocation the new owner reads the request again; retrying it here would duplicate."""
    sender = ScriptedSender()
    sender.fail_once.add("r-0")
    async with running(sender, [request(i) for i in range(5)], retry_delay=0.05) as run:
        await sender.wait_sent(lambda sent: len(sent) == 4)
        await run.pipeline.on_revoked([TP])
        # Five first attempts, then the retry of r-0 once its delay is over.
        await wait_until(lambda: run.pool.stats().completed == 6)
    assert "r-0" not in sender.sent
    assert run.source.committed.get(TP, 0) == 0


async def wait_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the pool offers no event for its counters
            await asyncio.sleep(0.01)


async def test_after_pausing_the_loop_fetches_again_only_when_a_batch_fits() -> None:
    """Hysteresis: no pause/resume churn for every request a worker picks up."""
    sender = ScriptedSender()
    releases = [sender.gate(f"r-{i}") for i in range(30)]
    async with running(
        sender, [request(i) for i in range(30)], workers=1, buffer=8, refill=4
    ) as run:
        async with asyncio.timeout(10):
            await run.source.was_paused.wait()
        # One at a time, so room frees up one slot after another.
        for count, release in enumerate(releases, start=1):
            release.set()
            await sender.wait_sent(functools.partial(has_length, count))
    fetches = run.source.fetches
    # The first fetch after each pause must have room for a whole refill batch.
    resumed = [
        size
        for (was_paused, _), (paused, size) in itertools.pairwise(fetches)
        if was_paused and not paused
    ]
    assert resumed, "the loop resumed fetching after the pause"
    assert min(resumed) >= 4


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return sample_sum(metrics.registry, name, **labels)


async def test_revocation_finishes_queued_and_running_requests_then_commits() -> None:
    sender = ScriptedSender()
    release = sender.gate("r-3")
    async with running(
        sender, [request(i) for i in range(10)], workers=1, revocation_timeout=30
    ) as run:
        await sender.wait_sent(lambda sent: len(sent) == 3)
        async with asyncio.timeout(10):
            await run.source.exhausted.wait()  # all ten admitted before the revocation
        revoking = asyncio.create_task(run.pipeline.on_revoked([TP]))
        await asyncio.sleep(0.05)
        assert not revoking.done(), "the revocation waits for the request being sent"
        release.set()
        async with asyncio.timeout(10):
            await revoking
        assert run.source.committed[TP] == 10
        assert sorted(sender.sent) == sorted(f"r-{i}" for i in range(10))
        assert run.tracker.partitions() == []
        assert sample(run.metrics, "email_partition_revocations_total", result="complete") == 1


async def test_revocation_gives_up_at_its_bound_and_a_late_finish_moves_no_new_generation() -> None:
    sender = ScriptedSender()
    release = sender.gate("r-2")
    async with running(sender, [request(i) for i in range(6)], revocation_timeout=0.2) as run:
        await sender.wait_sent(lambda sent: len(sent) == 5)
        async with asyncio.timeout(10):
            await run.pipeline.on_revoked([TP])
        assert run.source.committed[TP] == 2
        assert sample(run.metrics, "email_partition_revocations_total", result="timed_out") == 1
        assert sample(run.metrics, "email_revoked_requests_released_total", state="unfinished") == 1
        # The partition comes back (a new generation); the old send then ends.
        await run.pipeline.on_assigned([TP])
        release.set()
        await sender.wait_sent(lambda sent: len(sent) == 6)
        await run.pipeline.commit()
        assert run.tracker.to_commit() == {}
        assert run.source.committed[TP] == 2


async def test_revocation_does_not_wait_for_requests_waiting_for_their_retry() -> None:
    sender = ScriptedSender()
    sender.fail_once.add("r-0")
    async with running(
        sender, [request(i) for i in range(4)], retry_delay=3600, revocation_timeout=30
    ) as run:
        await sender.wait_sent(lambda sent: len(sent) == 3)
        await wait_until(lambda: run.tracker.waiting == 0)
        async with asyncio.timeout(5):
            await run.pipeline.on_revoked([TP])
        assert run.source.committed.get(TP, 0) == 0
        assert (
            sample(run.metrics, "email_revoked_requests_released_total", state="retry_waiting") == 1
        )
        assert sample(run.metrics, "email_partition_revocations_total", result="complete") == 1


async def test_records_of_a_partition_being_revoked_are_not_admitted() -> None:
    sender = ScriptedSender()
    release = sender.gate("r-2")
    async with running(sender, [request(i) for i in range(5)], revocation_timeout=30) as run:
        await sender.wait_sent(lambda sent: len(sent) == 4)
        revoking = asyncio.create_task(run.pipeline.on_revoked([TP]))
        await asyncio.sleep(0)
        run.source.exhausted.clear()
        run.source.pending.extend(request(i) for i in range(5, 10))
        async with asyncio.timeout(10):
            await run.source.exhausted.wait()  # the loop fetched them during the revocation
        release.set()
        async with asyncio.timeout(10):
            await revoking
        assert sorted(sender.sent) == sorted(f"r-{i}" for i in range(5))
        assert run.source.committed[TP] == 5


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_watchdog_counts_requests_being_sent_but_not_those_waiting_to_retry() -> None:
    sender = ScriptedSender()
    sender.fail_once.add("r-0")
    release = sender.gate("r-1")
    clock = ManualClock()
    watchdog = Watchdog(60, clock=clock)

    def alive() -> bool:
        return watchdog.alive(waiting=run.tracker.waiting > 0)

    async with running(
        sender,
        [request(0)],
        retry_delay=3600,
        workers=1,
        shutdown_timeout=0.1,
        watchdog=watchdog,
    ) as run:
        await wait_until(lambda: run.tracker.pending == 1 and run.tracker.waiting == 0)
        clock.now += 3600
        assert alive(), "a request waiting for its retry is not stuck"
        run.source.pending.append(request(1))
        await wait_until(lambda: sender.running == 1)
        clock.now += 59
        assert alive()
        clock.now += 2
        assert not alive(), "a request held by the relay for longer than the timeout"
        release.set()
        await sender.wait_sent(lambda sent: "r-1" in sent)
        await wait_until(lambda: run.tracker.waiting == 0)
        assert alive()


async def test_records_the_offset_map_lists_are_finished_without_being_sent() -> None:
    sender = ScriptedSender()
    finished_before = OffsetMap(0, ((1, 4), (6, 7)))  # 1, 2, 3 and 6 were sent before a crash
    async with running(sender, [request(i) for i in range(10)], offset_map=finished_before) as run:
        await sender.wait_sent(lambda sent: len(sent) == 6)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 10
        assert run.metrics.skipped_finished._value.get() == 4
    assert sorted(sender.sent) == sorted(f"r-{i}" for i in (0, 4, 5, 7, 8, 9))


async def test_commits_carry_the_finished_offsets_above_a_request_waiting_to_retry() -> None:
    sender = ScriptedSender()
    sender.fail_once.add("r-2")
    async with running(
        sender,
        [request(i) for i in range(10)],
        retry_delay=3600,
        shutdown_timeout=0.1,
        map_max_bytes=4096,
    ) as run:
        await sender.wait_sent(lambda sent: len(sent) == 9)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 2
        found = decode(run.source.metadata[TP], committed=2)
        assert isinstance(found, OffsetMap)
        assert found.runs == ((3, 10),)


def has_length(length: int, items: list[str]) -> bool:
    return len(items) == length


# Final events acknowledged in batches: a request waiting for its event's acknowledgement holds
# no worker, is not committed until then, and publishes the event again when it fails.


async def test_a_request_waiting_for_its_event_holds_no_worker_and_is_not_committed() -> None:
    sender = ScriptedSender()
    events = FakeEvents(held=True)
    async with running(sender, [request(i) for i in range(5)], workers=1, events=events) as run:
        # One worker sends all five: none of them holds it while its event waits.
        await sender.wait_sent(lambda sent: len(sent) == 5)
        await wait_until(lambda: len(events.pending) == 5)
        assert run.pool.stats().running == 0
        await run.pipeline.commit()
        assert run.source.committed.get(TP, 0) == 0
        assert run.tracker.pending == 5
        events.acknowledge()
        await wait_until(lambda: run.tracker.pending == 0)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 5
    assert [event.type for event in events.published] == [EventType.SENT] * 5


async def test_a_failed_acknowledgement_publishes_the_event_again() -> None:
    sender = ScriptedSender()
    events = FakeEvents(failures=1, held=True)
    async with running(sender, [request(0)], events=events) as run:
        await wait_until(lambda: len(events.pending) == 1)
        events.acknowledge()  # fails: the request goes back to wait, then publishes again
        await wait_until(lambda: len(events.pending) == 1)
        assert run.tracker.pending == 1
        events.acknowledge()
        await wait_until(lambda: run.tracker.pending == 0)
        await run.pipeline.commit()
        assert run.source.committed[TP] == 1
    assert sender.sent == ["r-0"]  # sent once; only its event went out twice
    assert len(events.published) == 1


async def test_drain_waits_for_the_acknowledgements_then_commits() -> None:
    sender = ScriptedSender()
    events = FakeEvents(held=True)
    async with running(sender, [request(i) for i in range(3)], events=events) as run:
        await wait_until(lambda: len(events.pending) == 3)
        run.stop.set()
        await asyncio.sleep(0.05)
        assert not run.task.done(), "stop must wait for the events' acknowledgements"
        events.acknowledge()
        assert await run.task
        assert run.source.committed[TP] == 3
