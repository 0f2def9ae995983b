"""OpenTelemetry spans for each request (the optional ``otel`` extra); see ``tracing``.

Each request gets a ``process <topic>`` span of kind CONSUMER, parented by the record's W3C
``traceparent`` header when it has one, with the messaging semantic-convention attributes;
its children are the rendering, every SMTP attempt (with the reply code) and every publish of
a dead letter or an outcome event, whose record carries the trace context on. The aiokafka
instrumentation would end its span before the request is processed, so the service owns its
spans. The provider is the service's own (the global one is left alone) and is shut down,
exporting what it buffered, on close.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from messaging_service.core.values import InboundRecord, Outcome
from messaging_service.telemetry.tracing import Attempt, Header, Publish

SERVICE_NAME = "messaging-service"
_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_HEADERS = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate


def exporter_named(name: str) -> SpanExporter:
    """The exporter OTEL_TRACES_EXPORTER names; OTLP reads its OTEL_EXPORTER_OTLP_* itself."""
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES when set, else service.name of our own."""
    detected = Resource.create()
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        return detected.merge(Resource({"service.name": SERVICE_NAME}))
    return detected


def add_trace_ids(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current span's trace_id and span_id on every log line."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = trace.format_trace_id(context.trace_id)
        event["span_id"] = trace.format_span_id(context.span_id)
    return event


class _Attempt:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def reply(self, code: int | None, *, error: BaseException | None = None) -> None:
        if code is not None:
            self._span.set_attribute("smtp.reply.code", code)
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class OtelRequestTrace:
    """The spans of one request; the ``process`` span lives from admission to its outcome."""

    def __init__(
        self,
        tracer: trace.Tracer,
        record: InboundRecord,
        *,
        group_id: str,
        topics: Mapping[Publish, str],
    ) -> None:
        self._tracer = tracer
        self._topics = topics
        carrier = {
            name: value.decode("latin-1")
            for name, value in record.headers
            if name.lower() in _CONTEXT_HEADERS
        }
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": group_id,
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
        self._span = tracer.start_span(
            f"process {record.topic}",
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self._context = trace.set_span_in_context(self._span)

    def active(self) -> AbstractContextManager[object]:
        return trace.use_span(self._span, end_on_exit=False)

    def render(self) -> AbstractContextManager[object]:
        return self._tracer.start_as_current_span("render", context=self._context)

    @contextmanager
    def attempt(self, number: int) -> Iterator[Attempt]:
        with self._tracer.start_as_current_span(
            "smtp send",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={"smtp.attempt": number},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield _Attempt(span)

    def download(self, host: str) -> AbstractContextManager[object]:
        return self._tracer.start_as_current_span(
            "attachment download",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "GET", "server.address": host},
        )

    @contextmanager
    def publish(self, what: Publish) -> Iterator[Sequence[Header]]:
        topic = self._topics[what]
        with self._tracer.start_as_current_span(
            f"send {topic}",
            context=self._context,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": topic,
                "email.record": what.value,
            },
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            yield tuple((name, value.encode()) for name, value in carrier.items())

    def end(self, outcome: Outcome) -> None:
        self._span.set_attribute("email.outcome", outcome.value)
        if outcome is Outcome.DEAD_LETTERED:
            self._span.set_status(Status(StatusCode.ERROR, "dead-lettered"))
        self._span.end()


class OtelTracing:
    """The service's tracer provider; ``processor`` replaces the batching export (tests)."""

    enabled = True

    def __init__(
        self,
        *,
        group_id: str,
        topics: Mapping[Publish, str],
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
    ) -> None:
        if processor is None:
            if exporter is None:
                raise ValueError("an exporter or a span processor is needed")
            processor = BatchSpanProcessor(exporter)
        self._provider = TracerProvider(resource=_resource())
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("messaging_service")
        self._group_id = group_id
        self._topics = dict(topics)
        self._closed = False

    def request(self, record: InboundRecord) -> OtelRequestTrace:
        return OtelRequestTrace(self._tracer, record, group_id=self._group_id, topics=self._topics)

    def log_processors(self) -> Sequence[structlog.types.Processor]:
        return (add_trace_ids,)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._provider.shutdown()
