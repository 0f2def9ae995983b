"""Settings read from the environment (and an optional .env file), grouped by concern."""

from __future__ import annotations

import enum
import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .addresses import parse_address

DEFAULT_ENV_FILE = Path(".env")


class ConfigError(Exception):
    """Settings are invalid; the message names every offending variable."""


class OffsetReset(enum.StrEnum):
    EARLIEST = "earliest"
    LATEST = "latest"


class KafkaSecurityProtocol(enum.StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(enum.StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class SmtpSecurity(enum.StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def _section(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
        populate_by_name=True,
    )


class KafkaSettings(BaseSettings):
    model_config = _section("KAFKA_")

    bootstrap_servers: str = "localhost:9092"
    topic: str = Field(default="email.requests", min_length=1)
    dlq_topic: str = Field(default="email.requests.dlq", min_length=1)
    group_id: str = Field(default="messaging-service", min_length=1)
    auto_offset_reset: OffsetReset = OffsetReset.EARLIEST
    security_protocol: KafkaSecurityProtocol = KafkaSecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    # None keeps aiokafka's own defaults; tests against the embedded broker lower them.
    session_timeout_ms: int | None = Field(default=None, gt=0)
    heartbeat_interval_ms: int | None = Field(default=None, gt=0)
    max_poll_interval_ms: int | None = Field(default=None, gt=0)
    rebalance_timeout_ms: int | None = Field(default=None, gt=0)
    commit_interval_ms: int = Field(default=1000, gt=0)
    request_timeout_ms: int = Field(default=30_000, gt=0)
    # Fetch buffers are most of the memory with a backlog waiting: aiokafka's defaults (50 MiB
    # per fetch, 1 MiB per partition) are sized for throughput of tiny records, not for this.
    fetch_max_bytes: int = Field(default=1_048_576, gt=0)
    max_partition_fetch_bytes: int = Field(default=262_144, gt=0)
    # How long the broker may hold a fetch waiting for data: bounds the latency of a request
    # that arrives on an idle topic (aiokafka's default is 500 ms).
    fetch_max_wait_ms: int = Field(default=100, ge=0)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_not_empty(cls, value: str) -> str:
        servers = [part.strip() for part in value.split(",") if part.strip()]
        if not servers:
            raise ValueError("at least one host:port is required")
        return ",".join(servers)

    @property
    def bootstrap_list(self) -> list[str]:
        return self.bootstrap_servers.split(",")


class SmtpSettings(BaseSettings):
    model_config = _section("SMTP_")

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1025, gt=0, lt=65536)
    security: SmtpSecurity = SmtpSecurity.NONE
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0)


class EmailSettings(BaseSettings):
    model_config = _section("EMAIL_")

    sender: str = Field(default="no-reply@localhost", validation_alias="EMAIL_FROM")
    worker_count: int = Field(default=10, ge=1, le=10_000)
    worker_buffer: int = Field(default=100, ge=1, le=1_000_000)
    max_in_flight: int = Field(default=1000, ge=1)
    max_retries: int = Field(default=3, ge=0, le=100)
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 5.0, 10.0)
    templates_dir: Path | None = None

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            if not parts:
                raise ValueError("give at least one delay in seconds, e.g. 1,5,10")
            return tuple(parts)
        return value

    @field_validator("retry_delays")
    @classmethod
    def _delays_non_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("give at least one delay in seconds, e.g. 1,5,10")
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be >= 0 seconds")
        return value

    @field_validator("sender")
    @classmethod
    def _sender_is_address(cls, value: str) -> str:
        parse_address(value, allow_special_use=True)
        return value

    @field_validator("templates_dir")
    @classmethod
    def _templates_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value


class HttpSettings(BaseSettings):
    model_config = _section("HTTP_")

    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, lt=65536)


class LogSettings(BaseSettings):
    model_config = _section("LOG_")

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.JSON

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class DedupSettings(BaseSettings):
    """The record of sent request ids that stops a redelivered request being sent again."""

    model_config = _section("DEDUP_")

    # The URL may carry a password, so the whole URL is a secret: masked in `config`, never logged.
    redis_url: SecretStr | None = None
    ttl: int = Field(default=86_400, ge=1)
    max_entries: int = Field(default=100_000, ge=1)
    key_prefix: str = "messaging-service:sent:"
    redis_timeout: float = Field(default=0.5, gt=0)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        # The message must not echo the value: it may hold a password.
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class RuntimeSettings(BaseSettings):
    model_config = _section("")

    shutdown_timeout: float = Field(default=30.0, gt=0)


class Settings(BaseModel):
    """Every section of the configuration, validated together."""

    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings
    smtp: SmtpSettings
    email: EmailSettings
    http: HttpSettings
    log: LogSettings
    runtime: RuntimeSettings
    dedup: DedupSettings

    SECTIONS: ClassVar[dict[str, type[BaseSettings]]] = {
        "kafka": KafkaSettings,
        "smtp": SmtpSettings,
        "email": EmailSettings,
        "http": HttpSettings,
        "log": LogSettings,
        "runtime": RuntimeSettings,
        "dedup": DedupSettings,
    }


def load_settings(env_file: Path | None = DEFAULT_ENV_FILE, **overrides: Any) -> Settings:
    """Read every section from the environment; raise ConfigError naming each bad variable.

    ``overrides`` maps a section name to a dict of field values (used by tests and the CLI).
    """
    sections: dict[str, BaseSettings] = {}
    problems: list[str] = []
    for name, cls in Settings.SECTIONS.items():
        try:
            sections[name] = cls(_env_file=env_file, **overrides.get(name, {}))
        except ValidationError as exc:
            problems.extend(_describe(cls, exc))
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    settings = Settings.model_validate(sections)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    email = settings.email
    floor = email.worker_count + email.worker_buffer
    if email.max_in_flight < floor:
        raise ConfigError(
            "invalid settings:\n  EMAIL_MAX_IN_FLIGHT: must be at least "
            f"EMAIL_WORKER_COUNT + EMAIL_WORKER_BUFFER ({floor}), got {email.max_in_flight}"
        )


def _describe(cls: type[BaseSettings], exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        lines.append(f"{_variable(cls, field)}: {error['msg']}")
    return lines


def _variable(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of ``field`` (or of its alias, as errors report it)."""
    aliases = {
        info.validation_alias
        for info in cls.model_fields.values()
        if isinstance(info.validation_alias, str)
    }
    if field in aliases:
        return field.upper()
    info = cls.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias.upper()
    return (str(cls.model_config.get("env_prefix", "")) + field).upper()


def environment_items(settings: Settings) -> list[tuple[str, str | None]]:
    """Every setting as (environment variable, value as text); secrets masked, None if unset."""
    items = []
    for name, cls in Settings.SECTIONS.items():
        section = getattr(settings, name)
        for field in cls.model_fields:
            items.append((_variable(cls, field), _as_text(getattr(section, field))))
    return items


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return str(value)  # the mask, never the secret
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple):
        return ",".join(str(_as_text(item)) for item in value)
    return str(value)


def kafka_client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer and the producer."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_list,
        "security_protocol": kafka.security_protocol.value,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL):
        options["ssl_context"] = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
    if kafka.sasl_mechanism is not None:
        options["sasl_mechanism"] = kafka.sasl_mechanism.value
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options
