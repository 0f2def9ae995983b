"""Adapter over aiosmtplib: a small pool of reused connections, timeouts, error translation."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from messaging_service.adapters.smtp_wire import greet, transact
from messaging_service.config import SmtpSecurity, SmtpSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.values import OutgoingEmail, RecipientRefusal, SendReport
from messaging_service.errors import (
    SmtpError,
    SmtpRejectedError,
    SmtpTransientError,
    SmtpUnavailableError,
)
from messaging_service.tls import tls_client_context

# Whatever the relay's own idle limit, NAT gateways and firewalls drop quiet connections
# without telling either side; a connection idle longer than this is replaced, not reused.
DEFAULT_MAX_IDLE = 60.0

# Failures below the SMTP dialogue: the connection is gone and no reply decided anything.
# (aiosmtplib's disconnect/connect errors are ConnectionErrors, its timeouts TimeoutErrors.)
_TRANSPORT_ERRORS = (OSError, TimeoutError)


@dataclass(slots=True)
class _Lease:
    client: aiosmtplib.SMTP
    reusable: bool = False


class _Leasing:
    """Takes a connection slot (waiting at most ``wait`` seconds), then a connection; gives
    both back on exit, the connection to the idle list if the lease says it is reusable.

    A class rather than ``asynccontextmanager``, which costs a generator per send.
    """

    __slots__ = ("_lease", "_sender", "_wait")

    def __init__(self, sender: SmtpSender, wait: float | None) -> None:
        self._sender = sender
        self._wait = wait
        self._lease: _Lease | None = None

    async def __aenter__(self) -> _Lease:
        sender = self._sender
        if self._wait is None:
            await sender._slots.acquire()
        else:
            try:
                async with asyncio.timeout(self._wait):
                    await sender._slots.acquire()
            except TimeoutError as exc:
                raise SmtpTransientError(
                    f"no SMTP connection became free within {self._wait} s"
                ) from exc
        try:
            self._lease = _Lease(await sender._checkout())
        except BaseException:
            sender._slots.release()
            raise
        return self._lease

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            assert self._lease is not None
            self._sender._checkin(self._lease)
        finally:
            self._sender._slots.release()


class SmtpSender(ClosedOnExit):
    """Sends messages to one relay over at most ``max_connections`` reused connections.

    Connections are opened lazily (entering the context connects nothing, so the service
    can start while the relay is down) and closed by ``close()``.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        max_connections: int,
        max_idle: float = DEFAULT_MAX_IDLE,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._settings = settings
        # Built once, not per connection (aiosmtplib would build one per connect in a thread,
        # reading the CA bundle each time); verification is always on.
        self._tls: ssl.SSLContext | None = (
            None if settings.security is SmtpSecurity.NONE else tls_client_context(settings.ca_file)
        )
        self._max_idle = max_idle
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # LIFO: warmest on top
        self._busy: set[aiosmtplib.SMTP] = set()
        self._local_hostname: str | None = None
        self._closed = False

    async def __aenter__(self) -> SmtpSender:
        return self

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy)

    async def send(self, email: OutgoingEmail) -> SendReport:
        """Send one message; raise SmtpTransientError or SmtpRejectedError when it failed."""
        async with self._lease() as lease:
            try:
                refused = await transact(
                    lease.client,
                    email.sender,
                    email.recipients,
                    email.message,
                    reply_timeout=self._settings.timeout,
                )
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
                lease.reusable = await _reset(lease.client)
                raise _translate(exc) from exc
            except ValueError as exc:
                # An address aiosmtplib cannot encode (non-ASCII; we never ask for SMTPUTF8).
                lease.reusable = await _reset(lease.client)
                raise SmtpRejectedError(f"address cannot be sent: {exc}") from exc
            except (aiosmtplib.SMTPException, *_TRANSPORT_ERRORS) as exc:
                raise _translate(exc) from exc
            lease.reusable = True
        return SendReport(
            refused=tuple(
                RecipientRefusal(recipient, reply.code, reply.message)
                for recipient, reply in refused.items()
            )
        )

    async def probe(self) -> None:
        """Check the relay answers (connect or reuse, then NOOP); raise SmtpTransientError if not.

        Every failure is reported as transient, with the reply code when there was one:
        the question is only whether the relay can be used now.
        """
        try:
            async with self._lease(wait=self._settings.timeout) as lease:
                try:
                    await lease.client.noop()
                except (aiosmtplib.SMTPException, *_TRANSPORT_ERRORS) as exc:
                    raise _translate(exc) from exc
                lease.reusable = True
        except SmtpRejectedError as exc:
            raise SmtpTransientError(str(exc), code=exc.code) from exc

    async def close(self) -> None:
        """Say QUIT on idle connections (bounded by the timeout) and close every connection."""
        if self._closed:
            return
        self._closed = True
        idle = [client for client, _ in self._idle]
        self._idle.clear()
        for client in self._busy:
            # A send still in flight fails as transient; the caller should have drained first.
            client.close()
        self._busy.clear()
        await asyncio.gather(*(self._quit(client) for client in idle))

    def _lease(self, *, wait: float | None = None) -> _Leasing:
        """A connection for one exchange: ``async with self._lease() as lease:``."""
        return _Leasing(self, wait)

    def _is_closed(self) -> bool:
        """Read afresh after an await: type checkers keep ``_closed`` narrowed across it."""
        return self._closed

    async def _checkout(self) -> aiosmtplib.SMTP:
        if self._closed:
            raise RuntimeError("SmtpSender is closed")
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since <= self._max_idle:
                self._busy.add(client)
                return client
            client.close()
        client = await self._connect()
        if self._is_closed():  # close() ran while we were connecting
            client.close()
            raise RuntimeError("SmtpSender is closed")
        self._busy.add(client)
        return client

    def _checkin(self, lease: _Lease) -> None:
        self._busy.discard(lease.client)
        if lease.reusable and not self._closed and lease.client.is_connected:
            self._idle.append((lease.client, time.monotonic()))
        else:
            lease.client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self._settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            local_hostname=await self._hostname(),
            timeout=settings.timeout,
            use_tls=settings.security is SmtpSecurity.TLS,
            start_tls=settings.security is SmtpSecurity.STARTTLS,
            validate_certs=True,
            tls_context=self._tls,
        )
        try:
            await client.connect()
            # Greeted here, not on the first send: a relay that refuses our EHLO and HELO
            # refuses the session, which says nothing about the message being sent.
            await greet(client, settings.timeout)
            if settings.username is not None:
                # Logged in here rather than via the constructor, so no client object
                # keeps the password in a plain attribute.
                password = settings.password.get_secret_value() if settings.password else ""
                await client.login(settings.username, password)
        except (aiosmtplib.SMTPException, *_TRANSPORT_ERRORS) as exc:
            client.close()
            # A refused session (5xx greeting, failed AUTH, no STARTTLS) says nothing about
            # the message: it is the relay or our settings. Treated as transient, it is
            # retried instead of dead-lettering every message at once as smtp_rejected.
            error = _translate(exc)
            if isinstance(error, SmtpUnavailableError):
                raise error from exc  # no session at all: refused, reset or timed out
            raise SmtpUnavailableError(f"SMTP session refused: {error}", code=error.code) from exc
        except BaseException:
            client.close()
            raise
        return client

    async def _hostname(self) -> str:
        """Our EHLO name, looked up once: aiosmtplib would run getfqdn() per connect, unbounded."""
        if self._local_hostname is None:
            try:
                async with asyncio.timeout(self._settings.timeout):
                    name = (await asyncio.to_thread(socket.getfqdn)).strip()
            except TimeoutError:
                name = socket.gethostname().strip()
            valid = name.isascii() and name.isprintable() and not any(c.isspace() for c in name)
            self._local_hostname = name if name and valid else "localhost"
        return self._local_hostname

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, *_TRANSPORT_ERRORS):
            pass  # closing anyway; the relay will notice
        finally:
            client.close()


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """After a refused transaction: is the session clean enough to reuse?

    The transaction (``smtp_wire.transact``) leaves the envelope to this RSET, whose reply
    says whether the session can carry the next message.
    """
    if not client.is_connected:
        return False
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, *_TRANSPORT_ERRORS):
        return False
    return True


def _translate(exc: Exception) -> SmtpError:
    """The one place aiosmtplib's exceptions become the service's (decided by class and code)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _all_refused(exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, f"SMTP relay replied {exc.code} {exc.message}", exc.message)
    untrusted = _certificate_error(exc)
    if untrusted is not None:
        return SmtpTransientError(
            "SMTP relay's TLS certificate is not trusted: certificate verify failed: "
            f"{untrusted.verify_message or _describe(untrusted)} "
            "(check SMTP_HOST against the certificate and SMTP_CA_FILE)"
        )
    if isinstance(exc, _TRANSPORT_ERRORS):
        return SmtpUnavailableError(f"SMTP relay unreachable: {_describe(exc)}")
    # Anything else is the relay lacking what the settings demand (STARTTLS, AUTH, ...).
    return SmtpRejectedError(f"SMTP relay cannot be used as configured: {_describe(exc)}")


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The failed certificate check behind ``exc`` (aiosmtplib may wrap it), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _by_code(code: int, text: str, reply: str | None = None) -> SmtpError:
    if 500 <= code < 600:
        return SmtpRejectedError(text, code=code, reply=reply)
    if 400 <= code < 500:
        return SmtpTransientError(text, code=code, reply=reply)
    # A malformed or unexpected reply (aiosmtplib uses -1): nothing to decide by.
    return SmtpTransientError(text)


def _all_refused(refusals: list[aiosmtplib.SMTPRecipientRefused]) -> SmtpError:
    shown = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals[:3])
    more = f"; and {len(refusals) - 3} more" if len(refusals) > 3 else ""
    text = f"SMTP relay refused every recipient: {shown}{more}"
    each = [RecipientRefusal(r.recipient, r.code, r.message) for r in refusals]
    temporary = [r for r in refusals if not 500 <= r.code < 600]
    if temporary:  # one recipient may well be accepted on a later try
        error = _by_code(temporary[0].code, text, temporary[0].message)
        error.refusals = tuple(each)
        return error
    first = refusals[0]
    return SmtpRejectedError(text, code=first.code, refusals=each, reply=first.message)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
