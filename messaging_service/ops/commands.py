"""Operator commands: ``send``, ``render``, ``dlq list|replay``, ``suppression list|add|remove``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from messaging_service.adapters.kafka_producer import Published
from messaging_service.cli import BadInput, CommandFailed, settings_or_exit
from messaging_service.config import Settings
from messaging_service.core.contract import guess_request_id, parse_request
from messaging_service.core.values import RenderedEmail
from messaging_service.errors import (
    AttachmentError,
    InvalidPayloadError,
    PermanentError,
    ServiceError,
    TemplateError,
)
from messaging_service.ops.deadletters import BUCKETS, StoredDeadLetter
from messaging_service.ops.preview import (
    Preview,
    check_request,
    format_rendered,
    preview_request,
    render_template,
    write_rendered,
)
from messaging_service.ops.replay import ReplayOptions, list_dead_letters, replay
from messaging_service.ops.send import build_request, encode_request, new_request_id, publish_one
from messaging_service.ops.suppression_admin import (
    MemoryStoreError,
    add_suppression,
    describe_suppression,
    list_suppressions,
    remove_suppression,
)

T = TypeVar("T")

_BUILD_OPTIONS = ("template", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "data")


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


@click.command()
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
    settings = settings_or_exit()
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


@click.command()
@click.argument("template", required=False)
@click.option(
    "--data",
    callback=_json_object,
    default="{}",
    help="Template variables: JSON object or @FILE.",
)
@click.option("--locale", help="BCP 47 locale, e.g. de-AT (falls back to de, then the default).")
@click.option(
    "--file",
    "file_",
    type=click.File("rb"),
    help="Render this JSON request ('-': stdin): template or bodies, attachments, headers.",
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
    help="Write OUT/NAME/subject.txt, body.txt, body.html and attachments/ instead of printing.",
)
def render(
    template: str | None,
    data: dict[str, Any],
    locale: str | None,
    file_: Any,
    templates_dir: Path | None,
    out: Path | None,
) -> None:
    """Render TEMPLATE with --data (or a whole request with --file) as the service would,
    without sending anything; attachments are listed, and written with --out."""
    if (template is None) == (file_ is None):
        raise click.UsageError("give a TEMPLATE or --file REQUEST.json (not both)")
    try:
        if file_ is not None:
            request = parse_request(file_.read())
            preview: RenderedEmail | Preview = preview_request(request, templates_dir=templates_dir)
            name = request.template or "raw"
        else:
            assert template is not None
            preview = render_template(template, data, templates_dir=templates_dir, locale=locale)
            name = template
    except (TemplateError, InvalidPayloadError, AttachmentError) as exc:
        raise BadInput(str(exc)) from exc
    except ValidationError as exc:  # --locale
        raise BadInput(f"--locale: {exc.errors()[0]['msg']}") from exc
    if out is None:
        click.echo(format_rendered(preview), nl=False)
        return
    for path in write_rendered(preview, out, name):
        click.echo(f"wrote {path}")


@click.group()
def dlq() -> None:
    """Dead letters on KAFKA_DLQ_TOPIC: list them, or replay them to KAFKA_TOPIC."""


_GROUP_HELP = "Replay progress group prefix [default: <KAFKA_GROUP_ID>-dlq-replay]."


@dlq.command("list")
@click.option("--group", help=_GROUP_HELP)
def dlq_list(group: str | None) -> None:
    """Print every dead letter (partition:offset, id, reason, SMTP code, message).

    Those an earlier `dlq replay` moved are marked [replayed]. Nothing is changed.
    """
    settings = settings_or_exit()
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
    settings = settings_or_exit()
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


@click.group()
def suppression() -> None:
    """The suppression list shared in Redis (DEDUP_REDIS_URL): list, add or remove addresses.

    Uses the same settings as `run`. With the in-memory list (no DEDUP_REDIS_URL) a separate
    process cannot see it, so these commands exit 2.
    """


@suppression.command("list")
def suppression_list() -> None:
    """Print every suppressed address with its reason, code, reply and expiry."""
    settings = settings_or_exit()
    entries = _suppression_call(settings, list_suppressions(settings))
    for entry in entries:
        click.echo(describe_suppression(entry))
    click.echo(f"{len(entries)} suppressed addresses")


@suppression.command("add")
@click.argument("address")
@click.option("--reason", default="manual", show_default=True, help="Why it is suppressed.")
def suppression_add(address: str, reason: str) -> None:
    """Suppress ADDRESS (for EMAIL_SUPPRESSION_TTL seconds; 0: until removed)."""
    settings = settings_or_exit()
    try:
        entry = _suppression_call(settings, add_suppression(settings, address, reason=reason))
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    click.echo(f"suppressed {describe_suppression(entry)}")


@suppression.command("remove")
@click.argument("address")
def suppression_remove(address: str) -> None:
    """Take ADDRESS off the list, so it is mailed again. Exit 1 if it was not on it."""
    settings = settings_or_exit()
    if not _suppression_call(settings, remove_suppression(settings, address)):
        raise CommandFailed(f"{address} is not on the suppression list")
    click.echo(f"removed {address} from the suppression list")


def _suppression_call(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except MemoryStoreError as exc:
        raise BadInput(str(exc)) from exc
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from exc
