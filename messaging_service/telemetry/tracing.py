"""Request tracing: the shape the handler uses, a no-op default, and choosing one at start.

Tracing is on only when the standard OpenTelemetry variables ask for it
(``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); then ``otel`` (the optional ``otel`` extra) is
imported. Otherwise every hook is a shared no-op and OpenTelemetry is never imported, so the
handler's hooks cost a method call each and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import structlog

from messaging_service.core.values import InboundRecord, Outcome

Header = tuple[str, bytes]

# Exporters the otel extra ships; OTEL_TRACES_EXPORTER may name one of these, or "none".
EXPORTERS = ("otlp", "console")
_NO_HEADERS: tuple[Header, ...] = ()


class Publish(enum.Enum):
    """What the service publishes; each goes to its topic (KafkaSettings), in a span of its own."""

    DEAD_LETTER = "dead_letter"
    EVENT = "event"


class TracingConfigError(ValueError):
    """The OpenTelemetry variables ask for something this service cannot do."""


class Attempt(Protocol):
    """One SMTP attempt's span: the relay's reply code is set once it is known."""

    def reply(self, code: int | None, *, error: BaseException | None = None) -> None: ...


class RequestTrace(Protocol):
    """The spans of one request: ``process <topic>`` and its children."""

    def active(self) -> AbstractContextManager[object]:
        """Makes the request's span current (children and log lines refer to it)."""
        ...

    def render(self) -> AbstractContextManager[object]: ...

    def attempt(self, number: int) -> AbstractContextManager[Attempt]: ...

    def download(self, host: str) -> AbstractContextManager[object]:
        """A span around fetching one attachment URL from ``host`` (never the whole URL,
        whose query may carry a pre-signed credential)."""
        ...

    def publish(self, what: Publish) -> AbstractContextManager[Sequence[Header]]:
        """A span around publishing a record; yields the trace-context headers to add."""
        ...

    def end(self, outcome: Outcome) -> None: ...


class Tracing(Protocol):
    enabled: bool

    def request(self, record: InboundRecord) -> RequestTrace: ...

    def log_processors(self) -> Sequence[structlog.types.Processor]: ...

    def close(self) -> None:
        """Export what is buffered and stop; idempotent."""
        ...


class _NoAttempt:
    def reply(self, code: int | None, *, error: BaseException | None = None) -> None:
        return None


class _NoTrace:
    """Every hook does nothing; one shared instance, no allocation per request."""

    _attempt: AbstractContextManager[Attempt] = nullcontext(_NoAttempt())
    _plain: AbstractContextManager[object] = nullcontext()
    _headers: AbstractContextManager[Sequence[Header]] = nullcontext(_NO_HEADERS)

    def active(self) -> AbstractContextManager[object]:
        return self._plain

    def render(self) -> AbstractContextManager[object]:
        return self._plain

    def attempt(self, number: int) -> AbstractContextManager[Attempt]:
        return self._attempt

    def download(self, host: str) -> AbstractContextManager[object]:
        return self._plain

    def publish(self, what: Publish) -> AbstractContextManager[Sequence[Header]]:
        return self._headers

    def end(self, outcome: Outcome) -> None:
        return None


NO_TRACE: RequestTrace = _NoTrace()


class _NoTracing:
    enabled = False

    def request(self, record: InboundRecord) -> RequestTrace:
        return NO_TRACE

    def log_processors(self) -> Sequence[structlog.types.Processor]:
        return ()

    def close(self) -> None:
        return None


NO_TRACING: Tracing = _NoTracing()


def wanted_exporter(environ: Mapping[str, str]) -> str | None:
    """The span exporter the standard variables ask for, or None for no tracing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named == "none":
        return None
    if named:
        if named not in EXPORTERS:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={named!r} is not supported (otlp, console or none)"
            )
        exporter = named
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        exporter = "otlp"
    else:
        return None
    for variable in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if exporter == "otlp" and protocol and protocol != "http/protobuf":
            raise TracingConfigError(
                f"{variable}={protocol!r}: the otel extra exports over OTLP/HTTP only "
                "(http/protobuf)"
            )
    return exporter


def tracing_from_environment(
    environ: Mapping[str, str], *, group_id: str, topics: Mapping[Publish, str]
) -> Tracing:
    """NO_TRACING unless the variables ask for traces; raises TracingConfigError if unusable."""
    exporter = wanted_exporter(environ)
    if exporter is None:
        return NO_TRACING
    try:
        from messaging_service.telemetry.otel import OtelTracing, exporter_named
    except ImportError as exc:
        raise TracingConfigError(
            "OpenTelemetry tracing is configured (OTEL_* variables) but the optional 'otel' "
            f"extra is not installed ({exc.name}): pip install 'messaging-service[otel]'"
        ) from exc
    return OtelTracing(group_id=group_id, topics=topics, exporter=exporter_named(exporter))
