"""Secrets never reach the logs: the real service process, with AUTH failing, at DEBUG level."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.kafka import Broker, Topics, produce, wait_for
from support.service import ServiceProcess, request_payload, settings_for
from support.smtp_server import SmtpTestServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

SMTP_SECRET = "smtp-Secret-4b1e-do-not-log"
SASL_SECRET = "sasl-Secret-77c2-do-not-log"


@pytest.fixture
async def relay() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer(credentials=("svc", "the relay's own password")) as server:
        yield server


async def test_passwords_never_appear_in_the_service_log(
    broker: Broker, topics: Topics, relay: SmtpTestServer, tmp_path: Path
) -> None:
    """AUTH fails with 535 (retried, then probed, logged with its error); the log is grepped.

    The SASL password is set with SASL off (the embedded broker has no SASL), so the service
    refuses to start: its start-up error must not show that password either.
    """
    await produce(broker.bootstrap, topics.requests, [request_payload("secret-1")])
    settings = settings_for(broker, topics, relay.port, retry_delays="0.3")
    env = {"SMTP_USERNAME": "svc", "SMTP_PASSWORD": SMTP_SECRET, "LOG_LEVEL": "DEBUG"}
    service = ServiceProcess(settings, tmp_path / "service.log", env=env)
    service.start()
    try:
        # Failed AUTH is a refused session: retried, then the circuit opens and the relay is
        # probed (and each failed probe logged) until it lets us in.
        await wait_for(
            lambda: sum(e.get("event") == "smtp_unreachable" for e in service.events()) >= 2,
            60,
            message="the circuit opened and probes failed",
        )
        service.signal(signal.SIGTERM)
        assert await service.wait_exit(timeout=60) == 0, service.log_tail()
    finally:
        service.kill()
    log = (tmp_path / "service.log").read_text(errors="replace")
    retries = [e for e in service.events() if e.get("event") == "email_retry_scheduled"]
    assert retries, service.log_tail()
    assert "535" in retries[0]["error"]
    assert any(e.get("event") == "smtp_circuit_opened" for e in service.events())
    assert SMTP_SECRET not in log

    refused = ServiceProcess(
        settings,
        tmp_path / "refused.log",
        env={"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_PASSWORD": SASL_SECRET, **env},
    )
    refused.start()
    try:
        assert await refused.wait_exit(timeout=60) == 2
    finally:
        refused.kill()
    text = (tmp_path / "refused.log").read_text(errors="replace")
    assert "KAFKA_SASL_MECHANISM" in text
    assert SASL_SECRET not in text
    assert SMTP_SECRET not in text
