"""Settings: defaults, parsing from the environment, and errors that name the variable."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, cast

import pytest
import trustme

from messaging_service.adapters.kafka_consumer import KafkaRequestConsumer
from messaging_service.adapters.kafka_options import kafka_client_options
from messaging_service.adapters.kafka_producer import Publisher
from messaging_service.config import (
    ConfigError,
    KafkaSecurityProtocol,
    KafkaSettings,
    SaslMechanism,
    SmtpSecurity,
    environment_items,
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


# Kafka security options, as the real aiokafka clients hold them (constructed, never started).


def _secured_kafka(tmp_path: Path, **overrides: Any) -> KafkaSettings:
    ca = trustme.CA()
    ca_file = tmp_path / "kafka-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    values: dict[str, Any] = {
        "security_protocol": KafkaSecurityProtocol.SASL_SSL,
        "sasl_mechanism": SaslMechanism.SCRAM_SHA_256,
        "sasl_username": "svc",
        "sasl_password": "kafka-secret-9d2c",
        "ssl_cafile": ca_file,
    }
    values.update(overrides)
    return load_settings(env_file=None, kafka=values).kafka


def _client_of(adapter: Any) -> Any:
    """The AIOKafkaClient inside a service adapter (private attributes; no public accessor)."""
    if isinstance(adapter, KafkaRequestConsumer):
        return adapter._consumer._client
    assert isinstance(adapter, Publisher)
    return adapter._producer.client


@pytest.mark.parametrize("adapter", ["consumer", "producer"])
async def test_sasl_ssl_settings_reach_the_aiokafka_clients(tmp_path: Path, adapter: str) -> None:
    kafka = _secured_kafka(tmp_path)
    built: Any = (
        KafkaRequestConsumer(kafka, on_assigned=_ignore, on_revoked=_ignore)
        if adapter == "consumer"
        else Publisher(kafka, client_id="test")
    )
    client = _client_of(built)

    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == "SCRAM-SHA-256"
    assert client._sasl_plain_username == "svc"
    assert client._sasl_plain_password == "kafka-secret-9d2c"
    context = client._ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    # Only the configured CA is trusted, not the system's.
    [trusted] = context.get_ca_certs()
    subject = cast("tuple[tuple[tuple[str, str]], ...]", trusted["subject"])
    assert dict(item[0] for item in subject)["organizationName"].startswith("trustme")
    assert "kafka-secret-9d2c" not in repr(kafka)
    await _dispose(built)


async def test_plaintext_clients_have_no_tls_or_sasl() -> None:
    kafka = load_settings(env_file=None).kafka
    publisher = Publisher(kafka, client_id="test")
    client = _client_of(publisher)
    assert client._security_protocol == "PLAINTEXT"
    assert client._ssl_context is None
    assert client._sasl_plain_password is None
    await _dispose(publisher)


async def test_ssl_without_a_ca_file_verifies_against_the_system_cas() -> None:
    kafka = load_settings(env_file=None, kafka={"security_protocol": "SSL"}).kafka
    publisher = Publisher(kafka, client_id="test")
    context = _client_of(publisher)._ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    await _dispose(publisher)


@pytest.mark.parametrize(
    ("kafka", "variable"),
    [
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p"},
            "KAFKA_SASL_MECHANISM",
        ),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "KAFKA_SASL_USERNAME"),
        (
            {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"},
            "KAFKA_SASL_MECHANISM",
        ),
        ({"ssl_cafile": __file__}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_kafka_security_settings_that_would_be_ignored_are_refused(
    kafka: dict[str, Any], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(env_file=None, kafka=kafka)


@pytest.mark.parametrize("section", ["kafka", "smtp"])
def test_a_ca_file_that_is_missing_or_not_pem_is_refused_at_start(
    tmp_path: Path, section: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    field = "ssl_cafile" if section == "kafka" else "ca_file"
    variable = "KAFKA_SSL_CAFILE" if section == "kafka" else "SMTP_CA_FILE"
    for path, problem in (
        (tmp_path / "missing.pem", "does not exist"),
        (garbage, "not a readable PEM"),
    ):
        with pytest.raises(ConfigError, match=f"{variable}: .*{problem}"):
            load_settings(env_file=None, **{section: {field: path}})


def test_smtp_ca_file_without_tls_is_refused(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    with pytest.raises(ConfigError, match="SMTP_CA_FILE: is set but SMTP_SECURITY=none"):
        load_settings(env_file=None, smtp={"ca_file": ca_file})
    settings = load_settings(env_file=None, smtp={"ca_file": ca_file, "security": "starttls"})
    assert settings.smtp.ca_file == ca_file


async def _ignore(partitions: Any) -> None:
    return None


async def _dispose(adapter: Any) -> None:
    """Stop the never-started aiokafka object, so it does not warn when collected."""
    inner = adapter._consumer if isinstance(adapter, KafkaRequestConsumer) else adapter._producer
    await inner.stop()


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


@pytest.mark.parametrize(
    "url", ["redis://svc:hunter2@redis:notaport/0", "redis://svc:hunter2@redis:6379/zero"]
)
def test_a_redis_url_with_a_bad_port_or_database_stops_the_start_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DEDUP_REDIS_URL", url)
    with pytest.raises(ConfigError, match=r"DEDUP_REDIS_URL: .*not a valid Redis URL") as raised:
        load_settings(env_file=None)
    assert "hunter2" not in str(raised.value)
