"""Outcome events and the suppression list through the running service (real broker, relay).

Every event read here is checked against docs/schemas/email-event.schema.json and its
CloudEvents headers (support.events.read_events).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from messaging_service.config import Settings
from messaging_service.core.mime import message_id
from support.events import PublishedEvent, final_events, read_events
from support.kafka import (
    Broker,
    Topics,
    committed_total,
    create_topic,
    produce,
    read_all,
    unique,
    wait_for,
)
from support.redis_server import RedisServer
from support.service import environment_for, in_process, request_payload, settings_for
from support.smtp_server import TRY_LATER, SmtpTestServer

pytestmark = pytest.mark.integration

GONE = "gone@example.com"


@pytest.fixture
async def events_topic(broker: Broker) -> str:
    name = unique("events")
    await create_topic(broker.bootstrap, name, partitions=1)
    return name


def with_events(
    broker: Broker, topics: Topics, relay: SmtpTestServer, events: str, **kw: object
) -> Settings:
    return settings_for(
        broker,
        topics,
        relay.port,
        retry_delays="0.2",
        events_topic=events,
        **kw,  # type: ignore[arg-type]
    )


async def wait_committed(broker: Broker, topics: Topics, count: int) -> None:
    async def reached() -> bool:
        return await committed_total(broker, topics) == count

    await wait_for(reached, 30, message=f"{count} records committed")


def only_final(events: list[PublishedEvent], request_id: str) -> PublishedEvent:
    """The one final event of ``request_id`` (fails if there are none or several)."""
    found = final_events(events).get(request_id, [])
    assert len(found) == 1, f"{request_id}: {[e.type for e in found]}"
    return found[0]


def statuses(event: PublishedEvent) -> dict[str, str]:
    return {r["address"]: r["status"] for r in event.value["recipients"]}


async def test_sent_deferred_then_sent_partial_refusal_and_duplicate_events(
    broker: Broker, topics: Topics, relay: SmtpTestServer, events_topic: str
) -> None:
    relay.fail_data(TRY_LATER, email_id="later-1", times=1)
    relay.refuse_recipient(GONE)
    await produce(
        broker.bootstrap,
        topics.requests,
        [
            request_payload("plain-1"),
            request_payload("later-1"),
            request_payload("partial-1", to=["ok@example.com", GONE]),
        ],
    )
    settings = with_events(broker, topics, relay, events_topic)
    async with in_process(settings) as service:
        await relay.wait_for_messages(3, within=30)
        await wait_committed(broker, topics, 3)
        await produce(broker.bootstrap, topics.requests, [request_payload("plain-1")])
        await wait_committed(broker, topics, 4)
        assert service.metric("email_events_published_total", type="email.sent") == 3
        assert service.metric("email_events_published_total", type="email.deferred") == 1
        assert service.metric("email_events_published_total", type="email.duplicate") == 1
        assert service.metric("email_suppressions_added_total") == 1

    events = await read_events(broker.bootstrap, events_topic, expected=5)
    assert len(events) == 5
    plain = only_final([e for e in events if e.type == "email.sent"], "plain-1")
    assert plain.value["message_id"] == message_id("plain-1", "example.com")
    assert plain.value["template"] == "welcome"
    assert plain.value["attempt"] == 1
    assert plain.value["permanent"] is None
    assert plain.value["smtp"] is None
    assert plain.value["processing_time_ms"] >= 0
    assert plain.headers["ce_source"] == f"messaging-service/{topics.group}"
    assert statuses(plain) == {"plain-1@example.com": "accepted"}
    duplicate = [e for e in events if e.type == "email.duplicate"]
    assert [e.request_id for e in duplicate] == ["plain-1"]

    [deferred] = [e for e in events if e.type == "email.deferred"]
    assert deferred.request_id == "later-1"
    assert deferred.value["attempt"] == 1
    assert deferred.value["permanent"] is False
    assert deferred.value["retry_in_seconds"] == pytest.approx(0.2)
    assert deferred.value["smtp"] == {
        "code": 451,
        "enhanced_status": "4.3.0",
        "response": "4.3.0 try later",
    }
    later = only_final(events, "later-1")
    assert later.type == "email.sent"
    assert later.value["attempt"] == 2

    partial = only_final(events, "partial-1")
    assert partial.type == "email.sent"
    assert statuses(partial) == {"ok@example.com": "accepted", GONE: "refused"}
    [refused] = [r for r in partial.value["recipients"] if r["address"] == GONE]
    assert refused["smtp"] == {
        "code": 550,
        "enhanced_status": "5.1.1",
        "response": "5.1.1 no such user",
    }


async def test_every_failure_reason_publishes_one_failed_event_after_its_dead_letter(
    broker: Broker, topics: Topics, relay: SmtpTestServer, events_topic: str
) -> None:
    relay.refuse_recipient("policy@example.com", "550 5.7.1 rejected by policy")
    relay.fail_data(TRY_LATER, email_id="exhausted")
    originals = {
        "invalid": b"{this is not json",
        "unknown_template": request_payload("unknown_template", template="no_such_template"),
        "rejected": request_payload("rejected", to="policy@example.com"),
        "exhausted": request_payload("exhausted"),
        "not_allowed": request_payload("not_allowed", to="someone@example.org"),
    }
    await produce(broker.bootstrap, topics.requests, list(originals.values()), partition=0)
    settings = with_events(broker, topics, relay, events_topic, max_retries=1)
    settings = settings.model_copy(
        update={"email": settings.email.model_copy(update={"allowed_domains": ("example.com",)})}
    )
    async with in_process(settings) as service:
        await read_all(broker.bootstrap, topics.dlq, expected=5, timeout=30)
        await wait_committed(broker, topics, 5)
        assert service.metric("email_events_published_total", type="email.failed") == 5
        assert service.metric("email_suppressions_added_total") == 0  # 5.7.1 is policy

    events = await read_events(broker.bootstrap, events_topic, expected=6)
    failed = [e for e in events if e.type == "email.failed"]
    assert len(failed) == 5
    reasons = {e.request_id: e.value["reason"] for e in failed}
    assert reasons == {
        None: "invalid_payload",
        "unknown_template": "template_error",
        "rejected": "smtp_rejected",
        "exhausted": "retries_exhausted",
        "not_allowed": "recipient_not_allowed",
    }
    assert all(e.value["permanent"] is True for e in failed)
    by_id = {e.request_id: e for e in failed}
    assert by_id[None].value["source"]["offset"] == 0
    assert by_id[None].key is None
    assert by_id["rejected"].value["smtp"]["enhanced_status"] == "5.7.1"
    assert statuses(by_id["rejected"]) == {"policy@example.com": "refused"}
    assert by_id["exhausted"].value["attempt"] == 2
    assert [e.type for e in events if e.request_id == "exhausted"] == [
        "email.deferred",
        "email.failed",
    ]


async def test_a_hard_bounced_address_is_suppressed_and_the_next_request_makes_no_attempt(
    broker: Broker, topics: Topics, relay: SmtpTestServer, events_topic: str
) -> None:
    relay.refuse_recipient(GONE)
    settings = with_events(broker, topics, relay, events_topic)
    async with in_process(settings) as service:
        await produce(broker.bootstrap, topics.requests, [request_payload("bounce-1", to=GONE)])
        await read_all(broker.bootstrap, topics.dlq, expected=1, timeout=30)
        await wait_committed(broker, topics, 1)
        rcpt_before = sum(1 for _, command in relay.commands if command == "RCPT")

        await produce(
            broker.bootstrap, topics.requests, [request_payload("after-1", to=GONE.upper())]
        )
        await wait_committed(broker, topics, 2)
        assert service.metric("email_suppressed_total") == 1
        assert service.metric("email_recipients_suppressed_total") == 1
        assert service.metric("email_dead_letters_total", reason="smtp_rejected") == 1
        assert service.metric("email_pool_jobs_failed_total") == 1
        assert sum(1 for _, command in relay.commands if command == "RCPT") == rcpt_before

    events = await read_events(broker.bootstrap, events_topic, expected=2)
    assert only_final(events, "bounce-1").type == "email.failed"
    suppressed = only_final(events, "after-1")
    assert suppressed.type == "email.suppressed"
    assert suppressed.value["reason"] == "suppressed"
    assert statuses(suppressed) == {GONE: "suppressed"}
    letters = await read_all(broker.bootstrap, topics.dlq, timeout=10)
    assert len(letters) == 1  # nothing dead-lettered for the suppressed request


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``messaging-service ARGS`` with the service's settings, as an operator would run it."""
    env = environment_for(settings, http_port=0)
    return subprocess.run(
        [sys.executable, "-m", "messaging_service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_suppression_is_shared_through_redis_and_remove_lets_mail_through_again(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    events_topic: str,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    """Replica A learns the bounce; replica B (other process settings, same Redis) obeys it."""
    relay.refuse_recipient(GONE, times=1)
    first = with_events(broker, topics, relay, events_topic, redis_url=redis.url)
    other = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, other.requests, partitions=1)
    await create_topic(broker.bootstrap, other.dlq, partitions=1)
    second = with_events(broker, other, relay, events_topic, redis_url=redis.url)
    # The same list: both replicas read the same keys (settings_for gives each group its own).
    shared = first.email.suppression_key_prefix
    second = second.model_copy(
        update={"email": second.email.model_copy(update={"suppression_key_prefix": shared})}
    )

    async with in_process(first):
        await produce(broker.bootstrap, topics.requests, [request_payload("bounce-r", to=GONE)])
        await wait_committed(broker, topics, 1)

    listed = cli(first, "suppression", "list")
    assert listed.returncode == 0, listed.stderr
    assert GONE in listed.stdout
    assert "reason=hard_bounce" in listed.stdout
    assert "smtp=550 5.1.1 no such user" in listed.stdout

    async with in_process(second) as replica:
        await produce(broker.bootstrap, other.requests, [request_payload("elsewhere-1", to=GONE)])
        await wait_for(
            lambda: replica.metric("email_suppressed_total") == 1, 30, message="suppressed"
        )
        assert len(relay.messages) == 0

        removed = cli(first, "suppression", "remove", GONE)
        assert removed.returncode == 0, removed.stderr
        await produce(broker.bootstrap, other.requests, [request_payload("again-1", to=GONE)])
        [received] = await relay.wait_for_messages(1, within=30)
        assert received.email_id == "again-1"

    added = cli(first, "suppression", "add", "manual@example.com", "--reason", "complaint")
    assert added.returncode == 0, added.stderr
    listed = cli(first, "suppression", "list")
    assert "manual@example.com  reason=complaint" in listed.stdout
    assert GONE not in listed.stdout
    again = cli(first, "suppression", "remove", GONE)
    assert again.returncode == 1

    events = await read_events(broker.bootstrap, events_topic, expected=3)
    assert only_final(events, "bounce-r").type == "email.failed"
    assert only_final(events, "elsewhere-1").type == "email.suppressed"
    assert only_final(events, "again-1").type == "email.sent"
    assert json.loads(json.dumps(events[0].value))  # plain JSON all the way down


async def test_an_unwritable_events_topic_keeps_the_request_pending_until_a_replica_can_write(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    events_topic: str,
    redis: RedisServer,
) -> None:
    """Like a dead letter: not finished, not committed, not ready; the email is not resent."""
    broken = with_events(
        broker, topics, relay, "no such topic!", redis_url=redis.url, shutdown_timeout=2
    )
    # Bounds each failed publish (the broker holds a JoinGroup for the 2 s rebalance timeout).
    broken = broken.model_copy(
        update={"kafka": broken.kafka.model_copy(update={"request_timeout_ms": 4000})}
    )
    await produce(broker.bootstrap, topics.requests, [request_payload("pending-1")])
    async with in_process(broken) as service:
        await relay.wait_for_messages(1, within=30)
        await wait_for(
            lambda: service.metric("email_event_publish_failures_total") >= 1,
            30,
            message="the final event failed",
        )
        status, body = await service.get("/readyz")
        assert status == 503
        assert json.loads(body)["checks"]["events_topic_writable"] is False
        assert await committed_total(broker, topics) == 0
        assert service.metric("email_end_to_end_duration_seconds_count", outcome="sent") == 0
        assert service.metric("email_sent_total") == 1
    assert len(relay.messages) == 1
    assert await committed_total(broker, topics) == 0

    # A replica that can write the topic gets the request again: it was sent (the Redis
    # record says so), so it ends as a duplicate, with its event, and is committed.
    fixed = with_events(broker, topics, relay, events_topic, redis_url=redis.url)
    async with in_process(fixed) as service:
        await wait_committed(broker, topics, 1)
        assert service.metric("email_duplicates_skipped_total") == 1
        status, _ = await service.get("/readyz")
        assert status == 200
    assert len(relay.messages) == 1
    events = await read_events(broker.bootstrap, events_topic, expected=1)
    assert only_final(events, "pending-1").type == "email.duplicate"
