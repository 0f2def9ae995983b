"""Secrets stay secret: the config command, repr() of settings and clients, URL passwords."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from messaging_service.adapters.smtp import SmtpSender
from messaging_service.cli import main
from messaging_service.config import load_settings
from messaging_service.redaction import redact_url_passwords

SMTP_SECRET = "smtp-Secret-91f0"
SASL_SECRET = "sasl-Secret-3c7d"
SECRETS = {
    "SMTP_USERNAME": "svc",
    "SMTP_PASSWORD": SMTP_SECRET,
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "svc",
    "KAFKA_SASL_PASSWORD": SASL_SECRET,
}


def test_the_config_command_masks_every_password() -> None:
    result = CliRunner().invoke(main, ["config"], env=SECRETS)
    assert result.exit_code == 0, result.output
    assert SMTP_SECRET not in result.output
    assert SASL_SECRET not in result.output
    assert "SMTP_PASSWORD='**********'" in result.output
    assert "KAFKA_SASL_PASSWORD='**********'" in result.output


def test_invalid_settings_do_not_echo_a_password() -> None:
    env = {**SECRETS, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 2
    assert "KAFKA_SASL_MECHANISM" in result.output
    assert SMTP_SECRET not in result.output
    assert SASL_SECRET not in result.output


def test_repr_and_str_of_settings_and_the_sender_hide_passwords(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(env_file=None)
    sender = SmtpSender(settings.smtp, max_connections=1)
    shown = " ".join(
        [repr(settings), str(settings), repr(settings.kafka), repr(settings.smtp), repr(sender)]
    )
    shown += repr(vars(settings.smtp)) + repr(settings.model_dump())
    assert SMTP_SECRET not in shown
    assert SASL_SECRET not in shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:**********@cache:6379/0"),
        ("rediss://app:p%40ss@cache/1", "rediss://app:**********@cache/1"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache", "redis://user@cache"),
        ("a,b://u:x@h,c", "a,b://u:**********@h,c"),
        ("plain text: with colon@at", "plain text: with colon@at"),
    ],
)
def test_passwords_in_urls_are_masked(text: str, shown: str) -> None:
    assert redact_url_passwords(text) == shown
