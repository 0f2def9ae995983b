"""What smtp_wire relies on inside aiosmtplib: fails loudly when an upgrade changes it.

``adapters/smtp_wire.py`` runs a mail transaction itself: it takes the connected client's
transport from ``client.protocol.transport``, lends it to its own protocol with
``transport.set_protocol`` (forwarding flow control and the connection's end to aiosmtplib's
protocol), gives it back, and raises aiosmtplib's own exceptions so that ``smtp.py``'s error
translation stays the same. pyproject pins aiosmtplib below its next major; this is what to
check when moving the pin.
"""

from __future__ import annotations

import asyncio
import inspect

import aiosmtplib
import pytest

from support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


def test_the_exceptions_smtp_wire_raises_keep_their_constructors() -> None:
    assert aiosmtplib.SMTPRecipientRefused(550, "no", "a@example.com").recipient == "a@example.com"
    refused = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no", "a")])
    assert len(refused.recipients) == 1
    assert aiosmtplib.SMTPSenderRefused(553, "no", "s@example.com").sender == "s@example.com"
    assert aiosmtplib.SMTPDataError(554, "no").code == 554
    assert aiosmtplib.SMTPResponseException(421, "bye").message == "bye"
    for name in ("SMTPReadTimeoutError", "SMTPServerDisconnected", "SMTPHeloError"):
        assert issubclass(getattr(aiosmtplib, name), aiosmtplib.SMTPException)
    reply = aiosmtplib.SMTPResponse(250, "ok")
    assert (reply.code, reply.message) == (250, "ok")


def test_the_client_api_smtp_wire_calls_is_there() -> None:
    client = aiosmtplib.SMTP
    for name in ("is_ehlo_or_helo_needed", "is_connected"):
        assert isinstance(inspect.getattr_static(client, name), property), name
    for name in ("supports_extension", "close", "ehlo", "helo"):
        assert callable(getattr(client, name)), name


def ehlo_needed(client: aiosmtplib.SMTP) -> bool:
    """Read afresh each time: mypy would keep the property narrowed across the await."""
    return client.is_ehlo_or_helo_needed


async def test_a_connected_client_lends_an_asyncio_transport_and_takes_it_back(
    relay: SmtpTestServer,
) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    try:
        assert ehlo_needed(client)  # smtp_wire.greet() says EHLO itself
        await client.ehlo()
        assert not ehlo_needed(client)
        protocol = client.protocol  # an attribute set while connected
        assert isinstance(protocol, asyncio.Protocol)
        transport = protocol.transport
        assert isinstance(transport, asyncio.Transport)
        borrowed = asyncio.Protocol()
        transport.set_protocol(borrowed)
        assert transport.get_protocol() is borrowed
        transport.set_protocol(protocol)
        # aiosmtplib reads its replies again once it has its transport back.
        code, _ = await client.noop()
        assert code == 250
    finally:
        await client.quit()
