"""The service end to end against a real Kafka-protocol broker and a real SMTP server."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from messaging_service.core.mime import message_id
from support.kafka import Broker, Topics, committed_offsets, produce, read_all, wait_for
from support.service import headers_of, in_process, request_payload, settings_for
from support.smtp_server import TRY_LATER, SmtpTestServer

pytestmark = pytest.mark.integration


async def total_committed(broker: Broker, topics: Topics) -> int:
    offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
    return sum(offset or 0 for offset in offsets.values())


async def wait_committed(broker: Broker, topics: Topics, count: int) -> None:
    """Wait until the group's committed offsets add up to ``count`` records."""

    async def reached() -> bool:
        return await total_committed(broker, topics) == count

    await wait_for(reached, 15, message=f"{count} records committed")


async def test_a_batch_is_delivered_with_the_right_headers_and_bodies(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    ids = [f"batch-{i}" for i in range(30)]
    await produce(
        broker.bootstrap,
        topics.requests,
        [
            request_payload(id_, cc=["Carol <carol@example.com>"], bcc=["audit@example.com"])
            for id_ in ids
        ],
        keys=[id_.encode() for id_ in ids],
    )
    async with in_process(settings_for(broker, topics, relay.port)) as service:
        received = await relay.wait_for_messages(30, within=30)
        await wait_committed(broker, topics, 30)
        assert service.metric("email_sent_total") == 30
        assert service.metric("email_requests_consumed_total") == 30

    by_id = {message.email_id: message for message in received}
    assert by_id.keys() == set(ids)
    sample = by_id["batch-7"]
    message = sample.message
    assert message["From"] == "Shop <shop@example.com>"
    assert message["To"] == "batch-7@example.com"
    assert message["Cc"] == "Carol <carol@example.com>"
    assert message["Bcc"] is None
    assert sorted(sample.rcpt_tos) == [
        "audit@example.com",
        "batch-7@example.com",
        "carol@example.com",
    ]
    assert sample.mail_from == "shop@example.com"
    assert message["Message-ID"] == message_id("batch-7", "example.com")
    assert message["Date"] is not None
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "User batch-7" in text.get_content()
    assert "User batch-7" in html.get_content()
    assert message["Subject"]


async def test_every_dead_letter_reason_carries_its_headers(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    relay.refuse_recipient("rejected@example.com")
    relay.fail_data(TRY_LATER, email_id="exhausted")
    originals = {
        "invalid_json": b"{this is not json",
        "wrong_fields": json.dumps({"id": "wrong", "to": 42, "template": "welcome"}).encode(),
        "unknown_template": request_payload("unknown", template="no_such_template"),
        "missing_variable": request_payload("missing", data={}),
        "rejected": request_payload("rejected", to="rejected@example.com"),
        "exhausted": request_payload("exhausted"),
    }
    keys = [name.encode() for name in originals]
    await produce(
        broker.bootstrap,
        topics.requests,
        list(originals.values()),
        keys=keys,
        headers=[("traceparent", b"00-abc-01")],
        partition=0,
    )
    settings = settings_for(broker, topics, relay.port, retry_delays="0.1,0.2")
    async with in_process(settings) as service:
        letters = await read_all(broker.bootstrap, topics.dlq, expected=6, timeout=30)
        await wait_committed(broker, topics, 6)
        assert service.metric("email_dead_letters_total", reason="invalid_payload") == 2
        assert service.metric("email_dead_letters_total", reason="template_error") == 2
        assert service.metric("email_dead_letters_total", reason="smtp_rejected") == 1
        assert service.metric("email_dead_letters_total", reason="retries_exhausted") == 1
        assert service.metric("email_retries_total") == 3

    assert len(letters) == 6
    by_key = {letter.key.decode(): letter for letter in letters}
    expected = {
        "invalid_json": ("invalid_payload", "0", None),
        "wrong_fields": ("invalid_payload", "0", None),
        "unknown_template": ("template_error", "0", None),
        "missing_variable": ("template_error", "0", None),
        "rejected": ("smtp_rejected", "1", "550"),
        "exhausted": ("retries_exhausted", "4", "451"),
    }
    for offset, (name, original) in enumerate(originals.items()):
        letter = by_key[name]
        headers = {key: value.decode() for key, value in headers_of(letter).items()}
        reason, attempts, code = expected[name]
        assert letter.value == original, name
        assert headers["traceparent"] == "00-abc-01"
        assert headers["email-failure-reason"] == reason, name
        assert headers["email-attempts"] == attempts, name
        assert headers.get("email-smtp-code") == code, name
        assert headers["kafka_dlt-original-topic"] == topics.requests
        assert headers["kafka_dlt-original-partition"] == "0"
        assert headers["kafka_dlt-original-offset"] == str(offset)
        assert int(headers["kafka_dlt-original-timestamp"]) > 0
        assert headers["kafka_dlt-original-consumer-group"] == topics.group
        assert headers["kafka_dlt-exception-fqcn"].startswith("messaging_service.errors.")
        assert headers["kafka_dlt-exception-message"]
    assert relay.messages == []


async def test_a_transient_failure_succeeds_on_retry(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    relay.fail_data(TRY_LATER, email_id="flaky", times=1)
    await produce(broker.bootstrap, topics.requests, [request_payload("flaky")])
    async with in_process(settings_for(broker, topics, relay.port)) as service:
        [received] = await relay.wait_for_messages(1, within=30)
        await wait_committed(broker, topics, 1)
        assert service.metric("email_retries_total") == 1
        assert service.metric("email_sent_total") == 1
    assert received.email_id == "flaky"
    assert await read_all(broker.bootstrap, topics.dlq, timeout=5) == []


async def test_a_slow_retry_does_not_block_other_requests(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    """One worker; the first request waits an hour for its retry while 20 others are sent."""
    relay.fail_data(TRY_LATER, email_id="slow", times=1)
    others = [f"other-{i}" for i in range(20)]
    await produce(
        broker.bootstrap,
        topics.requests,
        [request_payload("slow"), *(request_payload(id_) for id_ in others)],
        partition=0,
    )
    settings = settings_for(
        broker, topics, relay.port, workers=1, retry_delays="3600", shutdown_timeout=1
    )
    async with in_process(settings) as service:
        received = await relay.wait_for_messages(20, within=30)
        assert Counter(message.email_id for message in received) == Counter(others)
        assert service.metric("email_retry_waiting") == 1
        await service.shutdown()
    # The waiting request was never finished, so nothing on its partition was committed.
    offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
    assert offsets[0] in (None, 0)


async def test_injection_attempts_are_neutralised(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    hostile = [
        request_payload(
            "subject-crlf",
            template=None,
            subject="Hi\r\nBcc: victim@example.com",
            text="x",
        ),
        request_payload("address-crlf", to="a@example.com\r\nBcc: victim@example.com"),
        request_payload("name-crlf", data={"name": "Eve\r\nBcc: victim@example.com"}),
        request_payload("html-in-data", data={"name": "<script>alert(1)</script>"}),
    ]
    await produce(broker.bootstrap, topics.requests, hostile, partition=0)
    async with in_process(settings_for(broker, topics, relay.port)):
        letters = await read_all(broker.bootstrap, topics.dlq, expected=3, timeout=30)
        received = await relay.wait_for_messages(1, within=30)
        await wait_committed(broker, topics, 4)
    reasons = {
        json.loads(letter.value)["id"]: headers_of(letter)["email-failure-reason"]
        for letter in letters
    }
    # A line break that template data would put into the subject fails the render.
    assert reasons == {
        "subject-crlf": b"invalid_payload",
        "address-crlf": b"invalid_payload",
        "name-crlf": b"template_error",
    }
    delivered = {message.email_id: message for message in received}
    assert list(delivered) == ["html-in-data"]
    assert all("victim@example.com" not in message.rcpt_tos for message in received)
    for message in received:
        assert message.message["Bcc"] is None
    html_part = delivered["html-in-data"].message.get_body(("html",))
    text_part = delivered["html-in-data"].message.get_body(("plain",))
    assert html_part is not None
    assert text_part is not None
    assert "<script>" not in html_part.get_content()
    assert "&lt;script&gt;" in html_part.get_content()
    assert "<script>alert(1)</script>" in text_part.get_content()


async def test_commits_never_pass_an_unfinished_request(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    """The first request is held at the relay while nine later ones on its partition finish."""
    relay.delay_data(3600, email_id="held")
    ids = ["held", *(f"later-{i}" for i in range(9))]
    await produce(
        broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids], partition=0
    )
    settings = settings_for(broker, topics, relay.port, shutdown_timeout=1)
    async with in_process(settings) as service:
        await relay.wait_for_messages(9, within=30)
        await wait_for(
            lambda: service.metric("email_uncommitted_finished_offsets") == 9,
            15,
            message="nine finished but uncommitted",
        )
        offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
        assert offsets[0] in (None, 0)
        await service.shutdown()
    # The held request was abandoned at shutdown: still not committed, so it is redelivered.
    offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
    assert offsets[0] in (None, 0)


async def test_http_endpoints_report_health_readiness_and_metrics(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    await produce(broker.bootstrap, topics.requests, [request_payload("one")])
    async with in_process(settings_for(broker, topics, relay.port)) as service:
        await relay.wait_for_messages(1, within=30)
        # The relay records the message before its 250 reaches the service.
        await wait_for(lambda: service.metric("email_sent_total") == 1, 15, message="counted")
        status, body = await service.get("/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        await wait_for(lambda: service.running.health.ready, 15, message="ready")
        status, body = await service.get("/readyz")
        assert (status, json.loads(body)["status"]) == (200, "ready")
        status, body = await service.get("/metrics")
        assert status == 200
        assert "email_sent_total 1.0" in body
        assert 'email_readiness_check{check="smtp_reachable"} 1.0' in body
        assert "email_worker_pool_size 4.0" in body
