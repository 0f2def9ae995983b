"""Settings: defaults, parsing from the environment, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from messaging_service.config import (
    ConfigError,
    KafkaSecurityProtocol,
    SaslMechanism,
    SmtpSecurity,
    environment_items,
    kafka_client_options,
    load_settings,
)

_VARIABLES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "EMAIL_FROM",
    "EMAIL_WORKER_COUNT",
    "EMAIL_WORKER_BUFFER",
    "EMAIL_MAX_IN_FLIGHT",
    "EMAIL_RETRY_DELAYS",
    "SMTP_SECURITY",
    "SMTP_PASSWORD",
    "LOG_LEVEL",
    "SHUTDOWN_TIMEOUT",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_documented_table() -> None:
    settings = load_settings(env_file=None)
    assert settings.kafka.bootstrap_list == ["localhost:9092"]
    assert settings.kafka.topic == "email.requests"
    assert settings.kafka.dlq_topic == "email.requests.dlq"
    assert settings.kafka.group_id == "messaging-service"
    assert settings.kafka.auto_offset_reset.value == "earliest"
    assert (settings.smtp.host, settings.smtp.port) == ("localhost", 1025)
    assert settings.smtp.security is SmtpSecurity.NONE
    assert settings.smtp.timeout == 10
    assert settings.email.sender == "no-reply@localhost"
    assert (settings.email.worker_count, settings.email.worker_buffer) == (10, 100)
    assert settings.email.max_retries == 3
    assert settings.email.retry_delays == (1.0, 5.0, 10.0)
    assert settings.http.port == 8000
    assert settings.log.format.value == "json"
    assert settings.runtime.shutdown_timeout == 30


def test_environment_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:9092, b:9093")
    monkeypatch.setenv("EMAIL_RETRY_DELAYS", "0.5,2")
    monkeypatch.setenv("EMAIL_FROM", "Shop <shop@example.com>")
    monkeypatch.setenv("SMTP_SECURITY", "starttls")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings(env_file=None)
    assert settings.kafka.bootstrap_list == ["a:9092", "b:9093"]
    assert settings.email.retry_delays == (0.5, 2.0)
    assert settings.email.sender == "Shop <shop@example.com>"
    assert settings.smtp.security is SmtpSecurity.STARTTLS
    assert settings.log.level.value == "DEBUG"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("KAFKA_TOPIC=from-dotenv\nEMAIL_WORKER_COUNT=3\n")
    settings = load_settings(env_file=env_file)
    assert settings.kafka.topic == "from-dotenv"
    assert settings.email.worker_count == 3


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EMAIL_WORKER_COUNT", "zero"),
        ("EMAIL_WORKER_COUNT", "0"),
        ("EMAIL_RETRY_DELAYS", "1,-5"),
        ("EMAIL_RETRY_DELAYS", ","),
        ("EMAIL_FROM", "not an address"),
        ("SMTP_SECURITY", "ssl3"),
        ("SHUTDOWN_TIMEOUT", "-1"),
        ("KAFKA_BOOTSTRAP_SERVERS", " , "),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(env_file=None)


def test_in_flight_limit_must_hold_workers_and_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_WORKER_COUNT", "50")
    monkeypatch.setenv("EMAIL_WORKER_BUFFER", "100")
    monkeypatch.setenv("EMAIL_MAX_IN_FLIGHT", "120")
    with pytest.raises(ConfigError, match="EMAIL_MAX_IN_FLIGHT"):
        load_settings(env_file=None)


def test_secrets_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    settings = load_settings(env_file=None)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "hunter2"


def test_sasl_and_ssl_reach_the_kafka_client_options() -> None:
    settings = load_settings(
        env_file=None,
        kafka={
            "security_protocol": KafkaSecurityProtocol.SASL_SSL,
            "sasl_mechanism": SaslMechanism.SCRAM_SHA_512,
            "sasl_username": "svc",
            "sasl_password": "s3cret",
        },
    )
    options = kafka_client_options(settings.kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "s3cret"
    assert options["ssl_context"] is not None


def test_dedup_defaults_to_memory_and_an_empty_redis_url_means_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEDUP_REDIS_URL", raising=False)
    settings = load_settings(env_file=None)
    assert settings.dedup.redis_url is None
    assert (settings.dedup.ttl, settings.dedup.max_entries) == (86_400, 100_000)
    monkeypatch.setenv("DEDUP_REDIS_URL", "  ")
    assert load_settings(env_file=None).dedup.redis_url is None


def test_redis_url_is_a_secret_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://svc:hunter2@redis.internal:6379/0"
    monkeypatch.setenv("DEDUP_REDIS_URL", url)
    settings = load_settings(env_file=None)
    assert settings.dedup.redis_url is not None
    assert settings.dedup.redis_url.get_secret_value() == url
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert ("DEDUP_REDIS_URL", "**********") in environment_items(settings)


def test_a_bad_redis_url_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEDUP_REDIS_URL", "http://svc:hunter2@redis:6379")
    with pytest.raises(ConfigError, match="DEDUP_REDIS_URL") as raised:
        load_settings(env_file=None)
    assert "hunter2" not in str(raised.value)
