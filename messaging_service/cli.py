"""Command line: ``messaging-service run`` starts the service."""

from __future__ import annotations

import asyncio
import signal
import sys

import click
import structlog

from .app import run_service
from .config import ConfigError, Settings, load_settings
from .errors import ServiceError
from .logging import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="messaging-service")
def main() -> None:
    """Email delivery from Kafka: consume requests, render templates, send over SMTP.

    Configuration comes from environment variables (and a .env file in the working
    directory); see the README for every setting.
    """


@main.command()
def run() -> None:
    """Run the service until SIGTERM or SIGINT, then drain in-flight requests and exit 0."""
    settings = _settings_or_exit()
    configure_logging(settings.log)
    try:
        asyncio.run(_run(settings))
    except ServiceError as exc:
        # A dependency that cannot be reached at start, or templates that do not compile:
        # exit non-zero with one clear line, and let the supervisor restart us.
        structlog.get_logger(__name__).error("service_failed", error=str(exc))
        sys.exit(1)


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log = structlog.get_logger(__name__)

    def request_stop(signum: int) -> None:
        if stop.is_set():
            log.warning("signal_ignored_already_draining", signal=signal.Signals(signum).name)
            return
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    await run_service(settings, stop)


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(f"messaging-service: {exc}", err=True)
        sys.exit(2)
