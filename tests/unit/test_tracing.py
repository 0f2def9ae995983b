"""Request tracing: when it is on, the spans the handler makes, and nothing when it is off.

Spans are collected with the SDK's in-memory exporter; tests/integration/test_tracing_otlp.py
sends them through the OTLP/HTTP exporter to a receiver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from messaging_service.adapters.dead_letters import dead_letter_headers
from messaging_service.core.contract import RequestLimits
from messaging_service.core.events import EventType, event_record
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import InboundRecord, Outcome
from messaging_service.errors import SmtpRejectedError, SmtpTransientError
from messaging_service.service.delivery import Delivery, Finished, RetryIn
from messaging_service.service.handler import RequestHandler
from messaging_service.service.health import Health
from messaging_service.service.reporter import EventReporter
from messaging_service.telemetry.metrics import Metrics
from messaging_service.telemetry.otel import OtelTracing, add_trace_ids
from messaging_service.telemetry.tracing import (
    NO_TRACE,
    NO_TRACING,
    Publish,
    TracingConfigError,
    tracing_from_environment,
    wanted_exporter,
)
from support.fakes import FakeDeadLetters, FakeEvents, FakeFetcher, FakeSender
from support.handler import make_handler

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
GROUP = "messaging-service"
DLQ = "email.requests.dlq"
TOPICS = {Publish.DEAD_LETTER: DLQ, Publish.EVENT: "email.events"}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.shutdown()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[OtelTracing]:
    traced = OtelTracing(group_id=GROUP, topics=TOPICS, processor=SimpleSpanProcessor(exporter))
    yield traced
    traced.close()


def handler_for(
    tracing: OtelTracing, sender: FakeSender, dead_letters: FakeDeadLetters | None = None
) -> RequestHandler:
    return make_handler(
        renderer=TemplateRenderer(),
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=sender,
        dead_letters=dead_letters or FakeDeadLetters(),
        policy=RetryPolicy(max_retries=3, delays=(1,)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
        tracing=tracing,
    )


def inbound(*, traceparent: str | None = TRACEPARENT, **payload: Any) -> InboundRecord:
    body = {"id": "t-1", "template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}}
    body.update(payload)
    headers = (("traceparent", traceparent.encode()),) if traceparent else ()
    return InboundRecord(
        topic="email.requests",
        partition=2,
        offset=41,
        timestamp_ms=1_700_000_000_000,
        key=b"order-7",
        value=json.dumps(body).encode(),
        headers=(("source", b"shop"), *headers),
    )


async def run_to_end(handler: RequestHandler, delivery: Delivery) -> Finished:
    while True:
        step = await handler.process(delivery)
        if isinstance(step, Finished):
            return step
        assert isinstance(step, RetryIn), step


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    spans: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    return spans


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_request_is_one_consumer_span_parented_by_its_traceparent(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    handler = handler_for(tracing, FakeSender())
    assert await run_to_end(handler, Delivery(inbound())) == Finished(Outcome.SENT)

    spans = by_name(exporter)
    (process,) = spans["process email.requests"]
    assert process.kind is SpanKind.CONSUMER
    assert trace.format_trace_id(process.context.trace_id) == TRACE_ID
    assert process.parent is not None
    assert process.parent.is_remote
    assert trace.format_span_id(process.parent.span_id) == PARENT_ID
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "email.requests",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 41,
        "messaging.kafka.message.key": "order-7",
        "messaging.consumer.group.name": GROUP,
        "email.outcome": "sent",
    }
    (render,) = spans["render"]
    (attempt,) = spans["smtp send"]
    for child in (render, attempt):
        assert parent_id(child) == process.context.span_id
        assert child.context.trace_id == process.context.trace_id
    assert attempt.kind is SpanKind.CLIENT
    assert (attempt.attributes or {})["smtp.reply.code"] == 250
    assert attempt.status.status_code is StatusCode.UNSET
    assert process.resource.attributes["service.name"] == "messaging-service"


async def test_without_a_traceparent_the_request_starts_a_trace(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    handler = handler_for(tracing, FakeSender())
    await run_to_end(handler, Delivery(inbound(traceparent=None)))
    (process,) = by_name(exporter)["process email.requests"]
    assert process.parent is None
    assert trace.format_trace_id(process.context.trace_id) != TRACE_ID


async def test_every_smtp_attempt_is_a_span_with_its_reply_code(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    sender = FakeSender(SmtpTransientError("451 try later", code=451))
    await run_to_end(handler_for(tracing, sender), Delivery(inbound()))
    attempts = sorted(by_name(exporter)["smtp send"], key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["smtp.reply.code"] for s in attempts] == [451, 250]
    assert [(s.attributes or {})["smtp.attempt"] for s in attempts] == [1, 2]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[0].events[0].name == "exception"
    (process,) = by_name(exporter)["process email.requests"]
    assert {parent_id(s) for s in attempts} == {process.context.span_id}


async def test_an_attachment_download_is_a_client_span_naming_only_the_host(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    handler = make_handler(
        renderer=TemplateRenderer(),
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=FakeSender(),
        dead_letters=FakeDeadLetters(),
        policy=RetryPolicy(max_retries=3, delays=(1,)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
        tracing=tracing,
        limits=RequestLimits(attachment_url_hosts=("files.example.com",)),
        fetcher=FakeFetcher(b"%PDF-1.7"),
    )
    url = "https://files.example.com/terms.pdf?X-Amz-Signature=secret"
    attachments = [{"filename": "terms.pdf", "url": url}]
    assert await run_to_end(handler, Delivery(inbound(attachments=attachments))) == Finished(
        Outcome.SENT
    )
    spans = by_name(exporter)
    (download,) = spans["attachment download"]
    (process,) = spans["process email.requests"]
    assert download.kind is SpanKind.CLIENT
    assert parent_id(download) == process.context.span_id
    # The host only: the URL's query carries a pre-signed credential.
    assert download.attributes == {
        "http.request.method": "GET",
        "server.address": "files.example.com",
    }


async def test_a_dead_letter_carries_the_trace_context_of_its_publish_span(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    dead_letters = FakeDeadLetters(failures=1)
    sender = FakeSender(SmtpRejectedError("550 no such user", code=550))
    handler = handler_for(tracing, sender, dead_letters)
    assert await run_to_end(handler, Delivery(inbound())) == Finished(Outcome.DEAD_LETTERED)

    spans = by_name(exporter)
    (process,) = spans["process email.requests"]
    failed, published = sorted(spans[f"send {DLQ}"], key=lambda s: s.start_time or 0)
    assert failed.status.status_code is StatusCode.ERROR  # the broker refused the first one
    assert published.kind is SpanKind.PRODUCER
    assert (published.attributes or {})["messaging.destination.name"] == DLQ
    assert parent_id(published) == process.context.span_id
    assert process.status.status_code is StatusCode.ERROR
    assert (process.attributes or {})["email.outcome"] == "dead_lettered"
    (attempt,) = spans["smtp send"]
    assert (attempt.attributes or {})["smtp.reply.code"] == 550

    (letter,) = dead_letters.published
    headers = dead_letter_headers(letter, group_id=GROUP)
    traceparents = [value.decode() for name, value in headers if name == "traceparent"]
    span_id = trace.format_span_id(published.context.span_id)
    assert traceparents == [f"00-{TRACE_ID}-{span_id}-01"]  # replaces the request's own
    assert ("source", b"shop") in headers


async def test_outcome_events_carry_the_trace_context_of_their_publish_spans(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    """A deferred event (retry scheduled) and the final one, each published in its own span."""
    events = FakeEvents()
    registry = CollectorRegistry()
    health = Health()
    handler = make_handler(
        renderer=TemplateRenderer(),
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=FakeSender(SmtpTransientError("451 try later", code=451)),
        dead_letters=FakeDeadLetters(),
        policy=RetryPolicy(max_retries=3, delays=(1,)),
        metrics=Metrics(registry),
        health=health,
        events=EventReporter(events, metrics=Metrics(CollectorRegistry()), health=health),
        sender_domain="example.com",
        tracing=tracing,
    )
    assert await run_to_end(handler, Delivery(inbound())) == Finished(Outcome.SENT)

    spans = sorted(by_name(exporter)["send email.events"], key=lambda s: s.start_time or 0)
    (process,) = by_name(exporter)["process email.requests"]
    assert [parent_id(span) for span in spans] == [process.context.span_id] * 2
    assert [event.type for event in events.published] == [EventType.DEFERRED, EventType.SENT]
    for event, span in zip(events.published, spans, strict=True):
        headers = dict(event_record(event, source="test").headers)
        span_id = trace.format_span_id(span.context.span_id)
        assert headers["traceparent"].decode() == f"00-{TRACE_ID}-{span_id}-01"
        assert headers["ce_type"].decode() == event.type.value


async def test_log_lines_carry_the_current_trace_and_span_ids(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    seen: list[dict[str, Any]] = []

    class Spy(FakeSender):
        async def send(self, email: Any) -> Any:
            seen.append(dict(add_trace_ids(None, "info", {})))
            return await super().send(email)

    await run_to_end(handler_for(tracing, Spy()), Delivery(inbound()))
    (attempt,) = by_name(exporter)["smtp send"]
    assert seen == [
        {"trace_id": TRACE_ID, "span_id": trace.format_span_id(attempt.context.span_id)}
    ]
    assert add_trace_ids(None, "info", {}) == {}  # outside any span: nothing added
    assert tracing.log_processors() == (add_trace_ids,)


def test_close_exports_and_is_idempotent(exporter: InMemorySpanExporter) -> None:
    traced = OtelTracing(group_id=GROUP, topics=TOPICS, processor=SimpleSpanProcessor(exporter))
    traced.close()
    traced.close()
    with pytest.raises(ValueError, match="exporter or a span processor"):
        OtelTracing(group_id=GROUP, topics=TOPICS)


async def test_without_tracing_a_delivery_keeps_the_shared_no_op() -> None:
    handler = make_handler(
        renderer=TemplateRenderer(),
        builder=MessageBuilder("Shop <shop@example.com>"),
        sender=FakeSender(),
        dead_letters=FakeDeadLetters(),
        policy=RetryPolicy(max_retries=3, delays=(1,)),
        metrics=Metrics(CollectorRegistry()),
        health=Health(),
    )
    delivery = Delivery(inbound())
    assert await run_to_end(handler, delivery) == Finished(Outcome.SENT)
    assert delivery.trace is NO_TRACE
    assert NO_TRACING.log_processors() == ()
    with NO_TRACE.publish(Publish.DEAD_LETTER) as headers:
        assert headers == ()


# --- when tracing is on ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "OTLP"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            "otlp",
        ),
    ],
)
def test_the_standard_variables_decide_whether_requests_are_traced(
    environ: dict[str, str], expected: str | None
) -> None:
    assert wanted_exporter(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger' is not supported"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTLP/HTTP only",
        ),
    ],
)
def test_variables_the_service_cannot_honour_are_refused(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TracingConfigError, match=message):
        tracing_from_environment(environ, group_id=GROUP, topics=TOPICS)


def test_configured_tracing_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "messaging_service.telemetry.otel", None
    )  # as if not installed
    with pytest.raises(TracingConfigError, match=r"the optional 'otel' extra"):
        tracing_from_environment({"OTEL_TRACES_EXPORTER": "otlp"}, group_id=GROUP, topics=TOPICS)


def test_the_console_exporter_is_built_from_the_environment() -> None:
    traced = tracing_from_environment(
        {"OTEL_TRACES_EXPORTER": "console"}, group_id=GROUP, topics=TOPICS
    )
    assert traced.enabled
    traced.close()


def test_untraced_service_never_loads_the_tracing_sdk() -> None:
    """Off, tracing is a no-op that loads nothing: the handler's hooks are all it costs.

    (redis-py imports OpenTelemetry's metrics API when it is installed, as in this venv; the
    tracer provider, exporters and our otel module must stay unloaded.)
    """
    code = (
        "import sys\n"
        "import messaging_service.app, messaging_service.cli\n"
        "from messaging_service.telemetry.tracing import NO_TRACING, tracing_from_environment\n"
        "assert tracing_from_environment({}, group_id='g', topics={}) is NO_TRACING\n"
        "loaded = ('messaging_service.telemetry.otel', 'opentelemetry.sdk.trace',"
        " 'opentelemetry.exporter')\n"
        "print(sorted(m for m in sys.modules if m.startswith(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
