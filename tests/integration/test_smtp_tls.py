"""SMTP over STARTTLS and implicit TLS with certificate checks, and AUTH, against aiosmtpd.

The certificates come from ``trustme``: a throwaway CA made in-process for each module, so no
openssl binary or system trust store is involved.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any, Literal

import pytest
import structlog
import trustme
from prometheus_client import CollectorRegistry

from messaging_service.adapters.smtp import SmtpSender
from messaging_service.config import SmtpSecurity, SmtpSettings
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import OutgoingEmail
from messaging_service.errors import SmtpTransientError
from messaging_service.service.delivery import Delivery, RetryIn
from messaging_service.service.health import Health
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, record
from support.handler import make_handler
from support.smtp_server import SmtpTestServer

pytestmark = [
    pytest.mark.integration,
    # aiosmtpd warns when AUTH is offered without requiring TLS (the test relay allows both).
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

SENDER = "service@example.com"
PASSWORD = "tls-relay-password-7f3a"

Mode = Literal["starttls", "implicit"]
MODES: list[tuple[SmtpSecurity, Mode]] = [
    (SmtpSecurity.STARTTLS, "starttls"),
    (SmtpSecurity.TLS, "implicit"),
]


class Pki:
    """A CA that signed the relay's certificate, its PEM on disk, and an unrelated CA."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.relay_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = folder / "relay-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca_file = folder / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca_file))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.relay_cert.configure_cert(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_ambient_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system trust store must not be able to vouch for the test CA by accident."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def tls_relay(pki: Pki, mode: Mode, **options: Any) -> SmtpTestServer:
    return SmtpTestServer(tls_context=pki.server_context(), tls=mode, **options)


def settings_for(relay: SmtpTestServer, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {"host": relay.host, "port": relay.port, "timeout": 5.0}
    values.update(overrides)
    return SmtpSettings(_env_file=None, **values)


def make_email(email_id: str = "tls-1") -> OutgoingEmail:
    message = (
        f"From: {SENDER}\r\nTo: alice@example.com\r\nSubject: tls\r\n"
        f"X-Email-Id: {email_id}\r\nMessage-ID: <{email_id}@example.com>\r\n\r\nHello.\r\n"
    ).encode()
    return OutgoingEmail(email_id, SENDER, ("alice@example.com",), message)


@pytest.mark.parametrize(("security", "mode"), MODES)
async def test_tls_delivers_when_the_ca_file_signed_the_relay_certificate(
    pki: Pki, security: SmtpSecurity, mode: Mode
) -> None:
    async with tls_relay(pki, mode) as relay:
        settings = settings_for(relay, security=security, ca_file=pki.ca_file)
        async with SmtpSender(settings, max_connections=1) as smtp:
            await smtp.send(make_email())

        [received] = await relay.wait_for_messages(1)
    assert received.email_id == "tls-1"
    if mode == "starttls":
        assert "EHLO" in [verb for _, verb in relay.commands]


@pytest.mark.parametrize(("security", "mode"), MODES)
@pytest.mark.parametrize("trust", ["other CA", "system CAs"])
async def test_an_untrusted_relay_certificate_is_a_transient_session_refusal(
    pki: Pki, security: SmtpSecurity, mode: Mode, trust: str
) -> None:
    ca_file = pki.other_ca_file if trust == "other CA" else None
    async with tls_relay(pki, mode) as relay:
        settings = settings_for(relay, security=security, ca_file=ca_file)
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError) as caught:
                await smtp.send(make_email())

    assert caught.value.code is None
    assert "certificate is not trusted" in str(caught.value)
    assert "certificate verify failed" in str(caught.value)
    assert relay.messages == []


async def test_a_certificate_for_another_host_name_is_refused(pki: Pki) -> None:
    """The CA is trusted, but the relay is reached under a name its certificate lacks."""
    ca = pki.ca
    elsewhere = ca.issue_cert("relay.example.net")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    elsewhere.configure_cert(context)
    async with SmtpTestServer(tls_context=context, tls="implicit") as relay:
        settings = settings_for(relay, security=SmtpSecurity.TLS, ca_file=pki.ca_file)
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError, match="not trusted"):
                await smtp.send(make_email())
    assert relay.messages == []


@pytest.mark.parametrize(("security", "mode"), MODES)
async def test_auth_over_tls_with_the_right_password_delivers(
    pki: Pki, security: SmtpSecurity, mode: Mode
) -> None:
    async with tls_relay(pki, mode, credentials=("svc", PASSWORD)) as relay:
        settings = settings_for(
            relay, security=security, ca_file=pki.ca_file, username="svc", password=PASSWORD
        )
        async with SmtpSender(settings, max_connections=1) as smtp:
            await smtp.send(make_email())

        assert len(await relay.wait_for_messages(1)) == 1
    assert "AUTH" in [verb for _, verb in relay.commands]


async def test_auth_over_tls_with_a_wrong_password_is_transient(pki: Pki) -> None:
    async with tls_relay(pki, "starttls", credentials=("svc", "the relay's password")) as relay:
        settings = settings_for(
            relay,
            security=SmtpSecurity.STARTTLS,
            ca_file=pki.ca_file,
            username="svc",
            password=PASSWORD,
        )
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError) as caught:
                await smtp.send(make_email())

    assert caught.value.code == 535
    assert PASSWORD not in f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert relay.messages == []


async def test_the_handler_retries_an_untrusted_relay_and_logs_why(pki: Pki) -> None:
    """Through the handler: a retry (not a dead letter, not a crash) and a log line saying why."""
    registry = CollectorRegistry()
    dead_letters = FakeDeadLetters()
    async with tls_relay(pki, "starttls") as relay:
        settings = settings_for(relay, security=SmtpSecurity.STARTTLS, ca_file=pki.other_ca_file)
        async with SmtpSender(settings, max_connections=1) as smtp:
            handler = make_handler(
                renderer=TemplateRenderer(),
                builder=MessageBuilder(SENDER),
                sender=smtp,
                dead_letters=dead_letters,
                policy=RetryPolicy(max_retries=3, delays=(1, 5, 10)),
                metrics=Metrics(registry),
                health=Health(),
            )
            payload: dict[str, Any] = {
                "id": "tls-h",
                "template": "welcome",
                "to": "bob@example.com",
            }
            payload["data"] = {"name": "Bob"}
            with structlog.testing.capture_logs() as logs:
                step = await handler.process(Delivery(record(json.dumps(payload).encode())))

    assert step == RetryIn(1)
    assert dead_letters.published == []
    assert registry.get_sample_value("email_unexpected_errors_total") == 0
    [retry] = [entry for entry in logs if entry["event"] == "email_retry_scheduled"]
    assert "certificate is not trusted" in retry["error"]
