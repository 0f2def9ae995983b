"""structlog set-up: JSON events for machines, coloured lines for people, one stream for both."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO, cast

import structlog

from messaging_service.config import LogFormat, LogSettings
from messaging_service.telemetry.logcontext import merge_fields

# Libraries log through the standard library; they are noisy at INFO.
_QUIET_LIBRARIES = ("aiokafka", "aiosmtplib", "aiohttp.access", "mail.log")


def configure_logging(
    settings: LogSettings,
    stream: TextIO | None = None,
    *,
    processors: Sequence[structlog.types.Processor] = (),
    batch_writes: bool = False,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stdout) through the same renderer.

    ``processors`` see each event with its bound context before it is rendered (dev mode
    turns some into lines of its own); one may drop an event with ``structlog.DropEvent``.
    With ``batch_writes`` (the service), lines are written in batches at most 10 ms after
    they were logged (``LoopBatchedStream``) instead of one write per line.
    """
    stream = sys.stdout if stream is None else stream
    if batch_writes:
        stream = cast(TextIO, LoopBatchedStream(stream))
    level = logging.getLevelNamesMapping()[settings.level.value]
    shared: list[structlog.types.Processor] = [
        merge_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *processors,
    ]
    renderer: structlog.types.Processor
    if settings.format is LogFormat.JSON:
        renderer = render_json
        shared.append(structlog.processors.format_exc_info)
    else:
        # Colours only for a terminal: escape codes would litter files and CI logs.
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> Any:
    """A structlog logger; events carry whatever the current context has bound."""
    return structlog.get_logger(name)


def _unserialisable(value: object) -> object:
    """What structlog's JSONRenderer writes for a value JSON has no type for."""
    custom = getattr(value, "__structlog__", None)
    return custom() if callable(custom) else repr(value)


# One encoder for every event (``json.dumps`` with ``default`` builds a new one per call).
_JSON = json.JSONEncoder(default=_unserialisable)


def render_json(_logger: object, _method: str, event: structlog.types.EventDict) -> str:
    """The event as one line of JSON, as structlog's JSONRenderer writes it."""
    return _JSON.encode(event)


# How long a logged line may wait to be written with the lines logged after it.
FLUSH_DELAY = 0.01
_BATCHED: list[LoopBatchedStream] = []


def flush_logs() -> None:
    """Write every line still kept by a batched stream (once the event loop has ended)."""
    for stream in _BATCHED:
        stream.flush_now()


class LoopBatchedStream:
    """A text stream whose lines are written together, at most ``FLUSH_DELAY`` after the first.

    ``write`` keeps the text; ``flush`` (which every logger calls after each line) asks the
    running loop to write what was kept ``FLUSH_DELAY`` later, so a busy service makes one
    system call for the lines of many requests. Without a running loop (start-up, shutdown,
    other threads) it writes at once; at exit whatever is kept is written. A process killed
    with SIGKILL loses at most the last ``FLUSH_DELAY`` of its lines (its state is in Kafka's
    commits, not in its log).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._kept: list[str] = []
        self._lock = threading.Lock()
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        _BATCHED.append(self)
        atexit.register(self.flush_now)

    def write(self, text: str) -> int:
        with self._lock:
            self._kept.append(text)
        return len(text)

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_now()
            return
        if self._scheduled_on is not loop:
            # Also when a flush was asked on a loop that stopped before it ran.
            self._scheduled_on = loop
            loop.call_later(FLUSH_DELAY, self._flush_scheduled)

    def flush_now(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, []
        if kept:
            self._stream.write("".join(kept))
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def _flush_scheduled(self) -> None:
        self._scheduled_on = None
        self.flush_now()
