"""Traces as a tracing backend gets them: the service process exports over OTLP/HTTP.

A small receiver (``support.otlp``, aiohttp in the test) answers ``POST /v1/traces`` and
decodes each body as the OTLP protobuf ``ExportTraceServiceRequest``; the service runs as
``messaging-service run`` with only the standard variables set.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from support.kafka import Broker, Topics, produce, read_all, wait_for
from support.otlp import OtlpReceiver, attributes
from support.service import ServiceProcess, request_payload, settings_for
from support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as found:
        yield found


async def test_the_service_exports_request_spans_over_otlp_http(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    receiver: OtlpReceiver,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    service = ServiceProcess(
        settings_for(broker, topics, relay.port),
        tmp_path / "service.log",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "mail-sender",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    processes.append(service)
    service.start()
    await service.wait_ready()
    await produce(
        broker.bootstrap,
        topics.requests,
        [request_payload("traced"), request_payload("broken", template="no_such_template")],
        keys=[b"order-1", b"order-2"],
        headers=[("traceparent", TRACEPARENT.encode())],
    )
    await relay.wait_for_messages(1, within=30)
    (letter,) = await read_all(broker.bootstrap, topics.dlq, expected=1, timeout=30)
    await wait_for(
        lambda: len(receiver.named(f"process {topics.requests}")) == 2,
        30,
        message="both process spans exported",
    )

    processed = receiver.named(f"process {topics.requests}")
    assert {span.trace_id.hex() for span in processed} == {TRACE_ID}
    assert {span.parent_span_id.hex() for span in processed} == {"b7ad6b7169203331"}
    assert {span.kind for span in processed} == {Span.SPAN_KIND_CONSUMER}
    by_outcome = {attributes(span)["email.outcome"]: span for span in processed}
    sent = by_outcome["sent"]
    sent_attributes = attributes(sent)
    assert sent_attributes["messaging.system"] == "kafka"
    assert sent_attributes["messaging.destination.name"] == topics.requests
    assert sent_attributes["messaging.consumer.group.name"] == topics.group
    assert sent_attributes["messaging.operation.type"] == "process"
    assert sent_attributes["messaging.kafka.message.key"] == "order-1"
    assert isinstance(sent_attributes["messaging.kafka.offset"], int)
    assert receiver.resources[0]["service.name"] == "mail-sender"
    assert receiver.content_types == {"application/x-protobuf"}

    children = {
        (span.name, span.parent_span_id) for span in receiver.spans if span not in processed
    }
    assert ("smtp send", sent.span_id) in children
    assert ("render", sent.span_id) in children
    dead = by_outcome["dead_lettered"]
    (publish,) = receiver.named(f"send {topics.dlq}")
    assert publish.parent_span_id == dead.span_id
    headers = dict(letter.headers)
    assert headers["traceparent"].decode() == f"00-{TRACE_ID}-{publish.span_id.hex()}-01"

    service.signal(signal.SIGTERM)
    assert await service.wait_exit(timeout=60) == 0, service.log_tail()
    sent_lines = [event for event in service.events() if event.get("event") == "email_sent"]
    assert sent_lines
    assert {line["trace_id"] for line in sent_lines} == {TRACE_ID}
    assert {line["span_id"] for line in sent_lines} == {sent.span_id.hex()}


async def test_a_service_with_a_grpc_otlp_protocol_refuses_to_start(
    broker: Broker, topics: Topics, tmp_path: Path
) -> None:
    service = ServiceProcess(
        settings_for(broker, topics, 25),
        tmp_path / "service.log",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
    )
    service.start()
    try:
        assert await service.wait_exit(timeout=30) == 2
        assert "OTLP/HTTP only" in service.log_tail()
    finally:
        service.kill()
