"""Settings read from the environment (and an optional .env file), grouped by concern."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from messaging_service.core.addresses import normalise_domains, parse_address
from messaging_service.redaction import redact_url_passwords
from messaging_service.tls import tls_client_context

DEFAULT_ENV_FILE = Path(".env")
# The password part of a URL's user information: scheme://user:PASSWORD@host
# aiokafka's session timeout, which is also its rebalance timeout when none is set.
_AIOKAFKA_SESSION_TIMEOUT_MS = 10_000


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
    # The priority lane's topic, consumed in the same group as ``topic`` (unset or empty: no
    # priority lane, and the service runs exactly as with one topic).
    priority_topic: str | None = None

    @field_validator("priority_topic")
    @classmethod
    def _empty_topic_is_off(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    # Outcome events (sent, deferred, failed, duplicate, suppressed); empty turns them off.
    events_topic: str = "email.events"
    # How long the events producer waits to fill a batch. A request waits for its final
    # event's acknowledgement without holding a worker, so this costs latency, not throughput,
    # and saves a produce request (and its CPU) per event under load.
    events_linger_ms: int = Field(default=5, ge=0, le=1000)
    group_id: str = Field(default="messaging-service", min_length=1)
    # Static group membership (KIP-345): a member that comes back under the same id within the
    # session timeout gets its partitions back without a rebalance. `run --processes N` sets it
    # per child (SERVICE_INSTANCE_NAME plus the child's index).
    group_instance_id: str | None = Field(default=None, min_length=1)
    auto_offset_reset: OffsetReset = OffsetReset.EARLIEST
    security_protocol: KafkaSecurityProtocol = KafkaSecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    @field_validator("ssl_cafile")
    @classmethod
    def _cafile_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            tls_client_context(value)  # raises ValueError naming the problem
        return value

    # None keeps aiokafka's own defaults; tests against the embedded broker lower them.
    session_timeout_ms: int | None = Field(default=None, gt=0)
    heartbeat_interval_ms: int | None = Field(default=None, gt=0)
    max_poll_interval_ms: int | None = Field(default=None, gt=0)
    rebalance_timeout_ms: int | None = Field(default=None, gt=0)
    commit_interval_ms: int = Field(default=1000, gt=0)
    # How long a revocation waits for the queued and running requests of the partitions it
    # takes away before committing and letting go (0: commit what is finished, drop the rest).
    # Capped at half the rebalance timeout: see revocation_timeout.
    revocation_timeout_ms: int = Field(default=5000, ge=0)
    request_timeout_ms: int = Field(default=30_000, gt=0)
    # The most one commit, one fetch (beyond its own wait) or one look-up of committed offsets
    # may take: with the broker gone, aiokafka would otherwise retry finding the coordinator
    # for ever. A periodic commit that times out is tried again at the next interval.
    call_timeout_ms: int = Field(default=5000, gt=0)
    # Fetch buffers are most of the memory with a backlog waiting: aiokafka's defaults (50 MiB
    # per fetch, 1 MiB per partition) are sized for throughput of tiny records, not for this.
    fetch_max_bytes: int = Field(default=1_048_576, gt=0)
    max_partition_fetch_bytes: int = Field(default=262_144, gt=0)
    # How long the broker may hold a fetch waiting for data: bounds the latency of a request
    # that arrives on an idle topic (aiokafka's default is 500 ms).
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    # The offset map: finished offsets above the commit point, written into each commit's
    # metadata in at most this many characters (0: off), so a restart or a new owner skips
    # them. It must stay within the broker's offset.metadata.max.bytes (4096 by default);
    # what does not fit is left out, lowest offsets kept (docs/operations.md).
    offset_map_max_bytes: int = Field(default=3072, ge=0, le=1_048_576)

    @field_validator("events_topic")
    @classmethod
    def _events_topic_trimmed(cls, value: str) -> str:
        return value.strip()

    @property
    def events_enabled(self) -> bool:
        return bool(self.events_topic)

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

    @property
    def revocation_timeout(self) -> float:
        """Seconds a revocation may wait, at most half the group's rebalance timeout.

        The member must rejoin within the rebalance timeout or the group goes on without it,
        and its commit after the wait would then be refused.
        """
        rebalance = (
            self.rebalance_timeout_ms or self.session_timeout_ms or _AIOKAFKA_SESSION_TIMEOUT_MS
        )
        return min(self.revocation_timeout_ms, rebalance // 2) / 1000


class SmtpSettings(BaseSettings):
    model_config = _section("SMTP_")

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1025, gt=0, lt=65536)
    security: SmtpSecurity = SmtpSecurity.NONE
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0)
    # Relay outages: this many unusable attempts in a row (no connection, timeout, refused
    # session) open the circuit; while open, the relay is probed every probe_interval seconds.
    circuit_threshold: int = Field(default=3, ge=1, le=1000)
    probe_interval: float = Field(default=2.0, gt=0)
    # Trust only this CA bundle (PEM) for the relay's certificate instead of the system CAs:
    # for private relays. There is deliberately no switch to turn verification off; a
    # self-signed relay certificate is trusted by naming the certificate itself here.
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _ca_file_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            tls_client_context(value)  # raises ValueError naming the problem
        return value


class EmailSettings(BaseSettings):
    model_config = _section("EMAIL_")

    sender: str = Field(default="no-reply@localhost", validation_alias="EMAIL_FROM")
    worker_count: int = Field(default=10, ge=1, le=10_000)
    worker_buffer: int = Field(default=100, ge=1, le=1_000_000)
    max_in_flight: int = Field(default=1000, ge=1)
    # The most of the workers' picks the priority lane takes while normal requests wait.
    priority_share: float = Field(default=0.9, gt=0, lt=1)
    max_retries: int = Field(default=3, ge=0, le=100)
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 5.0, 10.0)
    templates_dir: Path | None = None
    # Emails per second for the whole process, all workers together; 0 = no limit.
    rate_limit: float = Field(default=0.0, ge=0)

    @field_validator("rate_limit")
    @classmethod
    def _rate_at_least_one(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("give 0 (no limit) or at least 1 email per second")
        return value

    # Limits on untrusted input: a request beyond one is dead-lettered as invalid_payload.
    max_record_bytes: int = Field(default=1_048_576, ge=1)
    max_recipients: int = Field(default=50, ge=1)
    max_data_depth: int = Field(default=10, ge=1, le=100)
    max_data_bytes: int = Field(default=65_536, ge=2)
    render_timeout: float = Field(default=1.0, gt=0)
    # Recipient domains a request may address (to, cc, bcc); empty: any. "example.com" also
    # admits its subdomains ("eu.example.com"), never look-alikes ("badexample.com").
    allowed_domains: Annotated[tuple[str, ...], NoDecode] = ()
    # Attachments: all of one email's together, decoded; URL attachments are fetched over
    # HTTPS only from these hosts (none by default: URL attachments are refused).
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    attachment_url_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    attachment_ca_file: Path | None = None
    attachment_fetch_timeout: float = Field(default=10.0, gt=0)
    # The suppression list: recipients the relay refused as non-existent (hard bounces at RCPT)
    # are not mailed again for suppression_ttl seconds (0: until removed). Kept in the Redis of
    # DEDUP_REDIS_URL when one is set (shared by every replica), else in memory (bounded).
    suppression: bool = True
    suppression_ttl: int = Field(default=30 * 86_400, ge=0)
    suppression_max_entries: int = Field(default=100_000, ge=1)
    suppression_key_prefix: str = Field(default="messaging-service:suppressed:", min_length=1)

    @field_validator("attachment_ca_file")
    @classmethod
    def _attachment_ca_file_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            tls_client_context(value)  # raises ValueError naming the problem
        return value

    @field_validator("allowed_domains", "attachment_url_hosts", mode="before")
    @classmethod
    def _parse_domains(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_domains", "attachment_url_hosts")
    @classmethod
    def _domains_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return normalise_domains(value)

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
    # How long a claim on an id being sent lasts when its holder neither records nor releases
    # it (a crash mid-send): well above one SMTP attempt, so a live claim never lapses.
    claim_ttl: int = Field(default=300, ge=1)

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
        if value is not None and not _redis_address_valid(value.get_secret_value()):
            raise ValueError("is not a valid Redis URL: check its port and database number")
        return value


def _redis_address_valid(url: str) -> bool:
    """What the Redis client would refuse only at start: a port or database that is no number."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    database = parts.path.lstrip("/")
    return parts.scheme == "unix" or database == "" or database.isdigit()


class DkimSettings(BaseSettings):
    """DKIM signing: on when DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE are set."""

    model_config = _section("DKIM_")

    domain: str | None = None
    selector: str | None = None
    # PEM, RSA of at least 2048 bits or Ed25519. Loaded here so a bad key stops the start; the
    # settings keep only the path, never the key.
    private_key_file: Path | None = None
    # Header names signed besides the required set (From, To, Cc, Subject, Date, Message-ID,
    # MIME-Version, Content-Type, List-Unsubscribe, List-Unsubscribe-Post); empty: the default.
    headers: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("headers", mode="before")
    @classmethod
    def _parse_headers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[!-9;-~]+", name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    @field_validator("domain", "selector")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(
            r"[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9])?", value
        ):
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @field_validator("private_key_file")
    @classmethod
    def _key_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            from messaging_service.core.dkim import (
                load_private_key,  # cryptography, only when signing is on
            )

            load_private_key(value)  # raises DkimKeyError (a ValueError) saying why
        return value

    @property
    def enabled(self) -> bool:
        return self.private_key_file is not None


class RuntimeSettings(BaseSettings):
    model_config = _section("")

    shutdown_timeout: float = Field(default=30.0, gt=0)
    # `run --processes`: service processes under one supervisor ("auto": the usable CPUs).
    service_processes: int | Literal["auto"] = Field(default=1)
    # Stable base of each child's group.instance.id (default: the host name).
    service_instance_name: str | None = Field(default=None, min_length=1)
    # Children join with a group.instance.id (static membership); off: ordinary dynamic members.
    service_static_membership: bool = True

    @field_validator("service_processes", mode="before")
    @classmethod
    def _processes(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("must be a whole number of at least 1, or auto")
        if isinstance(value, (int, str)) and int(value) < 1:
            raise ValueError("must be at least 1, or auto")
        return value

    # Liveness: /healthz fails once requests have waited this long with none finishing (0: off).
    watchdog_timeout: float = Field(default=300.0, ge=0)


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
    dkim: DkimSettings

    SECTIONS: ClassVar[dict[str, type[BaseSettings]]] = {
        "kafka": KafkaSettings,
        "smtp": SmtpSettings,
        "email": EmailSettings,
        "http": HttpSettings,
        "log": LogSettings,
        "runtime": RuntimeSettings,
        "dedup": DedupSettings,
        "dkim": DkimSettings,
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
    problems = [*_kafka_security_problems(settings.kafka)]
    if settings.smtp.ca_file is not None and settings.smtp.security is SmtpSecurity.NONE:
        problems.append(
            "SMTP_CA_FILE: is set but SMTP_SECURITY=none, so it would be ignored; "
            "use starttls or tls"
        )
    dkim = settings.dkim
    given = [dkim.domain is not None, dkim.selector is not None, dkim.private_key_file is not None]
    if any(given) and not all(given):
        problems.append(
            "DKIM_DOMAIN/DKIM_SELECTOR/DKIM_PRIVATE_KEY_FILE: set all three to sign, or none"
        )
    kafka = settings.kafka
    if kafka.priority_topic is not None and kafka.priority_topic in (kafka.topic, kafka.dlq_topic):
        problems.append(
            "KAFKA_PRIORITY_TOPIC: must differ from KAFKA_TOPIC and KAFKA_DLQ_TOPIC "
            f"(got {kafka.priority_topic!r})"
        )
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    email = settings.email
    floor = email.worker_count + email.worker_buffer
    if email.max_in_flight < floor:
        raise ConfigError(
            "invalid settings:\n  EMAIL_MAX_IN_FLIGHT: must be at least "
            f"EMAIL_WORKER_COUNT + EMAIL_WORKER_BUFFER ({floor}), got {email.max_in_flight}"
        )


def _kafka_security_problems(kafka: KafkaSettings) -> list[str]:
    """Security settings that would be silently ignored, or that aiokafka would refuse late."""
    sasl = kafka.security_protocol in (
        KafkaSecurityProtocol.SASL_PLAINTEXT,
        KafkaSecurityProtocol.SASL_SSL,
    )
    tls = kafka.security_protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)
    protocol = f"KAFKA_SECURITY_PROTOCOL={kafka.security_protocol.value}"
    problems = []
    if sasl and kafka.sasl_mechanism is None:
        problems.append(f"KAFKA_SASL_MECHANISM: is required with {protocol}")
    if sasl and (kafka.sasl_username is None or kafka.sasl_password is None):
        problems.append(f"KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: are required with {protocol}")
    if not sasl and kafka.sasl_mechanism is not None:
        problems.append(f"KAFKA_SASL_MECHANISM: is set but ignored with {protocol}")
    if not tls and kafka.ssl_cafile is not None:
        problems.append(f"KAFKA_SSL_CAFILE: is set but ignored with {protocol}")
    return problems


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
    return redact_url_passwords(str(value))
