"""The connection and security options every Kafka client of the service shares."""

from __future__ import annotations

from typing import Any

from messaging_service.config import KafkaSecurityProtocol, KafkaSettings
from messaging_service.tls import tls_client_context


def kafka_client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer and the producer."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_list,
        "security_protocol": kafka.security_protocol.value,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL):
        options["ssl_context"] = tls_client_context(kafka.ssl_cafile)
    if kafka.sasl_mechanism is not None:
        options["sasl_mechanism"] = kafka.sasl_mechanism.value
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options
