"""A local SMTP catcher for dev mode: accepts every email and writes it as an ``.eml`` file.

Needs the ``embedded`` extra (aiosmtpd); import it only after ``embedded.require_extra``.
"""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from messaging_service.core.lifetime import ClosedOnExit

_HEADERS = BytesHeaderParser(policy=email.policy.default)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class CaughtEmail:
    """One email the catcher accepted and where it was written."""

    path: Path
    sender: str
    recipients: tuple[str, ...]
    subject: str
    email_id: str | None


class MailCatcher(ClosedOnExit):
    """An SMTP server in the running event loop that stores each message in ``outbox``.

    ``port=0`` picks a free port (read ``port`` after entering). ``on_email`` is called once
    per stored message, after the file is written and before the client gets its 250.
    """

    def __init__(
        self,
        outbox: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_email: Callable[[CaughtEmail], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.host = host
        self.port = port
        self.caught: list[CaughtEmail] = []
        self._on_email = on_email
        self._server: asyncio.Server | None = None
        self._sessions: set[SMTP] = set()
        self._serial = itertools.count(1)
        self._run = time.strftime("%Y%m%d-%H%M%S")

    async def __aenter__(self) -> MailCatcher:
        self.outbox.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, host=self.host, port=self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening and hang up on clients still connected; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        # Since Python 3.12 wait_closed also waits for the connections closed above.
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await server.wait_closed()

    def _session(self) -> SMTP:
        session = _Session(
            self, on_lost=self._sessions.discard, hostname="messaging-service-dev", ident="catcher"
        )
        self._sessions.add(session)
        return session

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        data: bytes = envelope.original_content or b""
        headers = _HEADERS.parsebytes(data)
        email_id = headers.get("X-Email-Id")
        email_id = None if email_id is None else str(email_id)
        try:
            path = self._store(data, email_id)
        except OSError:
            # Transient on purpose: the service retries, and nothing is lost while the disk
            # is full or the folder is being fixed.
            return "451 4.3.0 cannot store the message in the outbox"
        caught = CaughtEmail(
            path=path,
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            subject=str(headers.get("Subject", "")),
            email_id=email_id,
        )
        self.caught.append(caught)
        if self._on_email is not None:
            self._on_email(caught)
        return "250 2.0.0 OK caught"

    def _store(self, data: bytes, email_id: str | None) -> Path:
        label = _UNSAFE.sub("_", email_id or "no-id")[:80]
        while True:
            path = self.outbox / f"{self._run}-{next(self._serial):04d}-{label}.eml"
            try:
                with path.open("xb") as file:  # never overwrite the outbox of an earlier run
                    file.write(data)
            except FileExistsError:
                continue
            return path


class _Session(SMTP):
    """aiosmtpd's session, remembered by the catcher so it can hang up on close."""

    def __init__(self, handler: Any, *, on_lost: Callable[[SMTP], None], **options: Any) -> None:
        super().__init__(handler, **options)
        self._on_lost = on_lost

    def connection_lost(self, error: Exception | None) -> None:
        self._on_lost(self)
        super().connection_lost(error)
