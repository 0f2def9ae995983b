"""structlog set-up: JSON events for machines, coloured lines for people, one stream for both."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from messaging_service.config import LogFormat, LogSettings

# Libraries log through the standard library; they are noisy at INFO.
_QUIET_LIBRARIES = ("aiokafka", "aiosmtplib", "aiohttp.access", "mail.log")


def configure_logging(
    settings: LogSettings,
    stream: TextIO | None = None,
    *,
    processors: Sequence[structlog.types.Processor] = (),
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stdout) through the same renderer.

    ``processors`` see each event with its bound context before it is rendered (dev mode
    turns some into lines of its own); one may drop an event with ``structlog.DropEvent``.
    """
    stream = sys.stdout if stream is None else stream
    level = logging.getLevelNamesMapping()[settings.level.value]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *processors,
    ]
    renderer: structlog.types.Processor
    if settings.format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
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
