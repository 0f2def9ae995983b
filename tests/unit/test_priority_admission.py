"""The priority lane in the admission loop: it overtakes a normal backlog without starving it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog

from messaging_service.core.offsets import TopicPartition
from messaging_service.core.values import InboundRecord, OutgoingEmail, SendReport
from messaging_service.telemetry import logcontext
from support.fakes import FakeSource, record
from support.pipeline import TP, running
from support.samples import sample_sum

PRIORITY = "email.requests.priority"
PTP = TopicPartition(PRIORITY, 0)


def request(offset: int, *, topic: str = "email.requests", prefix: str = "n") -> InboundRecord:
    payload = {"id": f"{prefix}-{offset}", "to": "a@example.com", "subject": "s", "text": "t"}
    return record(json.dumps(payload).encode(), offset=offset, topic=topic)


def urgent(offset: int) -> InboundRecord:
    return request(offset, topic=PRIORITY, prefix="p")


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the fakes offer no event for these states
            await asyncio.sleep(0.001)


class Logs:
    """Every log event with the request's bound context merged in, as the service logs it."""

    def __init__(self) -> None:
        self.entries: list[dict[str, object]] = []

    def __enter__(self) -> list[dict[str, object]]:
        def keep(_: object, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
            self.entries.append(dict(event))
            raise structlog.DropEvent

        structlog.configure(
            processors=[logcontext.merge_fields, keep],
            cache_logger_on_first_use=False,
        )
        return self.entries

    def __exit__(self, *exc_info: object) -> None:
        structlog.reset_defaults()


class GatedSender:
    """Every send waits until the gate opens; records the order of ids sent."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent: list[str] = []
        self.changed = asyncio.Event()

    async def send(self, email: OutgoingEmail) -> SendReport:
        await self.gate.wait()
        await asyncio.sleep(0)
        for line in email.message.split(b"\r\n"):
            if line.startswith(b"X-Email-Id: "):
                self.sent.append(line.removeprefix(b"X-Email-Id: ").decode())
        self.changed.set()
        return SendReport()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.sent) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_priority_requests_overtake_a_normal_backlog_already_queued() -> None:
    sender = GatedSender()
    sender.gate.clear()
    backlog = [request(n) for n in range(300)]
    source = FakeSource(backlog)
    source.assigned.add(PTP)
    async with running(
        sender, [], source=source, workers=2, buffer=10, priority_topic=PRIORITY
    ) as run:
        # The normal lane fills and its topic is paused; the rest of the backlog stays fetched.
        await until(lambda: "email.requests" in source.paused_topics)
        assert run.pool.free_slots == 0
        source.pending.extend(urgent(n) for n in range(3))
        await until(lambda: run.pool.stats().queued_priority == 3)
        sender.gate.set()
        await sender.until(303)
        await run.pipeline.commit()
        assert source.committed[TP] == 300
        assert source.committed[PTP] == 3
    # The two running when the gate opened were normal; the priority ones came right after.
    assert sorted(sender.sent[2:5]) == ["p-0", "p-1", "p-2"]
    assert sample_sum(run.metrics.registry, "email_sent_total", lane="priority") == 3
    assert sample_sum(run.metrics.registry, "email_sent_total", lane="normal") == 300
    assert sample_sum(run.metrics.registry, "email_requests_consumed_total", lane="priority") == 3


async def test_a_steady_priority_stream_leaves_the_normal_lane_its_share() -> None:
    sender = GatedSender()
    sender.gate.clear()
    records = [request(n) for n in range(50)] + [urgent(n) for n in range(200)]
    source = FakeSource(records)
    source.assigned.add(PTP)
    async with running(
        sender,
        [],
        source=source,
        workers=1,
        buffer=100,
        max_in_flight=400,
        priority_topic=PRIORITY,
        priority_share=0.8,
    ) as run:
        await until(lambda: run.pool.stats().queued >= 150)
        sender.gate.set()
        await sender.until(100)
        first = sender.sent[1:101]  # the first send may have been taken before both waited
        normal = sum(1 for id_ in first if id_.startswith("n-"))
        assert 15 <= normal <= 25, first
        await sender.until(250)
        await run.pipeline.commit()
        assert source.committed == {TP: 50, PTP: 200}


async def test_request_logs_carry_the_lane() -> None:
    sender = GatedSender()
    source = FakeSource([request(0), urgent(0)])
    source.assigned.add(PTP)
    with Logs() as logs:
        async with running(sender, [], source=source, priority_topic=PRIORITY):
            await sender.until(2)
    lanes = {
        entry["email_id"]: entry.get("lane") for entry in logs if entry["event"] == "email_sent"
    }
    assert lanes == {"n-0": "normal", "p-0": "priority"}


async def test_without_a_priority_topic_logs_have_no_lane_and_everything_is_normal() -> None:
    sender = GatedSender()
    with Logs() as logs:
        async with running(sender, [request(0), request(1)]) as run:
            await sender.until(2)
    assert [entry["email_id"] for entry in logs if entry["event"] == "email_sent"]
    assert all("lane" not in entry for entry in logs)
    assert sample_sum(run.metrics.registry, "email_sent_total", lane="normal") == 2
    assert run.source.topic_fetches == []
