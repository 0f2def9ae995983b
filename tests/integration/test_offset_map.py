"""Offset maps across ``kill -9``: what the last commit lists as finished is not sent again.

Every tenth request fails once and waits 3 s for its retry, holding its partition's commit
point back while later requests finish. On Apache Kafka, which keeps commit metadata, those
finished offsets travel in the commit's offset map, and the restarted process finishes them
without sending. On Tansu, which drops metadata, nothing changes: they are sent again, and
nothing breaks. Counts are read from the broker after the kill, never from timing.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from messaging_service.adapters.kafka_admin import admin_client
from messaging_service.core.offsetmap import OffsetMap, decode
from support.kafka import Broker, BrokerKind, Topics, broker_kind, wait_for
from support.service import ServiceProcess, settings_for
from support.smtp_server import SmtpTestServer
from support.steps import (
    deliveries,
    hold_back_every_tenth,
    launch,
    publish_requests,
    wait_all_delivered,
)

pytestmark = pytest.mark.integration

REQUESTS = 300
WORKERS = 4


@pytest.fixture
def apache_kafka(broker: Broker) -> Broker:
    """The session's broker when it is an Apache Kafka (started by the tests, or external)."""
    if broker_kind(broker) is not BrokerKind.KAFKA:
        pytest.skip(
            "needs Apache Kafka, which keeps commit metadata: runs with TEST_BROKER=kafka "
            "(scripts/test's second pass) or KAFKA_BOOTSTRAP_SERVERS"
        )
    return broker


async def committed(bootstrap: str, topics: Topics) -> dict[int, tuple[int, str]]:
    """(offset, metadata) of each partition the group committed."""
    async with admin_client(bootstrap) as admin:
        answer = await admin.list_consumer_group_offsets(
            topics.group, partitions=[TopicPartition(topics.requests, p) for p in range(3)]
        )
    return {
        tp.partition: (meta.offset, meta.metadata or "")
        for tp, meta in answer.items()
        if meta.offset >= 0
    }


def mapped_offsets(commits: dict[int, tuple[int, str]]) -> set[tuple[int, int]]:
    """(partition, offset) of every offset the committed maps list as finished."""
    found: set[tuple[int, int]] = set()
    for partition, (offset, metadata) in commits.items():
        offset_map = decode(metadata, committed=offset)
        if isinstance(offset_map, OffsetMap):
            found.update((partition, o) for s, e in offset_map.runs for o in range(s, e))
    return found


async def kill_and_restart(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
    *,
    map_committed: bool,
) -> tuple[collections.Counter[str | None], set[str], float, ServiceProcess]:
    """Run, kill -9 mid-batch, restart, wait for all; returns sends, mapped ids, skips."""
    bootstrap = broker.bootstrap
    ids = [f"map-{i}" for i in range(REQUESTS)]
    hold_back_every_tenth(relay, ids)
    placed = await publish_requests(broker, topics.requests, ids)
    id_at = dict(zip(placed, ids, strict=True))
    settings = settings_for(broker, topics, relay.port, workers=WORKERS, retry_delays="3")

    first = await launch(processes, settings, tmp_path / "first.log")
    await relay.wait_for_messages(REQUESTS // 3, within=120)
    if map_committed:

        async def some_map_committed() -> bool:
            return bool(mapped_offsets(await committed(bootstrap, topics)))

        await wait_for(some_map_committed, 60, interval=0.1, message="a map committed")
    first.kill()  # SIGKILL: no drain, no final commit
    mapped = {id_at[placed] for placed in mapped_offsets(await committed(bootstrap, topics))}

    second = await launch(processes, settings, tmp_path / "second.log")
    await wait_all_delivered(relay, ids, within=120)

    async def all_committed() -> bool:
        commits = await committed(bootstrap, topics)
        return sum(offset for offset, _ in commits.values()) == REQUESTS

    await wait_for(all_committed, 60, interval=0.2, message="everything committed")
    sent = deliveries(relay)
    assert set(sent) == set(ids), "no request lost"
    skipped = await second.sample("email_skipped_finished_total")
    return sent, mapped, skipped, second


async def test_apache_kafka_finished_offsets_in_the_map_are_not_sent_again_after_kill_9(
    apache_kafka: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    sent, mapped, skipped, second = await kill_and_restart(
        apache_kafka, topics, relay, processes, tmp_path, map_committed=True
    )
    assert mapped, "the last commits listed finished offsets above their commit points"
    assert {id_: sent[id_] for id_ in mapped} == dict.fromkeys(mapped, 1)
    assert skipped == len(mapped)
    restored = [e for e in second.events() if e.get("event") == "offset_map_restored"]
    assert sum(e["finished"] for e in restored) == len(mapped)


async def test_tansu_drops_the_map_and_everything_is_still_delivered_and_committed(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    if broker_kind(broker) is not BrokerKind.TANSU:
        pytest.skip("Apache Kafka keeps commit metadata: this is about Tansu, which drops it")
    sent, mapped, skipped, second = await kill_and_restart(
        broker, topics, relay, processes, tmp_path, map_committed=False
    )
    assert not mapped, "Tansu returned commit metadata"
    assert skipped == 0
    events = {e.get("event") for e in second.events()}
    assert "offset_map_absent" in events
    assert "offset_map_ignored" not in events
    assert sum(sent.values()) >= REQUESTS
