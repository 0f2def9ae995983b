"""The service with its record of sent ids: a redelivered id is not sent again."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.kafka import Broker, Topics, committed_offsets, produce, wait_for
from support.redis_server import RedisServer
from support.service import in_process, request_payload, settings_for
from support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


async def wait_committed(broker: Broker, topics: Topics, count: int) -> None:
    async def reached() -> bool:
        offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
        return sum(offset or 0 for offset in offsets.values()) == count

    await wait_for(reached, 30, message=f"{count} records committed")


async def test_a_replayed_id_is_skipped_by_a_later_process_through_redis(
    broker: Broker, topics: Topics, relay: SmtpTestServer, redis: RedisServer
) -> None:
    """The record outlives the process that wrote it: the next one finds the id there."""
    settings = settings_for(broker, topics, relay.port, redis_url=redis.url)
    await produce(broker.bootstrap, topics.requests, [request_payload("replayed-1")])
    async with in_process(settings):
        await relay.wait_for_messages(1, within=30)
        await wait_committed(broker, topics, 1)

    # The same request again (a replay, or a redelivery after a crash), to a new process.
    await produce(broker.bootstrap, topics.requests, [request_payload("replayed-1")])
    async with in_process(settings) as service:
        await wait_for(
            lambda: service.metric("email_duplicates_skipped_total") == 1,
            30,
            message="the redelivered id was skipped",
        )
        await wait_committed(broker, topics, 2)
        assert service.metric("email_sent_total") == 0
        assert service.metric("email_end_to_end_duration_seconds_count", outcome="duplicate") == 1
        assert service.metric("email_pool_jobs_failed_total") == 0
    assert [message.email_id for message in relay.messages] == ["replayed-1"]


async def test_the_memory_record_skips_an_id_redelivered_to_the_same_process(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    settings = settings_for(broker, topics, relay.port)
    async with in_process(settings) as service:
        await produce(broker.bootstrap, topics.requests, [request_payload("twice-1")])
        await relay.wait_for_messages(1, within=30)
        await produce(broker.bootstrap, topics.requests, [request_payload("twice-1")])
        await wait_for(
            lambda: service.metric("email_duplicates_skipped_total") == 1,
            30,
            message="the second copy was skipped",
        )
        await wait_committed(broker, topics, 2)
    assert len(relay.messages) == 1


async def test_with_redis_down_every_request_is_still_sent(
    broker: Broker, topics: Topics, relay: SmtpTestServer, tmp_path: Path
) -> None:
    """Fail open: an outage of the store costs deduplication, never delivery."""
    down = RedisServer(tmp_path / "down")  # never started: connections are refused
    settings = settings_for(broker, topics, relay.port, redis_url=down.url)
    ids = [f"open-{i}" for i in range(10)]
    await produce(broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids])
    async with in_process(settings) as service:
        await relay.wait_for_messages(len(ids), within=30)
        await wait_committed(broker, topics, len(ids))
        assert service.metric("email_sent_total") == len(ids)
        assert service.metric("email_dead_letters_total", reason="retries_exhausted") == 0
        # The look-up before a send is the claim now.
        assert service.metric("email_dedup_unavailable_total", operation="claim") > 0
        assert service.metric("email_dedup_unavailable_total", operation="record") > 0
    assert sorted(message.email_id or "" for message in relay.messages) == sorted(ids)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_two_copies_in_flight_at_once_are_sent_once(
    broker: Broker, topics: Topics, relay: SmtpTestServer, tmp_path: Path, store: str
) -> None:
    """A producer wrote the request twice: while the first copy is being sent (the relay is
    slow), the second waits for its claim, then finishes as a duplicate."""
    with RedisServer(tmp_path / "redis") as redis:
        redis_url = redis.url if store == "redis" else None
        settings = settings_for(broker, topics, relay.port, redis_url=redis_url)
        relay.delay_data(2.0, email_id="twin-1")
        payloads = [request_payload("twin-1"), request_payload("twin-1")]
        async with in_process(settings) as service:
            await produce(broker.bootstrap, topics.requests, payloads)
            await wait_committed(broker, topics, 2)
            assert service.metric("email_sent_total") == 1
            assert service.metric("email_duplicates_skipped_total") == 1
            assert service.metric("email_claim_waits_total") >= 1
    assert [message.email_id for message in relay.messages] == ["twin-1"]
