"""Operator commands against a real broker: send, dlq list, dlq replay.

The tests are synchronous: each command runs its own event loop (asyncio.run), and the test
set-up and checks use asyncio.run too.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from messaging_service.adapters.dead_letters import dead_letter_headers
from messaging_service.cli import main
from messaging_service.core.values import DeadLetter, FailureReason, InboundRecord
from messaging_service.errors import InvalidPayloadError, SmtpRejectedError
from support.kafka import Broker, Record, Topics, create_topic, produce, read_all, unique
from support.service import request_payload

pytestmark = pytest.mark.integration

Cli = Callable[..., Result]


@pytest.fixture
def names(broker: Broker) -> Topics:
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    asyncio.run(create_topic(broker.bootstrap, topics.requests, partitions=3))
    asyncio.run(create_topic(broker.bootstrap, topics.dlq, partitions=1))
    return topics


@pytest.fixture
def cli(broker: Broker, names: Topics, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    """Runs a command with settings pointing at this test's topics (and no .env)."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith(("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_")):
            monkeypatch.delenv(variable)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_TOPIC": names.requests,
        "KAFKA_DLQ_TOPIC": names.dlq,
        "KAFKA_GROUP_ID": names.group,
        "KAFKA_REQUEST_TIMEOUT_MS": "10000",
    }

    def invoke(*args: str, input: str | None = None, **overrides: str) -> Result:
        return CliRunner().invoke(main, list(args), env={**env, **overrides}, input=input)

    return invoke


def records(broker: Broker, topic: str, expected: int | None = None) -> list[Record]:
    return asyncio.run(read_all(broker.bootstrap, topic, expected=expected))


def test_send_publishes_the_request_and_prints_where_it_went(
    broker: Broker, names: Topics, cli: Cli
) -> None:
    result = cli(
        "send",
        "--template", "welcome",
        "--to", "ada@example.com",
        "--to", "Bob <bob@example.com>",
        "--data", '{"name": "Ada"}',
        "--id", "order-1",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    [record] = records(broker, names.requests, expected=1)
    assert json.loads(record.value) == {
        "id": "order-1",
        "template": "welcome",
        "to": ["ada@example.com", "Bob <bob@example.com>"],
        "data": {"name": "Ada"},
    }
    assert record.key == b"order-1"
    assert result.output == (
        f"published id=order-1 topic={names.requests} "
        f"partition={record.partition} offset={record.offset}\n"
    )


def test_send_generates_an_id_and_publishes_raw_bodies(
    broker: Broker, names: Topics, cli: Cli
) -> None:
    result = cli("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "Hello")

    assert result.exit_code == 0, result.output
    [record] = records(broker, names.requests, expected=1)
    payload = json.loads(record.value)
    assert payload["id"].startswith("cli-")
    assert payload == {
        "id": payload["id"],
        "to": ["ada@example.com"],
        "subject": "Hi",
        "text": "Hello",
    }
    assert f"published id={payload['id']} " in result.output


def test_send_refuses_an_invalid_request_and_publishes_nothing(
    broker: Broker, names: Topics, cli: Cli
) -> None:
    result = cli("send", "--template", "welcome", "--to", "ada@localhost")

    assert result.exit_code == 2
    assert "invalid request" in result.output
    assert records(broker, names.requests) == []


def test_send_file_publishes_its_bytes_unchanged_and_no_validate_lets_invalid_ones_through(
    broker: Broker, names: Topics, cli: Cli, tmp_path: Path
) -> None:
    valid = request_payload("from-file")
    (tmp_path / "request.json").write_bytes(valid)
    invalid = b'{"id": "typo", "tempalte": "welcome", "to": "ada@example.com"}'

    first = cli("send", "--file", str(tmp_path / "request.json"))
    second = cli("send", "--file", "-", "--no-validate", input=invalid.decode())

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    published = records(broker, names.requests, expected=2)
    assert sorted((r.key, r.value) for r in published) == [
        (b"from-file", valid),
        (b"typo", invalid),
    ]


def dead_letters(names: Topics) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """Three dead letters as the service writes them: two smtp_rejected, one invalid_payload."""
    reasons = [
        (FailureReason.SMTP_REJECTED, SmtpRejectedError("550 5.1.1 no such user", code=550)),
        (FailureReason.INVALID_PAYLOAD, InvalidPayloadError("to.0: not an address")),
        (FailureReason.SMTP_REJECTED, SmtpRejectedError("554 5.7.1 spam", code=554)),
    ]
    letters = []
    for index, (reason, error) in enumerate(reasons):
        original = InboundRecord(
            topic=names.requests,
            partition=1,
            offset=40 + index,
            timestamp_ms=1_700_000_000_000,
            key=f"key-{index}".encode(),
            value=request_payload(f"dl-{index}"),
            headers=(("trace", f"t-{index}".encode()),),
        )
        code = error.code if isinstance(error, SmtpRejectedError) else None
        letter = DeadLetter(original, reason, error, attempts=1, smtp_code=code)
        headers = dead_letter_headers(letter, group_id=names.group)
        letters.append((original.key or b"", original.value or b"", headers))
    return letters


def publish_dead_letters(broker: Broker, names: Topics) -> None:
    async def publish() -> None:
        for key, value, headers in dead_letters(names):
            await produce(broker.bootstrap, names.dlq, [value], keys=[key], headers=headers)

    asyncio.run(publish())


def moved_ids(result: Result) -> list[str]:
    """The ids in lines like ``moved 0:2 id=dl-2 reason=... -> topic=...``."""
    lines = result.output.splitlines()
    return [line.split()[2].removeprefix("id=") for line in lines if " id=" in line]


def test_dlq_replay_by_reason_moves_each_dead_letter_once_with_its_original_record(
    broker: Broker, names: Topics, cli: Cli
) -> None:
    publish_dead_letters(broker, names)

    dry = cli("dlq", "replay", "--reason", "smtp_rejected", "--dry-run")
    first = cli("dlq", "replay", "--reason", "smtp_rejected", "--limit", "1")
    rest = cli("dlq", "replay", "--reason", "smtp_rejected")
    again = cli("dlq", "replay", "--reason", "smtp_rejected")

    for result in (dry, first, rest, again):
        assert result.exit_code == 0, result.output
    assert [line.split()[3] for line in dry.output.splitlines()[:-1]] == ["id=dl-0", "id=dl-2"]
    assert dry.output.splitlines()[-1].startswith("would move 2 dead letters")
    assert moved_ids(first) == ["dl-0"], "the dry run neither moved nor committed anything"
    assert moved_ids(rest) == ["dl-2"]
    assert "skipped: 1 of other reasons" in rest.output
    assert moved_ids(again) == []
    assert again.output.startswith("moved 0 dead letters")

    replayed = records(broker, names.requests)
    assert [(r.key, r.value, list(r.headers)) for r in replayed] == [
        (b"key-0", request_payload("dl-0"), [("trace", b"t-0")]),
        (b"key-2", request_payload("dl-2"), [("trace", b"t-2")]),
    ]  # all three share the key's partition, in the order they were moved


def test_a_replay_of_every_reason_moves_what_a_filtered_replay_skipped_and_nothing_else(
    broker: Broker, names: Topics, cli: Cli
) -> None:
    publish_dead_letters(broker, names)

    filtered = cli("dlq", "replay", "--reason", "invalid_payload")
    everything = cli("dlq", "replay")
    again = cli("dlq", "replay")

    assert moved_ids(filtered) == ["dl-1"]
    assert moved_ids(everything) == ["dl-0", "dl-2"]
    assert "1 already replayed" in everything.output
    assert moved_ids(again) == []
    assert len(records(broker, names.requests)) == 3


def test_dlq_list_shows_each_dead_letter_and_whether_it_was_replayed(
    broker: Broker, names: Topics, cli: Cli
) -> None:
    publish_dead_letters(broker, names)
    cli("dlq", "replay", "--reason", "invalid_payload")

    result = cli("dlq", "list")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "0:0  id=dl-0  reason=smtp_rejected  code=550  550 5.1.1 no such user",
        "0:1  id=dl-1  reason=invalid_payload  code=-  to.0: not an address  [replayed]",
        "0:2  id=dl-2  reason=smtp_rejected  code=554  554 5.7.1 spam",
        f"3 dead letters in {names.dlq}, 1 replayed",
    ]


def test_dlq_commands_report_a_missing_topic_with_exit_1(cli: Cli) -> None:
    result = cli("dlq", "replay", KAFKA_DLQ_TOPIC=unique("missing"))

    assert result.exit_code == 1
    assert "does not exist" in result.output
