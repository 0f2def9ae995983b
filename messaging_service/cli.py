"""Command line: ``run`` the service and ``config``; ``dev`` mode and the operator commands.

Commands parse options, load settings and call the modules that do the work; exit codes:
0 done, 1 failed (a dependency, a timeout), 2 bad input (settings, options, request, template).
The dev-mode and operator commands live in their own subpackages and are imported only when
one of them runs, so ``messaging-service run`` loads none of their code.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shlex
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
import structlog

from messaging_service.app import run_service
from messaging_service.child import ChildRole, die_with_supervisor
from messaging_service.config import ConfigError, Settings, environment_items, load_settings
from messaging_service.errors import ServiceError
from messaging_service.supervisor import process_count, run_supervisor
from messaging_service.telemetry import logcontext
from messaging_service.telemetry.logging import configure_logging, flush_logs
from messaging_service.telemetry.tracing import (
    Publish,
    Tracing,
    TracingConfigError,
    tracing_from_environment,
)

T = TypeVar("T")

# Commands defined elsewhere, as "module:attribute", loaded when they are run or listed.
_LAZY_COMMANDS = {
    "dev": "messaging_service.dev.command:dev",
    "send": "messaging_service.ops.commands:send",
    "render": "messaging_service.ops.commands:render",
    "dlq": "messaging_service.ops.commands:dlq",
    "suppression": "messaging_service.ops.commands:suppression",
}


class CommandFailed(click.ClickException):
    """Printed as ``Error: <message>`` on stderr; exit 1."""


class BadInput(click.ClickException):
    """Like CommandFailed, for input that cannot work (settings, request, template): exit 2."""

    exit_code = 2


class _LazyGroup(click.Group):
    """A group whose dev-mode and operator commands are imported only when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="messaging-service")
def main() -> None:
    """Email delivery from Kafka: consume requests, render templates, send over SMTP.

    Configuration comes from environment variables (and a .env file in the working
    directory); see the README for every setting. Start with `messaging-service dev`.
    """


@main.command()
@click.option(
    "--processes",
    metavar="N|auto",
    help="Service processes under one supervisor, one HTTP port [default: SERVICE_PROCESSES, 1]; "
    "auto: the CPUs this process may use.",
)
def run(processes: str | None) -> None:
    """Run the service until SIGTERM or SIGINT, then drain in-flight requests and exit 0.

    Exits 1 if the final offset commit failed (nothing is lost: Kafka delivers it again).
    """
    overrides = {} if processes is None else {"runtime": {"service_processes": processes}}
    settings = settings_or_exit(**overrides)
    role = ChildRole.from_environment(os.environ)
    _supervise_if_asked(settings, role)
    try:
        tracing = tracing_from_environment(
            os.environ,
            group_id=settings.kafka.group_id,
            topics={
                Publish.DEAD_LETTER: settings.kafka.dlq_topic,
                Publish.EVENT: settings.kafka.events_topic,
            },
        )
    except TracingConfigError as exc:
        click.echo(f"messaging-service: {exc}", err=True)
        sys.exit(2)
    configure_logging(settings.log, processors=tracing.log_processors(), batch_writes=True)
    try:
        committed = _run_event_loop(_run(settings, tracing, role))
    except ServiceError as exc:
        # A dependency that cannot be reached at start, or templates that do not compile:
        # exit non-zero with one clear line, and let the supervisor restart us.
        structlog.get_logger(__name__).error("service_failed", error=str(exc))
        sys.exit(1)
    finally:
        tracing.close()  # exports the spans still buffered
        flush_logs()  # the lines of the loop's last moments (atexit would too)
    if not committed:
        # Logged as final_commit_failed; nothing is lost, Kafka delivers it again.
        sys.exit(1)


def _supervise_if_asked(settings: Settings, role: ChildRole | None) -> None:
    """With SERVICE_PROCESSES above 1 (and not a child already): run the supervisor, then exit."""
    count = process_count(settings.runtime.service_processes)
    if role is None and count > 1:
        configure_logging(settings.log)
        sys.exit(run_supervisor(settings, count))


def _run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the service on uvloop where it is installed (not on Windows), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _run(settings: Settings, tracing: Tracing, role: ChildRole | None = None) -> bool:
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
    if role is None:
        return await run_service(settings, stop, tracing=tracing)
    logcontext.bind(child=role.index)
    die_with_supervisor(role, lambda: request_stop(signal.SIGTERM))
    return await run_service(
        settings,
        stop,
        on_started=lambda running: role.write_port(running.http_port),
        shared_metrics=True,
        tracing=tracing,
    )


@main.command("config")
def show_config() -> None:
    """Print the effective settings as environment variables; secrets are masked.

    Exits 2, naming each variable, when the settings are invalid.
    """
    settings = settings_or_exit()
    for variable, value in environment_items(settings):
        click.echo(
            f"# {variable} is unset" if value is None else f"{variable}={shlex.quote(value)}"
        )


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        click.echo(f"messaging-service: {exc}", err=True)
        sys.exit(2)
