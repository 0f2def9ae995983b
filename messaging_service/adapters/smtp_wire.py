"""One SMTP mail transaction on a connected aiosmtplib client, pipelined when the relay allows.

``aiosmtplib.SMTP.sendmail`` parses every address again with ``email.utils``, normalises line
endings and dot-stuffs with regular expressions, and waits for each reply before sending the
next command: about a third of the service's CPU per email. This module does the transaction
itself: the DATA bytes are prepared with a few byte scans (the service already writes CRLF),
and when the relay advertises PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one
write and their replies are read together, so a message costs two round trips, not 3 + RCPTs.

Connecting, EHLO, STARTTLS, AUTH, RSET, NOOP and QUIT stay with aiosmtplib. For the length of
a transaction the connection's transport is lent to ``_Replies`` (asyncio's ``set_protocol``)
and then given back; aiosmtplib's own protocol reads one reply per command and would drop a
second reply that arrives in the same read.

Outcomes are raised as the exceptions ``sendmail`` raises (``SMTPSenderRefused``,
``SMTPRecipientsRefused``, ``SMTPDataError``, ``SMTPServerDisconnected``,
``SMTPReadTimeoutError``, ``ValueError`` for an address that cannot be sent), so the caller
translates them in one place. After a refusal the session is intact (the caller sends RSET);
after anything else (timeout, lost connection, a malformed or 421 reply) the client is
closed, since it can no longer be trusted to pair replies with commands; so it is after a
relay sent more replies than it was asked for, even when the message was accepted.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Sequence
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPResponse

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
# What may stand between "<" and ">" on the envelope: printable ASCII without space, "<" or ">"
# (no SMTPUTF8: addresses reach here validated and in their ASCII form).
_ENVELOPE_ADDRESS = re.compile(rb"[!-;=?-~]+")
_MAX_LINE = 8192  # as aiosmtplib: bounds memory whatever the relay sends
_MAX_REPLY = 4 * _MAX_LINE
_ACCEPTED_RCPT = (250, 251)
_CLOSING = 421


def data_bytes(message: bytes) -> tuple[bytes, int]:
    """What follows ``DATA``: CRLF line ends, leading dots doubled, ``.`` line at the end.

    Also returns the message's size for ``SIZE=`` (RFC 1870: CRLF-normalised, unstuffed).
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:  # a lone CR or LF
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    size = len(message)
    # Split before every line that starts with a dot and join with one more (find() is about
    # twice as fast as ``in`` followed by replace() on messages of a few kB).
    pieces = [b""] if message.startswith(b".") else []
    start = 0
    while (dot := message.find(b"\n.", start)) >= 0:
        pieces.append(message[start : dot + 1])
        start = dot + 1
    if pieces:
        pieces.append(message[start:])
        message = b".".join(pieces)
    return message + b".\r\n", size


def envelope_address(address: str) -> bytes:
    """The address as it goes between ``<`` and ``>``; ValueError if it cannot be sent."""
    try:
        encoded = address.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{address!r} is not ASCII (SMTPUTF8 is not used)") from None
    if not _ENVELOPE_ADDRESS.fullmatch(encoded):
        raise ValueError(f"{address!r} cannot be put on the SMTP envelope")
    return encoded


async def transact(
    client: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    reply_timeout: float,
) -> dict[str, SMTPResponse]:
    """Send one message; return the refused recipients (some were accepted) or raise.

    ``reply_timeout`` bounds each wait for replies (one per round trip), as aiosmtplib's
    ``timeout`` bounds each command.
    """
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    mail_from = envelope_address(sender)
    rcpt_to = [envelope_address(recipient) for recipient in recipients]
    data, size = data_bytes(message)
    if client.is_ehlo_or_helo_needed:
        await greet(client, reply_timeout)
    protocol = client.protocol
    transport = None if protocol is None else protocol.transport
    if protocol is None or transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    size_option = b" SIZE=%d" % size if client.supports_extension("size") else b""
    exchange = _Exchange(
        transport=cast(asyncio.Transport, transport),
        replies=_Replies(protocol),
        reply_timeout=reply_timeout,
    )
    commands = [b"MAIL FROM:<%s>%s\r\n" % (mail_from, size_option)]
    commands += [b"RCPT TO:<%s>\r\n" % address for address in rcpt_to]
    transport.set_protocol(exchange.replies)
    try:
        try:
            if client.supports_extension("pipelining"):
                refused = await exchange.pipelined(commands, recipients, sender, data)
            else:
                refused = await exchange.one_by_one(commands, recipients, sender, data)
        finally:
            if not exchange.replies.lost:
                transport.set_protocol(protocol)
            if exchange.replies.leftover:
                # The relay said more than it was asked: whatever the outcome (a message it
                # accepted stays accepted), this session can no longer pair replies.
                client.close()
    except aiosmtplib.SMTPRecipientsRefused as exc:
        if any(refusal.code == _CLOSING for refusal in exc.recipients):
            client.close()
        raise
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == _CLOSING or exc.code < 0:
            client.close()
        raise
    except BaseException:  # timeouts, lost connections, cancellation: replies unpaired
        client.close()
        raise
    return {refusal.recipient: SMTPResponse(refusal.code, refusal.message) for refusal in refused}


async def greet(client: aiosmtplib.SMTP, reply_timeout: float) -> None:
    """EHLO, or HELO for a relay that refuses it (what ``sendmail`` does first)."""
    try:
        await client.ehlo(timeout=reply_timeout)
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo(timeout=reply_timeout)


class _Exchange:
    """The commands and replies of one transaction on a lent transport."""

    def __init__(
        self, *, transport: asyncio.Transport, replies: _Replies, reply_timeout: float
    ) -> None:
        self.transport = transport
        self.replies = replies
        self.timeout = reply_timeout

    async def pipelined(
        self, commands: list[bytes], recipients: Sequence[str], sender: str, data: bytes
    ) -> list[aiosmtplib.SMTPRecipientRefused]:
        """MAIL, RCPTs and DATA in one write (RFC 2920 allows DATA last in a group)."""
        self.transport.write(b"".join(commands) + b"DATA\r\n")
        try:
            mail, *rcpts, go_ahead = await self.replies.read(len(commands) + 1, self.timeout)
        except aiosmtplib.SMTPServerDisconnected as exc:
            # A relay that says 421 and hangs up has said why; report that, not the hang-up.
            failed = [reply for reply in self.replies.received if reply.code >= 400]
            if failed:
                raise aiosmtplib.SMTPResponseException(*failed[0]) from exc
            raise
        refused = _refusals(recipients, rcpts)
        if mail.code != 250 or len(refused) == len(recipients):
            if go_ahead.code == 354:
                # The relay accepted DATA for a transaction that has nothing to deliver:
                # RFC 2920 says to end it with an empty message, whose reply is a failure.
                self.transport.write(b".\r\n")
                await self.replies.read(1, self.timeout)
            if mail.code != 250:
                raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        return await self._message(go_ahead, data, refused)

    async def one_by_one(
        self, commands: list[bytes], recipients: Sequence[str], sender: str, data: bytes
    ) -> list[aiosmtplib.SMTPRecipientRefused]:
        """The same without PIPELINING: each command waits for the reply to the previous one."""
        mail, *rcpts = commands
        [reply] = await self._command(mail)
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        answers = [(await self._command(rcpt))[0] for rcpt in rcpts]
        refused = _refusals(recipients, answers)
        if len(refused) == len(recipients):
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        [go_ahead] = await self._command(b"DATA\r\n")
        return await self._message(go_ahead, data, refused)

    async def _message(
        self, go_ahead: SMTPResponse, data: bytes, refused: list[aiosmtplib.SMTPRecipientRefused]
    ) -> list[aiosmtplib.SMTPRecipientRefused]:
        if go_ahead.code != 354:
            raise aiosmtplib.SMTPDataError(go_ahead.code, go_ahead.message)
        [done] = await self._command(data)
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)
        return refused

    async def _command(self, line: bytes) -> list[SMTPResponse]:
        self.transport.write(line)
        return await self.replies.read(1, self.timeout)


def _refusals(
    recipients: Sequence[str], replies: Sequence[SMTPResponse]
) -> list[aiosmtplib.SMTPRecipientRefused]:
    return [
        aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        for recipient, reply in zip(recipients, replies, strict=True)
        if reply.code not in _ACCEPTED_RCPT
    ]


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(
            aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        )


class _Replies(asyncio.Protocol):
    """Whole SMTP replies from the transport, however they are split or batched in reads.

    ``owner`` is aiosmtplib's protocol: it hears about flow control and the connection's end
    as if it had kept the transport, so the client's state stays true.
    """

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._ready: deque[SMTPResponse] = deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self.received: list[SMTPResponse] = []
        """Every reply read so far, also those a failed ``read`` did not return."""
        self.lost = False

    @property
    def leftover(self) -> bool:
        return bool(self._buffer or self._ready)

    async def read(self, count: int, within: float) -> list[SMTPResponse]:
        if len(self._ready) < count and self._error is None:
            self._wanted = count
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            # A timer on the future rather than asyncio.timeout(), which costs a task
            # lookup and a context object for every reply.
            timer = loop.call_later(within, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if len(self._ready) < count:
            assert self._error is not None
            raise self._error
        return [self._ready.popleft() for _ in range(count)]

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
            return
        if len(self._buffer) > _MAX_REPLY:
            self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
        elif len(self._ready) >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    def _parse(self) -> None:
        buffer = self._buffer
        start = position = 0
        lines: list[bytes] = []
        while (end := buffer.find(b"\n", position)) >= 0:
            line = bytes(buffer[position : end + 1])
            position = end + 1
            if len(line) > _MAX_LINE:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            if not line[:3].isdigit():
                text = line.decode("utf-8", errors="ignore")
                raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}")
            lines.append(line)
            if line[3:4] != b"-":
                joined = b"\n".join(part[4:].strip(b" \t\r\n") for part in lines)
                reply = SMTPResponse(int(line[:3]), joined.decode("utf-8", "surrogateescape"))
                self._ready.append(reply)
                self.received.append(reply)
                lines = []
                start = position
        if start:
            del buffer[:start]

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
