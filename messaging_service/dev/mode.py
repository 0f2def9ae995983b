"""``messaging-service dev``: the service, an embedded broker and a mail catcher in one process.

Needs the ``embedded`` extra; import it only after ``embedded.require_extra``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from messaging_service.adapters.kafka_admin import create_topic
from messaging_service.adapters.kafka_producer import Publisher
from messaging_service.app import Running, run_service
from messaging_service.config import (
    KafkaSettings,
    LogFormat,
    LogLevel,
    LogSettings,
    Settings,
    load_settings,
)
from messaging_service.core.values import FailureReason, Outcome
from messaging_service.dev.catcher import CaughtEmail, MailCatcher
from messaging_service.dev.console import Console
from messaging_service.dev.embedded import HOST, TANSU_GROUP_TIMEOUTS, EmbeddedBroker
from messaging_service.dev.samples import samples
from messaging_service.errors import ServiceError, describe_error
from messaging_service.ops.deadletters import StoredDeadLetter
from messaging_service.ops.replay import read_dead_letters
from messaging_service.ops.send import encode_request
from messaging_service.telemetry.logging import configure_logging

_TICK = 0.2
_REQUEST_PARTITIONS = 3
_START_TIMEOUT = 30.0


class DevExit(enum.IntEnum):
    OK = 0
    FAILED = 1
    INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class DevOptions:
    outbox: Path
    kafka_port: int | None = None
    smtp_port: int = 0
    http_port: int = 0
    once: bool = False
    timeout: float = 60.0
    log_level: LogLevel = LogLevel.WARNING


@dataclass(frozen=True, slots=True)
class Tally:
    """Outcomes so far, from the service's own metrics and the lines already printed."""

    sent: int
    dead_lettered: int
    pending: int

    @classmethod
    def read(
        cls,
        registry: CollectorRegistry,
        *,
        published: int,
        shown_sent: int = 0,
        shown_dead_lettered: int = 0,
    ) -> Tally:
        """The service's counts, but never fewer than the outcomes already printed as lines.

        The catcher prints an email before the service has its 250 and counts it: the status
        line must not trail what is on the screen above it.
        """

        def value(name: str, **labels: str) -> int:
            return int(registry.get_sample_value(name, labels) or 0)

        consumed = value("email_requests_consumed_total")
        counted_dead = sum(value("email_dead_letters_total", reason=r.value) for r in FailureReason)
        sent = max(value("email_sent_total"), shown_sent)
        dead = max(counted_dead, shown_dead_lettered)
        finished = sent + dead + value("email_duplicates_skipped_total")
        # Every request known (published here, or consumed: also those published by hand)
        # that has no outcome yet.
        pending = max(published, consumed) - finished
        return cls(sent=sent, dead_lettered=dead, pending=max(pending, 0))

    def describe(self) -> str:
        return f"sent {self.sent} | dead-lettered {self.dead_lettered} | pending {self.pending}"


class SamplesFailedError(ServiceError):
    """The samples did not reach their expected outcome (in time)."""


class _Progress:
    """The outcome lines (an email caught, a dead letter) and the status line below them."""

    def __init__(self, console: Console, *, published: int, log_level: LogLevel) -> None:
        self.console = console
        self.registry = CollectorRegistry()
        self.published = published
        # At INFO or DEBUG every service event is shown, the raw dead-letter event included.
        self._raw_events = log_level in (LogLevel.DEBUG, LogLevel.INFO)
        self._mails = 0
        self._dead_letters = 0

    def tally(self) -> Tally:
        return Tally.read(
            self.registry,
            published=self.published,
            shown_sent=self._mails,
            shown_dead_lettered=self._dead_letters,
        )

    def refresh(self) -> None:
        self.console.status(self.tally().describe())

    def caught(self, email: CaughtEmail) -> None:
        to = ", ".join(email.recipients)
        self.console.line(f"mail     to {to}: {email.subject!r} -> {_relative(email.path)}")
        self._mails += 1
        self.refresh()

    def on_event(
        self, logger: Any, method: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        """A structlog processor: a dead letter becomes a line like a caught email's."""
        if event.get("event") != "email_dead_lettered":
            return event
        email_id = event.get("email_id") or "?"
        self.console.line(f"dead     {email_id}: {event.get('reason')} - {event.get('error')}")
        self._dead_letters += 1
        self.refresh()
        if not self._raw_events:
            raise structlog.DropEvent
        return event


def run_dev(options: DevOptions, console: Console) -> DevExit:
    """Start everything, publish the samples, report; with ``once``, stop when they are done.

    Raises ConfigError (invalid settings), BrokerStartError or ServiceError.
    """
    progress = _Progress(console, published=len(samples()), log_level=options.log_level)
    configure_logging(
        LogSettings(_env_file=None, level=options.log_level, format=LogFormat.CONSOLE),
        console.stream(),
        processors=[progress.on_event],
    )
    started = time.monotonic()
    with EmbeddedBroker(port=options.kafka_port) as broker:
        console.line(f"kafka    {broker.bootstrap}  (embedded Tansu broker, in memory)")
        session = _DevSession(options, progress, broker.bootstrap, started)
        return asyncio.run(session.run())


class _DevSession:
    def __init__(self, options: DevOptions, progress: _Progress, bootstrap: str, started: float):
        self.options = options
        self.progress = progress
        self.console = progress.console
        self.bootstrap = bootstrap
        self.started = started
        self.samples = samples()
        self.interrupted = asyncio.Event()

    async def run(self) -> DevExit:
        self._handle_signals()
        outbox = self.options.outbox
        catcher = MailCatcher(outbox, port=self.options.smtp_port, on_email=self.progress.caught)
        async with catcher as mail:
            self.console.line(f"smtp     {HOST}:{mail.port}  (mail catcher, writing to {outbox})")
            settings = dev_settings(
                self.bootstrap,
                mail.port,
                http_port=self.options.http_port,
                log_level=self.options.log_level,
            )
            await self._create_topics(settings.kafka)
            async with _service(settings, self.progress.registry) as (running, service):
                url = f"http://{HOST}:{running.http_port}"
                self.console.line(f"service  {url}/metrics  /healthz  /readyz")
                code = await self._exercise(settings, service, mail)
        if not self.options.once:
            self.console.line("stopped")
        return code

    async def _create_topics(self, kafka: KafkaSettings) -> None:
        try:
            await create_topic(self.bootstrap, kafka.topic, _REQUEST_PARTITIONS)
            await create_topic(self.bootstrap, kafka.dlq_topic, 1)
            if kafka.events_enabled:
                await create_topic(self.bootstrap, kafka.events_topic, 1)
        except (KafkaError, TimeoutError) as exc:
            raise ServiceError(f"cannot create the topics: {describe_error(exc)}") from exc
        events = f", {kafka.events_topic}" if kafka.events_enabled else ""
        self.console.line(
            f"topics   {kafka.topic} ({_REQUEST_PARTITIONS}), {kafka.dlq_topic}{events}"
        )

    async def _exercise(
        self, settings: Settings, service: asyncio.Task[bool], mail: MailCatcher
    ) -> DevExit:
        published_at = time.monotonic()
        # --timeout counts from the start of publishing: the samples' whole trip.
        deadline = published_at + self.options.timeout
        await self._publish_samples(settings)
        done = await self._watch(service, deadline=deadline)
        elapsed = time.monotonic() - published_at
        if self.interrupted.is_set():
            self.console.end_status()
            return DevExit.INTERRUPTED if self.options.once else DevExit.OK
        if not self.options.once:
            if not done:
                self.console.line(f"the samples are not finished after {self.options.timeout:g} s")
            self._print_hints(settings)
            await self._watch(service, deadline=None)
            self.console.end_status()
            return DevExit.OK
        self.console.end_status()
        if not done:
            raise SamplesFailedError(
                f"the samples did not reach their outcome within {self.options.timeout:g} s "
                f"({self.progress.tally().describe()})"
            )
        letters = await read_dead_letters(settings.kafka)
        self._print_summary(letters, elapsed)
        self._check_outcomes(mail.caught, letters)
        return DevExit.OK

    async def _publish_samples(self, settings: Settings) -> None:
        kafka = settings.kafka
        async with Publisher(kafka, client_id=f"{kafka.group_id}-dev") as publisher:
            for sample in self.samples:
                value = encode_request(sample.request)
                await publisher.publish(kafka.topic, value, key=sample.id.encode())
        names = ", ".join(sample.describe() for sample in self.samples)
        self.console.line(f"samples  published {len(self.samples)}: {names}")

    async def _watch(self, service: asyncio.Task[bool], *, deadline: float | None) -> bool:
        """Redraw the progress until the samples are done by ``deadline``: False if they are not.

        Without a deadline, until interrupted. The waits between looks end at the deadline, so
        the last look is taken there, not up to a tick after it.
        """
        while not self.interrupted.is_set():
            if service.done():
                service.result()  # raises what stopped it
                raise ServiceError("the service stopped unexpectedly")
            tally = self.progress.tally()
            self.console.status(tally.describe())
            now = time.monotonic()
            if deadline is not None:
                if tally.sent + tally.dead_lettered >= len(self.samples):
                    return True
                if now >= deadline:
                    return False
            wait = _TICK if deadline is None else min(_TICK, deadline - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.interrupted.wait()
        return False

    def _check_outcomes(self, caught: list[CaughtEmail], letters: list[StoredDeadLetter]) -> None:
        delivered = {email.email_id for email in caught}
        dead = {letter.email_id: letter.reason for letter in letters}
        wrong = []
        for sample in self.samples:
            if sample.outcome is Outcome.SENT and sample.id not in delivered:
                wrong.append(f"{sample.id} was not delivered")
            expected_reason = sample.reason.value if sample.reason else None
            if sample.outcome is Outcome.DEAD_LETTERED and dead.get(sample.id) != expected_reason:
                wrong.append(f"{sample.id}: expected a dead letter {expected_reason}")
        if wrong:
            raise SamplesFailedError("unexpected outcome: " + "; ".join(wrong))

    def _print_summary(self, letters: list[StoredDeadLetter], elapsed: float) -> None:
        tally = self.progress.tally()
        total = time.monotonic() - self.started
        self.console.line(
            f"done: {tally.sent} sent, {len(letters)} dead-lettered, in {elapsed:.1f} s "
            f"after publishing ({total:.1f} s in all)"
        )
        for letter in letters:
            self.console.line(
                f"  dead letter {letter.email_id or '?'}: {letter.reason} - {letter.error_message}"
            )
        self.console.line(f"emails are in {self.options.outbox}")

    def _print_hints(self, settings: Settings) -> None:
        env = f"KAFKA_BOOTSTRAP_SERVERS={self.bootstrap}"
        for variable, value, default in (
            ("KAFKA_TOPIC", settings.kafka.topic, "email.requests"),
            ("KAFKA_DLQ_TOPIC", settings.kafka.dlq_topic, "email.requests.dlq"),
            ("KAFKA_GROUP_ID", settings.kafka.group_id, "messaging-service"),
        ):
            if value != default:
                env += f" {variable}={shlex.quote(value)}"
        command = f"{env} {_self_command()}"
        data = shlex.quote('{"name": "You"}')
        for line in (
            "",
            "Publish more requests from another terminal:",
            f"  {command} send --template welcome --to you@example.com --data {data}",
            f"  {command} send --no-validate --to nobody@localhost --subject Hi --text Hi",
            "    (--no-validate publishes an invalid request: a dead letter on purpose)",
            f"Dead letters: {command} dlq list   (or: dlq replay --help)",
            "Press Ctrl-C to stop: requests in flight are finished first.",
            "",
        ):
            self.console.line(line)

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if self.interrupted.is_set() and task is not None:
                task.cancel()  # a second Ctrl-C: stop now, without waiting for the drain
                return
            self.console.line("stopping: finishing requests in flight (Ctrl-C again to force)")
            self.interrupted.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)


def dev_settings(
    bootstrap: str, smtp_port: int, *, http_port: int, log_level: LogLevel
) -> Settings:
    """The environment's settings, with everything that must point at the embedded pieces."""
    return load_settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "auto_offset_reset": "earliest",
            "security_protocol": "PLAINTEXT",
            "sasl_mechanism": None,
            "sasl_username": None,
            "sasl_password": None,
            "ssl_cafile": None,
            **TANSU_GROUP_TIMEOUTS,
        },
        smtp={
            "host": HOST,
            "port": smtp_port,
            "security": "none",
            "username": None,
            "password": None,
        },
        http={"host": HOST, "port": http_port},
        log={"level": log_level, "format": LogFormat.CONSOLE},
    )


@contextlib.asynccontextmanager
async def _service(
    settings: Settings, registry: CollectorRegistry
) -> AsyncIterator[tuple[Running, asyncio.Task[bool]]]:
    """Run the service as a task owned by this block: stopped and drained on exit."""
    stop = asyncio.Event()
    started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_service(settings, stop, registry=registry, on_started=started.set_result)
    )
    try:
        waiting: set[asyncio.Future[Any]] = {started, task}
        done, _ = await asyncio.wait(
            waiting, timeout=_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # raises the start-up error
        if started not in done:
            raise ServiceError(f"the service did not start within {_START_TIMEOUT:g} s")
        yield started.result(), task
    finally:
        stop.set()
        await task  # the drain; re-raises what stopped the service, if anything did


def _self_command() -> str:
    """How this program was started, to show commands that can be pasted as they are."""
    program = Path(sys.argv[0])
    if program.name == "messaging-service":
        return shlex.quote(str(program))
    return f"{shlex.quote(sys.executable)} -m messaging_service"


def _relative(path: Path) -> str:
    """Relative to the working directory when below it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())
