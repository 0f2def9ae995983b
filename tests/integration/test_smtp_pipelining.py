"""SmtpSender against relays that offer PIPELINING (RFC 2920): aiosmtpd, and a scripted one.

The aiosmtpd relay checks behaviour command by command; the scripted relay controls every
byte: it answers MAIL only after it has read DATA (so a sender that waits for each reply
would hang), and it can batch or split its replies however a test asks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiosmtplib
import pytest

from messaging_service.adapters.smtp import SmtpSender
from messaging_service.config import SmtpSecurity, SmtpSettings
from messaging_service.core.values import OutgoingEmail, RecipientRefusal, SendReport
from messaging_service.errors import SmtpRejectedError, SmtpTransientError
from support.smtp_server import NO_SUCH_USER, TRY_LATER, SmtpTestServer

pytestmark = pytest.mark.integration

SENDER = "service@example.com"
ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
BODY = b"Hello.\r\n.a line that starts with a dot\r\n..and two\r\n"


def make_email(
    email_id: str = "e-1",
    recipients: tuple[str, ...] = (ALICE,),
    body: bytes = BODY,
) -> OutgoingEmail:
    head = f"From: {SENDER}\r\nSubject: hello\r\nX-Email-Id: {email_id}\r\n\r\n".encode()
    return OutgoingEmail(
        email_id=email_id, sender=SENDER, recipients=recipients, message=head + body
    )


def settings_for(host: str, port: int, *, timeout: float = 5.0) -> SmtpSettings:
    return SmtpSettings(
        _env_file=None,
        host=host,
        port=port,
        timeout=timeout,
        security=SmtpSecurity.NONE,
        username=None,
        password=None,
    )


# aiosmtpd, advertising PIPELINING


@pytest.fixture
async def relay() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer(pipelining=True) as server:
        yield server


@pytest.fixture
async def sender(relay: SmtpTestServer) -> AsyncIterator[SmtpSender]:
    async with SmtpSender(settings_for(relay.host, relay.port), max_connections=1) as smtp:
        yield smtp


async def test_pipelined_sends_deliver_the_exact_bytes_on_one_connection(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    emails = [make_email(f"e-{n}", recipients=(ALICE, BOB)) for n in range(5)]

    reports = [await sender.send(email) for email in emails]

    assert reports == [SendReport()] * 5
    received = await relay.wait_for_messages(5)
    assert [m.data for m in received] == [email.message for email in emails]
    assert {m.rcpt_tos for m in received} == {(ALICE, BOB)}
    assert relay.connections == 1


async def test_bare_line_feeds_reach_the_relay_as_crlf(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    email = make_email(body=b"one\ntwo\n.three\n")

    await sender.send(email)

    [received] = await relay.wait_for_messages(1)
    assert received.data.endswith(b"\r\n\r\none\r\ntwo\r\n.three\r\n")


async def test_one_refused_recipient_in_the_middle_is_reported_and_the_others_get_it(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.refuse_recipient(BOB, NO_SUCH_USER)

    report = await sender.send(make_email(recipients=(ALICE, BOB, CAROL)))

    assert report == SendReport(refused=(RecipientRefusal(BOB, 550, "5.1.1 no such user"),))
    [received] = await relay.wait_for_messages(1)
    assert received.rcpt_tos == (ALICE, CAROL)


async def test_4xx_on_every_rcpt_is_transient_and_the_session_is_reset_and_reused(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.refuse_recipient(ALICE, "450 4.2.1 mailbox busy", times=1)

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert caught.value.code == 450
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]
    assert relay.connections == 1
    assert "RSET" in [verb for _, verb in relay.commands]


@pytest.mark.parametrize(
    ("reply", "error"), [(TRY_LATER, SmtpTransientError), ("554 5.6.0 no", SmtpRejectedError)]
)
async def test_refusal_after_the_message_is_translated_and_the_connection_kept(
    relay: SmtpTestServer, sender: SmtpSender, reply: str, error: type[Exception]
) -> None:
    relay.fail_data(reply, times=1)

    with pytest.raises(error) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert getattr(caught.value, "code", None) == int(reply[:3])
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]
    verbs = [verb for _, verb in relay.commands]
    assert verbs[verbs.index("DATA") + 1] == "RSET"
    assert relay.connections == 1


async def test_421_on_mail_is_transient_and_the_next_send_uses_a_new_connection(
    relay: SmtpTestServer, sender: SmtpSender
) -> None:
    relay.script("MAIL", "421 4.3.2 shutting down", times=1)

    with pytest.raises(SmtpTransientError) as caught:
        await sender.send(make_email("e-1"))
    await sender.send(make_email("e-2"))

    assert caught.value.code == 421
    assert relay.connections == 2
    assert [m.email_id for m in await relay.wait_for_messages(1)] == ["e-2"]


# A scripted relay that controls every byte


@dataclass
class Script:
    """What the scripted relay answers to the pipelined group (MAIL, RCPTs, DATA)."""

    group: bytes = b"250 ok\r\n250 ok\r\n354 go ahead\r\n"
    final: bytes = b"250 queued\r\n"
    split: bool = False  # write the group's replies one byte at a time
    hang_up_after_group: bool = False
    received: list[bytes] = field(default_factory=list)  # each message as it came


class ScriptedRelay:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.server: asyncio.Server | None = None
        self.sessions = 0

    async def __aenter__(self) -> ScriptedRelay:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Python 3.11's Server.close() leaves accepted connections open: each session closes
        # its own socket, whichever way it ends (client hang-up, scripted hang-up, cancelled).
        try:
            await self._converse(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.script
        self.sessions += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            writer.write(b"220 scripted ESMTP\r\n")
            await reader.readuntil(b"\r\n")  # EHLO
            writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            while True:
                line = await reader.readuntil(b"\r\n")
                if line.startswith((b"RSET", b"QUIT")):
                    writer.write(b"250 ok\r\n" if line.startswith(b"RSET") else b"221 bye\r\n")
                    continue
                # Answer nothing before DATA has arrived: only a pipelining client gets here.
                while not line.startswith(b"DATA"):
                    line = await reader.readuntil(b"\r\n")
                await self._write(writer, script.group, split=script.split)
                if script.hang_up_after_group:
                    return
                if script.group.endswith(b"354 go ahead\r\n"):
                    script.received.append(await self._message(reader))
                    writer.write(script.final)

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes:
        lines = [await reader.readuntil(b"\r\n")]
        while lines[-1] != b".\r\n":
            lines.append(await reader.readuntil(b"\r\n"))
        return b"".join(lines)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, data: bytes, *, split: bool) -> None:
        if not split:
            writer.write(data)
            return
        for index in range(len(data)):
            writer.write(data[index : index + 1])
            await writer.drain()
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[SmtpSender]:
    async with ScriptedRelay(script) as relay:
        settings = settings_for("127.0.0.1", relay.port, timeout=3.0)
        async with SmtpSender(settings, max_connections=1) as smtp:
            yield smtp


@pytest.mark.parametrize("split", [False, True], ids=["batched", "byte-by-byte"])
async def test_replies_batched_or_split_are_paired_with_their_commands(split: bool) -> None:
    script = Script(
        group=b"250 ok\r\n250-first line\r\n250 second line\r\n550 5.1.1 no\r\n354 go ahead\r\n",
        split=split,
    )
    async with scripted(script) as smtp:
        report = await smtp.send(make_email(recipients=(ALICE, BOB)))
        again = await smtp.send(make_email("e-2", recipients=(ALICE, BOB)))

    assert report == again == SendReport(refused=(RecipientRefusal(BOB, 550, "5.1.1 no"),))
    _, _, body = script.received[0].partition(b"\r\n\r\n")
    assert body == b"Hello.\r\n..a line that starts with a dot\r\n...and two\r\n.\r\n"
    assert len(script.received) == 2


async def test_every_recipient_refused_after_354_ends_the_data_with_an_empty_message() -> None:
    script = Script(group=b"250 ok\r\n452 4.2.2 full\r\n354 go ahead\r\n", final=b"554 no rcpt\r\n")
    async with scripted(script) as smtp:
        with pytest.raises(SmtpTransientError) as caught:
            await smtp.send(make_email())

    assert caught.value.code == 452
    assert script.received == [b".\r\n"]


@pytest.mark.parametrize(
    ("group", "code", "cause"),
    [
        (b"550 5.7.1 sender\r\n503 no mail\r\n503 no rcpt\r\n", 550, aiosmtplib.SMTPSenderRefused),
        (b"250 ok\r\n250 ok\r\n451 4.3.0 later\r\n", 451, aiosmtplib.SMTPDataError),
        (b"250 ok\r\n250 ok\r\n554 5.5.1 no\r\n", 554, aiosmtplib.SMTPDataError),
    ],
    ids=["mail-refused", "data-4xx", "data-5xx"],
)
async def test_a_refusal_in_the_pipelined_group_is_translated_by_its_code(
    group: bytes, code: int, cause: type[Exception]
) -> None:
    async with scripted(Script(group=group)) as smtp:
        with pytest.raises((SmtpTransientError, SmtpRejectedError)) as caught:
            await smtp.send(make_email())
        assert smtp.open_connections == 1  # reset and kept

    expected = SmtpRejectedError if code >= 500 else SmtpTransientError
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert isinstance(caught.value.__cause__, cause)


async def test_421_then_hang_up_in_the_middle_of_the_group_reports_the_421() -> None:
    script = Script(group=b"250 ok\r\n421 4.3.2 closing\r\n", hang_up_after_group=True)
    async with scripted(script) as smtp:
        with pytest.raises(SmtpTransientError) as caught:
            await smtp.send(make_email())
        assert smtp.open_connections == 0

    assert caught.value.code == 421


async def test_reply_nobody_asked_for_keeps_the_message_sent_but_drops_the_connection() -> None:
    script = Script(final=b"250 queued\r\n250 and one more\r\n")
    async with ScriptedRelay(script) as relay:
        async with SmtpSender(settings_for("127.0.0.1", relay.port), max_connections=1) as smtp:
            first = await smtp.send(make_email("e-1"))
            second = await smtp.send(make_email("e-2"))

        assert first == second == SendReport()
        assert len(script.received) == 2
        assert relay.sessions == 2


async def test_malformed_reply_is_transient_and_the_connection_is_dropped() -> None:
    async with scripted(Script(group=b"250 ok\r\nhello there\r\n")) as smtp:
        with pytest.raises(SmtpTransientError) as caught:
            await smtp.send(make_email())
        assert smtp.open_connections == 0

    assert caught.value.code is None


async def test_relay_that_never_answers_the_group_times_out_and_the_connection_is_dropped() -> None:
    async with ScriptedRelay(Script(group=b"250 ok\r\n")) as relay:
        settings = settings_for("127.0.0.1", relay.port, timeout=0.5)
        async with SmtpSender(settings, max_connections=1) as smtp:
            with pytest.raises(SmtpTransientError) as caught:
                await smtp.send(make_email())
            assert smtp.open_connections == 0

    assert isinstance(caught.value.__cause__, TimeoutError)
