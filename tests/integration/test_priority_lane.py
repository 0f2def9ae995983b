"""The priority lane against a real broker: it overtakes, does not starve normal, commits right.

Every check counts deliveries and their order, never time: a priority request must arrive
ahead of most of a normal backlog published before it, and both lanes' offsets must be
committed in full across a rebalance and a restart.
"""

from __future__ import annotations

from typing import Any

import pytest

from messaging_service.config import Settings
from support.events import read_events
from support.kafka import (
    Broker,
    Topics,
    committed_offsets,
    create_topic,
    unique,
    wait_for,
)
from support.service import in_process, settings_for
from support.smtp_server import SmtpTestServer
from support.steps import publish_requests

pytestmark = pytest.mark.integration


async def lane_topics(broker: Broker, *, partitions: int = 3) -> tuple[Topics, str]:
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    priority = unique("priority")
    await create_topic(broker.bootstrap, topics.requests, partitions=partitions)
    await create_topic(broker.bootstrap, priority, partitions=partitions)
    await create_topic(broker.bootstrap, topics.dlq, partitions=1)
    return topics, priority


async def publish(broker: Broker, topic: str, ids: list[str]) -> None:
    await publish_requests(broker, topic, ids, keyed=True)


def lane_settings(
    broker: Broker, topics: Topics, priority: str, relay: SmtpTestServer, **overrides: Any
) -> Settings:
    """The test's settings with ``priority`` as the priority lane's topic."""
    return settings_for(broker, topics, relay.port, kafka={"priority_topic": priority}, **overrides)


def delivered(relay: SmtpTestServer) -> list[str]:
    return [message.email_id or "?" for message in relay.messages]


async def committed_sum(broker: Broker, group: str, topic: str) -> int:
    offsets = await committed_offsets(broker.bootstrap, group, topic)
    return sum(offset or 0 for offset in offsets.values())


async def test_priority_requests_overtake_a_normal_backlog(
    broker: Broker, relay: SmtpTestServer
) -> None:
    topics, priority = await lane_topics(broker)
    relay.delay_data(0.02)
    settings = lane_settings(broker, topics, priority, relay, workers=4, buffer=20)
    backlog = [f"n-{i}" for i in range(1000)]
    await publish(broker, topics.requests, backlog)
    async with in_process(settings) as service:
        await relay.wait_for_messages(20, within=60)
        urgent = [f"p-{i}" for i in range(5)]
        await publish(broker, priority, urgent)
        await relay.wait_for_messages(len(backlog) + len(urgent), within=120)
        order = delivered(relay)
        # With one lane they would come after the whole backlog; here, well ahead of most of it.
        last_urgent = max(order.index(id_) for id_ in urgent)
        assert last_urgent < 500, f"the last priority request was number {last_urgent}"
        await wait_for(
            lambda: service.metric("email_sent_total", lane="normal") == len(backlog), 30
        )
        assert service.metric("email_sent_total", lane="priority") == len(urgent)
        assert service.metric("email_requests_consumed_total", lane="priority") == len(urgent)


async def test_a_steady_priority_stream_does_not_starve_the_normal_lane(
    broker: Broker, relay: SmtpTestServer
) -> None:
    """Both lanes wait from the start: normal requests keep their share of the workers."""
    topics, priority = await lane_topics(broker, partitions=1)
    relay.delay_data(0.01)
    settings = lane_settings(
        broker, topics, priority, relay, workers=2, buffer=20, email={"priority_share": 0.75}
    )
    await publish(broker, priority, [f"p-{i}" for i in range(400)])
    await publish(broker, topics.requests, [f"n-{i}" for i in range(100)])
    async with in_process(settings):
        await relay.wait_for_messages(200, within=120)
        first = delivered(relay)[:200]
        normal = sum(1 for id_ in first if id_.startswith("n-"))
        # While both wait, a quarter of the picks are normal; the priority lane takes the rest.
        assert 25 <= normal <= 100, first
        assert sum(1 for id_ in first if id_.startswith("p-")) >= 100
        await relay.wait_for_messages(500, within=120)


async def test_both_lanes_commit_everything_across_a_rebalance_and_a_restart(
    broker: Broker, relay: SmtpTestServer
) -> None:
    topics, priority = await lane_topics(broker, partitions=2)
    relay.delay_data(0.01)
    settings = lane_settings(broker, topics, priority, relay, workers=2, buffer=10)
    normal = [f"n-{i}" for i in range(150)]
    urgent = [f"p-{i}" for i in range(150)]
    await publish(broker, topics.requests, normal)
    await publish(broker, priority, urgent)
    async with in_process(settings):
        await relay.wait_for_messages(30, within=60)
        # A second replica joins (rebalance); the first then leaves (another rebalance).
        async with in_process(settings):
            await relay.wait_for_messages(150, within=120)
        everything = set(normal) | set(urgent)
        await wait_for(
            lambda: set(delivered(relay)) >= everything, 120, message="every request delivered"
        )
    assert set(delivered(relay)) == everything
    assert await committed_sum(broker, topics.group, topics.requests) == len(normal)
    assert await committed_sum(broker, topics.group, priority) == len(urgent)

    # A restart reads on from the commits of both lanes: only the new requests are sent.
    before = len(relay.messages)
    await publish(broker, topics.requests, ["n-new"])
    await publish(broker, priority, ["p-new"])
    async with in_process(settings):
        await relay.wait_for_messages(before + 2, within=60)
        await wait_for(
            lambda: committed_total_is(broker, topics, priority, len(normal) + 1, len(urgent) + 1),
            30,
            interval=0.2,
            message="both lanes committed after the restart",
        )
    assert sorted(delivered(relay)[before:]) == ["n-new", "p-new"]


async def committed_total_is(
    broker: Broker, topics: Topics, priority: str, normal: int, urgent: int
) -> bool:
    return (
        await committed_sum(broker, topics.group, topics.requests) == normal
        and await committed_sum(broker, topics.group, priority) == urgent
    )


async def test_outcome_events_carry_the_lane(broker: Broker, relay: SmtpTestServer) -> None:
    topics, priority = await lane_topics(broker, partitions=1)
    events = unique("events")
    await create_topic(broker.bootstrap, events, partitions=1)
    settings = lane_settings(broker, topics, priority, relay, events_topic=events)
    await publish(broker, topics.requests, ["n-1"])
    await publish(broker, priority, ["p-1"])
    async with in_process(settings):
        published = await read_events(broker.bootstrap, events, expected=2)
    lanes = {event.request_id: event.value["lane"] for event in published}
    assert lanes == {"n-1": "normal", "p-1": "priority"}
