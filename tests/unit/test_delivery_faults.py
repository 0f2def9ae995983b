"""Every admitted request reaches an outcome or stays visibly pending, whatever component fails.

Each test makes one component fail in a way nothing translates (a bug), or makes Kafka misbehave,
and checks that no offset is silently left unfinished and that commits go on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping

import structlog
import structlog.testing

from messaging_service.adapters.kafka_consumer import ConsumerError
from messaging_service.core.lanes import Lane
from messaging_service.core.offsets import Commit, TopicPartition
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import Claim, DeadLetter, InboundRecord
from messaging_service.service.pool import Job
from support.fakes import FakeSender, FakeSource, record
from support.pipeline import TP, running

GUARD = 20


def request(offset: int, *, partition: int = 0) -> InboundRecord:
    payload = {"id": f"r-{partition}-{offset}", "to": "a@example.com", "subject": "s", "text": "t"}
    return record(json.dumps(payload).encode(), offset=offset, partition=partition)


def bad_request(offset: int) -> InboundRecord:
    return record(b"not json", offset=offset)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not predicate():  # noqa: ASYNC110 - the fakes offer no event for these states
            await asyncio.sleep(0.005)


class BrokenDeadLetters:
    """A sink that raises an exception nobody translates, ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[DeadLetter] = []

    async def publish(self, letter: DeadLetter) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise KeyError("a bug in the dead-letter sink")
        self.published.append(letter)


async def test_a_dead_letter_sink_bug_keeps_the_request_pending_until_it_is_dead_lettered() -> None:
    """Defect: the exception escaped the job, the offset was never finished, and its partition
    never committed again. Now it stays pending (visible in the oldest-unfinished age), is tried
    again with backoff, and every later offset commits once it is dead-lettered."""
    sink = BrokenDeadLetters(failures=3)
    records = [bad_request(0), *(request(n) for n in range(1, 20))]
    sender = FakeSender()
    async with running(sender, records, dead_letters=sink) as run:
        await until(lambda: len(sender.sent) == 19)
        await until(lambda: run.source.committed.get(TP) == 20)
        assert [letter.record.offset for letter in sink.published] == [0]
        assert run.tracker.pending == 0
    assert run.pool.stats().panicked == 0
    unexpected = run.metrics.registry.get_sample_value("email_unexpected_errors_total")
    assert unexpected is not None
    assert unexpected >= 3


async def test_a_stuck_request_shows_its_age_and_holds_only_its_own_partition() -> None:
    sink = BrokenDeadLetters(failures=10**6)  # never recovers while the test looks
    stuck_tp = TopicPartition("email.requests", 1)
    records = [bad_request(0), *(request(n) for n in range(1, 5))]
    records.append(record(b"not json", offset=0, partition=1))
    sender = FakeSender()
    async with running(sender, records, dead_letters=sink) as run:
        await run.pipeline.on_assigned([stuck_tp])
        await until(lambda: len(sender.sent) == 4)
        await asyncio.sleep(0.05)
        states = {state.tp: state for state in run.tracker.states()}
        assert states[TP].pending == 1
        assert states[TP].oldest_unfinished_age() > 0
        assert run.source.committed.get(TP, 0) == 0  # held at offset 0: nothing passes it
        assert states[stuck_tp].oldest_unfinished_age() > 0


async def test_a_sent_id_store_bug_still_ends_in_an_outcome() -> None:
    class BrokenSentLog:
        async def seen(self, email_id: str) -> bool:
            raise RuntimeError("a bug in the sent-id store")

        async def claim(self, email_id: str, token: str) -> Claim:
            raise RuntimeError("a bug in the sent-id store")

        async def record(self, email_id: str) -> None:
            raise RuntimeError("a bug in the sent-id store")

        async def release(self, email_id: str, token: str) -> None:
            raise RuntimeError("a bug in the sent-id store")

    sender = FakeSender()
    records = [request(n) for n in range(3)]
    async with running(sender, records, sent_log=BrokenSentLog(), retry_delay=0.01) as run:
        await until(lambda: run.source.committed.get(TP) == 3)
        # Treated as a bug: retried on the schedule, then dead-lettered, never lost.
        assert len(run.dead_letters.published) == 3
    assert run.pool.stats().panicked == 0


async def test_a_renderer_bug_ends_in_a_dead_letter_after_the_retries() -> None:
    class BrokenRenderer(TemplateRenderer):
        def render(self, request: object) -> object:  # type: ignore[override]
            raise ZeroDivisionError("a bug in rendering")

    sender = FakeSender()
    records = [request(0), request(1)]
    async with running(sender, records, renderer=BrokenRenderer(), retry_delay=0.01) as run:
        await until(lambda: run.source.committed.get(TP) == 2)
        assert len(run.dead_letters.published) == 2
    assert sender.sent == []


async def test_a_retry_scheduler_bug_keeps_the_request_pending_and_retried() -> None:
    """Defect: a job the delay queue could not take or hand on was dropped, its offset never
    finished. Now it is tried again on a timer and reaches its outcome."""
    from messaging_service.errors import SmtpTransientError

    sender = FakeSender(SmtpTransientError("451 later", code=451))
    async with running(sender, [request(0), request(1)], retry_delay=0.01) as run:
        delays = run.lifecycle._delays
        real = delays.schedule
        failures = [RuntimeError("a bug in the delay queue")] * 2

        def flaky(delay: float, job: Job) -> None:
            if failures:
                raise failures.pop()
            real(delay, job)

        delays.schedule = flaky  # type: ignore[method-assign]
        await until(lambda: run.source.committed.get(TP) == 2)
        assert len(sender.sent) == 2


async def test_a_delay_queue_hand_off_that_fails_is_tried_again() -> None:
    from messaging_service.errors import SmtpTransientError

    sender = FakeSender(SmtpTransientError("451 later", code=451))
    async with running(sender, [request(0)], retry_delay=0.01) as run:
        lifecycle = run.lifecycle
        real = lifecycle._submit
        failures = [RuntimeError("a bug handing a retry on")]

        async def flaky(job: Job, lane: Lane) -> None:
            if failures:
                raise failures.pop()
            await real(job, lane)

        lifecycle._submit = flaky
        await until(lambda: run.source.committed.get(TP) == 1)
        assert len(sender.sent) == 1


async def test_an_offset_that_goes_back_resets_the_partition_and_the_loop_goes_on() -> None:
    """Defect: track() raised ValueError out of the loop on a non-increasing offset (an offset
    reset, a truncated log, a seek), and the consumer loop died."""
    records = [request(n) for n in range(5)] + [request(n) for n in range(3, 8)]
    sender = FakeSender()
    with structlog.testing.capture_logs() as logs:
        async with running(sender, records) as run:
            await until(lambda: run.source.committed.get(TP) == 8)
            assert not run.task.done()
    assert any(entry["event"] == "partition_offset_rewound" for entry in logs)
    assert (
        run.metrics.registry.get_sample_value(
            "email_partition_resets_total", {"reason": "offset_rewound"}
        )
        == 1
    )


async def test_a_failed_revocation_lets_the_partition_go_and_later_commits_work() -> None:
    """Defect: an exception in on_revoked left the tracker holding a partition the consumer no
    longer owned, and aiokafka then refused every later commit."""
    other = TopicPartition("email.requests", 1)
    source = FakeSource([request(n) for n in range(3)])
    sender = FakeSender()
    async with running(sender, [], source=source) as run:
        await run.pipeline.on_assigned([other])
        source.assigned.add(other)
        await until(lambda: source.committed.get(TP) == 3)
        source.pending.extend(request(n, partition=1) for n in range(2))
        await until(lambda: len(sender.sent) == 5)
        source.commit_error = RuntimeError("a bug during the revocation's commit")
        await run.pipeline.on_revoked([other])  # must not raise
        source.assigned.discard(other)
        source.commit_error = None
        assert other not in run.tracker.partitions()
        source.pending.extend(request(n) for n in range(3, 6))
        await until(lambda: source.committed.get(TP) == 6)


async def test_a_partition_the_consumer_no_longer_owns_is_dropped_not_committed() -> None:
    other = TopicPartition("email.requests", 1)
    source = FakeSource([request(n) for n in range(2)])
    async with running(FakeSender(), [], source=source) as run:
        await run.pipeline.on_assigned([other])  # but the consumer does not own it
        source.pending.append(request(0, partition=1))
        await until(lambda: source.committed.get(TP) == 2)
        await until(lambda: other not in run.tracker.partitions())
    assert all(other not in commit for commit in source.commits)


async def test_records_fetched_while_a_revocation_commits_join_no_generation() -> None:
    """Defect: the revoking mark was cleared before the revocation's awaited commit, so records
    fetched in that window joined the generation being revoked (and were sent twice)."""
    source = FakeSource([request(n) for n in range(3)])
    sender = FakeSender()
    async with running(sender, [], source=source) as run:
        await until(lambda: source.committed.get(TP) == 3)
        gate = asyncio.Event()
        real_commit = source.commit

        async def slow_commit(commits: Mapping[TopicPartition, Commit]) -> None:
            await gate.wait()
            await real_commit(commits)

        source.pending.append(request(3))
        await until(lambda: len(sender.sent) == 4)
        source.commit = slow_commit  # type: ignore[method-assign]
        revoking = asyncio.create_task(run.pipeline.on_revoked([TP]))
        await asyncio.sleep(0.02)
        source.pending.extend(request(n) for n in range(4, 8))  # fetched during the commit
        await asyncio.sleep(0.05)
        gate.set()
        await revoking
        assert len(sender.sent) == 4  # none of the window's records was admitted


async def test_a_periodic_commit_that_hangs_does_not_hold_admission() -> None:
    """Defect: the loop awaited every commit inline, so a commit stuck on a missing broker
    stopped all consumption. (The adapter bounds each call; this checks the loop goes on.)"""
    source = FakeSource([request(n) for n in range(3)])
    sender = FakeSender()
    gate = asyncio.Event()
    real_commit = source.commit

    async def hanging_commit(commits: Mapping[TopicPartition, Commit]) -> None:
        await gate.wait()
        await real_commit(commits)

    source.commit = hanging_commit  # type: ignore[method-assign]
    async with running(sender, [], source=source) as run:
        await until(lambda: len(sender.sent) == 3)
        source.pending.extend(request(n) for n in range(3, 10))
        await until(lambda: len(sender.sent) == 10)  # admitted while the commit hangs
        gate.set()
        await until(lambda: source.committed.get(TP) == 10)
        assert not run.task.done()


async def test_a_final_commit_that_fails_is_reported_and_run_returns_false() -> None:
    source = FakeSource([request(n) for n in range(3)])
    sender = FakeSender()
    with structlog.testing.capture_logs() as logs:
        async with running(sender, [], source=source) as run:
            await until(lambda: len(sender.sent) == 3)
            source.commit_error = ConsumerError("commit failed: no answer from Kafka in time")
            run.stop.set()
            committed = await run.task
    assert committed is False
    [failed] = [entry for entry in logs if entry["event"] == "final_commit_failed"]
    assert failed["uncommitted"] == {"email.requests-0": 3}
