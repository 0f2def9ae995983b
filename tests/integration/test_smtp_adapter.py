"""SmtpSender against a real SMTP relay (aiosmtpd): delivery, reuse, error translation."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from messaging_service.adapters.smtp import SmtpSender
from messaging_service.config import SmtpSecurity, SmtpSettings
from messaging_service.core.values import OutgoingEmail, RecipientRefusal, SendReport
from messaging_service.errors import SmtpRejectedError, SmtpTransientError, SmtpUnavailableError
from support.smtp_server import NO_SUCH_USER, TRY_LATER, SmtpTestServer

pytestmark = pytest.mark.integration

SENDER = "service@example.com"
ALICE = "alice@example.com"
BOB = "bob@example.com"
PASSWORD = "correct horse battery staple"
# The test relay offers AUTH without TLS on purpose; aiosmtpd warns about that.
plain_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def make_email(email_id: str = "e-1", recipients: tuple[str, ...] = (ALICE,)) -> OutgoingEmail:
    message = (
        f"From: {SENDER}\r\n"
        f"To: {', '.join(recipients)}\r\n"
        f"Subject: hello {email_id}\r\n"
        f"X-Email-Id: {email_id}\r\n"
        f"Message-ID: <{email_id}@example.com>\r\n"
        "\r\n"
        "Hello.\r\n"
        ".a line that needs dot-stuffing\r\n"
    ).encode()
    return OutgoingEmail(email_id=email_id, sender=SENDER, recipients=recipients, message=message)


def smtp_settings(relay: SmtpTestServer, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": relay.host,
        "port": relay.port,
        "timeout": 5.0,
        "security": SmtpSecurity.NONE,
        "username": None,
        "password": None,
    }
    values.update(overrides)
    return SmtpSettings(_env_file=None, **values)


@pytest.fixture
async def sender(relay: SmtpTestServer) -> AsyncIterator[SmtpSender]:
    async with SmtpSender(smtp_settings(relay), max_connections=1) as smtp:
        yield smtp


async def test_send_delivers_the_exact_bytes_to_every_recipient(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    email = make_email(recipients=(ALICE, BOB))

    report = await sender.send(email)

    assert report == SendReport()
    [received] = await relay.wait_for_messages(1)
    assert received.data == email.message
    assert received.mail_from == SENDER
    assert received.rcpt_tos == (ALICE, BOB)
    assert received.email_id == "e-1"


async def test_one_connection_serves_twenty_sequential_sends(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    for n in range(20):
        await sender.send(make_email(f"e-{n}"))

    received = await relay.wait_for_messages(20)
    assert [m.email_id for m in received] == [f"e-{n}" for n in range(20)]
    assert relay.connections == 1
    assert {m.connection for m in received} == {1}


async def test_451_on_data_is_transient_with_its_code_and_keeps_the_connection(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.fail_data(TRY_LATER, times=1)

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert caught.value.code == 451
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]
    assert relay.connections == 1


async def test_550_on_data_is_rejected_and_the_session_is_reset_for_the_next_message(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.fail_data("550 5.7.1 message content rejected", times=1)

    with pytest.raises(SmtpRejectedError) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert caught.value.code == 550
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]
    assert relay.connections == 1
    verbs = [verb for _, verb in relay.commands]
    assert verbs[verbs.index("DATA") + 1] == "RSET"


async def test_connection_whose_reset_fails_after_a_refusal_is_replaced(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    """sendmail() ignores how its own RSET went; the sender checks with one of its own."""
    relay.fail_data("554 5.6.0 message refused", times=1)
    relay.script("RSET", "554 5.5.1 cannot reset", times=2)

    with pytest.raises(SmtpRejectedError):
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert relay.connections == 2


async def test_address_that_cannot_be_encoded_is_rejected_and_the_session_stays_usable(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    with pytest.raises(SmtpRejectedError) as caught:
        await sender.send(make_email("e-1", recipients=("j\u00fcrgen@example.com",)))
    await sender.send(make_email("e-2"))

    assert caught.value.code is None
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]
    assert relay.connections == 1


async def test_only_the_first_attempts_for_one_email_id_fail(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.fail_data(TRY_LATER, email_id="e-2", times=2)

    await sender.send(make_email("e-1"))
    for _ in range(2):
        with pytest.raises(SmtpTransientError):
            await sender.send(make_email("e-2"))
    await sender.send(make_email("e-2"))

    assert [m.email_id for m in await relay.wait_for_messages(2)] == ["e-1", "e-2"]


async def test_every_recipient_refused_with_5xx_is_rejected_with_the_first_code(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.refuse_recipient(ALICE, NO_SUCH_USER)
    relay.refuse_recipient(BOB, "553 5.1.3 bad address")

    with pytest.raises(SmtpRejectedError) as caught:
        await sender.send(make_email(recipients=(ALICE, BOB)))

    assert caught.value.code == 550
    assert caught.value.reply == "5.1.1 no such user"
    # Each refusal, for the suppression list: which of them are hard bounces is decided later.
    assert caught.value.refusals == (
        RecipientRefusal(ALICE, 550, "5.1.1 no such user"),
        RecipientRefusal(BOB, 553, "5.1.3 bad address"),
    )
    assert relay.messages == []


async def test_every_recipient_refused_with_one_4xx_is_transient(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.refuse_recipient(ALICE, NO_SUCH_USER)
    relay.refuse_recipient(BOB, "452 4.2.2 mailbox full")

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email(recipients=(ALICE, BOB)))

    assert caught.value.code == 452
    assert caught.value.reply == "4.2.2 mailbox full"
    assert {r.recipient: r.code for r in caught.value.refusals} == {ALICE: 550, BOB: 452}


async def test_one_refused_recipient_is_reported_and_the_other_gets_the_message(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.refuse_recipient(BOB, NO_SUCH_USER)

    report = await sender.send(make_email(recipients=(ALICE, BOB)))

    assert report == SendReport(refused=(RecipientRefusal(BOB, 550, "5.1.1 no such user"),))
    [received] = await relay.wait_for_messages(1)
    assert received.rcpt_tos == (ALICE,)


async def test_421_reply_is_transient_and_the_next_send_uses_a_new_connection(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.script("MAIL", "421 4.3.2 shutting down", times=1)

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert caught.value.code == 421
    assert relay.connections == 2


async def test_dropped_connection_is_transient_without_code_and_replaced(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.drop_on("DATA", times=1)

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert caught.value.code is None
    assert isinstance(caught.value.__cause__, aiosmtplib.SMTPServerDisconnected)
    assert relay.connections == 2


async def test_relay_outage_is_transient_and_the_sender_reconnects_when_it_is_back(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    await sender.send(make_email("e-1"))
    await asyncio.to_thread(relay.stop)

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email("e-2"))
    await asyncio.to_thread(relay.start)
    await sender.send(make_email("e-3"))

    assert caught.value.code is None
    assert [m.email_id for m in await relay.wait_for_messages(2)] == ["e-1", "e-3"]
    assert relay.connections == 2


async def test_refused_ehlo_and_helo_is_a_refused_session_not_a_rejected_message(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    """A relay that will not talk to us (HELO policy, blocked client) says nothing about the
    message: it must count towards the circuit and be retried, never dead-lettered."""
    relay.script("EHLO", "554 5.7.1 client host rejected")
    relay.script("HELO", "554 5.7.1 client host rejected")

    with pytest.raises(SmtpUnavailableError) as caught:
        await sender.send(make_email())

    assert caught.value.code == 554
    assert relay.messages == []


async def test_connection_refused_is_transient_without_code(relay: SmtpTestServer) -> None:
    settings = smtp_settings(relay)
    await asyncio.to_thread(relay.stop)

    async with SmtpSender(settings, max_connections=1) as smtp:
        with pytest.raises(SmtpTransientError) as caught:
            await smtp.send(make_email())

    assert caught.value.code is None
    assert isinstance(caught.value.__cause__, aiosmtplib.SMTPConnectError)


async def test_relay_slower_than_the_timeout_is_transient_and_the_connection_replaced(
    relay: SmtpTestServer,
) -> None:
    relay.delay_data(3.0, times=1)

    async with SmtpSender(smtp_settings(relay, timeout=0.5), max_connections=1) as smtp:
        with pytest.raises(SmtpTransientError) as caught:
            await smtp.send(make_email("e-1"))
        await smtp.send(make_email("e-2"))

    assert caught.value.code is None
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]
    assert relay.connections == 2


async def test_concurrent_sends_open_at_most_max_connections(relay: SmtpTestServer) -> None:
    relay.delay_data(0.05)  # keep transactions overlapping

    async with SmtpSender(smtp_settings(relay), max_connections=4) as smtp:
        reports = await asyncio.gather(*(smtp.send(make_email(f"e-{n}")) for n in range(24)))
        assert smtp.open_connections == 4

    assert reports == [SendReport()] * 24
    assert len(await relay.wait_for_messages(24)) == 24
    assert relay.connections == 4
    assert relay.peak_connections == 4


async def test_idle_connection_older_than_max_idle_is_replaced(relay: SmtpTestServer) -> None:
    async with SmtpSender(smtp_settings(relay), max_connections=1, max_idle=0.0) as smtp:
        await smtp.send(make_email("e-1"))
        await smtp.send(make_email("e-2"))

    assert relay.connections == 2


async def test_probe_says_noop_on_the_pooled_connection(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    await sender.send(make_email())

    await sender.probe()

    assert relay.connections == 1
    assert relay.commands[-1] == (1, "NOOP")


async def test_probe_fails_transient_when_the_relay_is_down(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    await asyncio.to_thread(relay.stop)

    with pytest.raises(SmtpTransientError):
        await sender.probe()


async def test_probe_fails_transient_when_the_relay_does_not_answer(
    relay: SmtpTestServer,
) -> None:
    relay.script("NOOP", delay=3.0)

    async with SmtpSender(smtp_settings(relay, timeout=0.5), max_connections=1) as smtp:
        with pytest.raises(SmtpTransientError):
            await smtp.probe()


async def test_close_is_idempotent_says_quit_and_later_sends_are_refused(
    relay: SmtpTestServer,
) -> None:
    smtp = SmtpSender(smtp_settings(relay), max_connections=2)
    await smtp.send(make_email())

    await smtp.close()
    await smtp.close()

    assert smtp.open_connections == 0
    assert [verb for _, verb in relay.commands].count("QUIT") == 1
    with pytest.raises(RuntimeError, match="closed"):
        await smtp.send(make_email())


@plain_auth
async def test_login_with_the_right_password_sends() -> None:
    async with SmtpTestServer(credentials=("svc", PASSWORD)) as relay:
        settings = smtp_settings(relay, username="svc", password=PASSWORD)
        async with SmtpSender(settings, max_connections=1) as smtp:
            await smtp.send(make_email())

        assert len(await relay.wait_for_messages(1)) == 1
        assert "AUTH" in [verb for _, verb in relay.commands]


@plain_auth
async def test_wrong_password_is_transient_535_and_never_shown() -> None:
    """A refused session is about the relay or our settings, never about the message."""
    async with SmtpTestServer(credentials=("svc", "another password")) as relay:
        settings = smtp_settings(relay, username="svc", password=PASSWORD)
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError) as caught:
                await smtp.send(make_email())
            shown = f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {smtp!r}"

    assert caught.value.code == 535
    assert PASSWORD not in shown


@plain_auth
async def test_temporary_auth_failure_454_is_transient() -> None:
    async with SmtpTestServer(credentials=("svc", PASSWORD)) as relay:
        relay.script("AUTH", "454 4.7.0 temporary authentication failure")
        settings = smtp_settings(relay, username="svc", password=PASSWORD)
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError) as caught:
                await smtp.send(make_email())

    assert caught.value.code == 454


# TLS: a throwaway self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE.


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.mark.parametrize(
    ("security", "mode"), [(SmtpSecurity.STARTTLS, "starttls"), (SmtpSecurity.TLS, "implicit")]
)
async def test_tls_with_a_trusted_certificate_sends(
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    security: SmtpSecurity,
    mode: Any,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    async with SmtpTestServer(tls_context=server_tls(certificate), tls=mode) as relay:
        async with SmtpSender(smtp_settings(relay, security=security), max_connections=1) as smtp:
            await smtp.send(make_email())

        assert len(await relay.wait_for_messages(1)) == 1


async def test_starttls_refuses_an_untrusted_certificate(certificate: tuple[Path, Path]) -> None:
    async with SmtpTestServer(tls_context=server_tls(certificate)) as relay:
        settings = smtp_settings(relay, security=SmtpSecurity.STARTTLS)
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError) as caught:
                await smtp.send(make_email())

    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert relay.messages == []
