"""A real, scriptable SMTP relay (aiosmtpd) on a free local port, for integration tests.

The relay runs its own event loop in a thread (aiosmtpd's ``Controller``). Everything a
test reads or changes goes through a lock, and ``wait_for_messages`` wakes the *test's*
loop with ``call_soon_threadsafe``, so it can be awaited without polling.

    async with SmtpTestServer() as relay:
        relay.refuse_recipient("nobody@example.com")        # 550 on RCPT, always
        relay.fail_data("451 4.3.0 try later", times=2)      # first two DATA answers
        relay.delay_data(2.0)                                # sleep before answering DATA
        relay.drop_on("DATA")                                # close instead of answering
        ...
        [received] = await relay.wait_for_messages(1)
        relay.stop(); relay.start()                          # outage; same port again
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

Command = Literal["EHLO", "HELO", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"]

TRY_LATER = "451 4.3.0 try later"
NO_SUCH_USER = "550 5.1.1 no such user"

_PARSER = BytesParser(policy=email.policy.default)


@dataclass(frozen=True, slots=True)
class Received:
    """One message the relay accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # exactly what came after DATA, without the final "." line
    message: EmailMessage
    connection: int  # serial number of the connection it arrived on (1, 2, ...)

    @property
    def email_id(self) -> str | None:
        value = self.message.get("X-Email-Id")
        return None if value is None else str(value)


@dataclass(slots=True)
class Rule:
    """How to answer one command instead of the default.

    ``match`` is the address for MAIL and RCPT and the ``X-Email-Id`` header for DATA
    (compared case-insensitively); ``None`` matches every command of that kind. The rule
    applies to the first ``times`` matching commands, or to all of them when ``None``.
    ``reply=None`` keeps the normal answer (useful with ``delay``); ``drop`` closes the
    connection without answering.
    """

    command: Command
    reply: str | None = None
    match: str | None = None
    times: int | None = None
    delay: float = 0.0
    drop: bool = False
    hits: int = 0

    def applies(self, command: str, key: str | None) -> bool:
        if command != self.command or (self.times is not None and self.hits >= self.times):
            return False
        return self.match is None or (key is not None and key.lower() == self.match.lower())


@dataclass(slots=True)
class _Waiter:
    count: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass(slots=True)
class _State:
    """Everything shared between the relay's thread and the test; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)
    rules: list[Rule] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    commands: list[tuple[int, str]] = field(default_factory=list)
    waiters: list[_Waiter] = field(default_factory=list)
    live: set[_Protocol] = field(default_factory=set)
    greeted: int = 0
    open: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)


class SmtpTestServer:
    """An aiosmtpd relay on ``host``; ``port=0`` picks a free port, kept across restarts."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        tls: Literal["starttls", "implicit"] = "starttls",
        pipelining: bool = False,
    ) -> None:
        self.host = host
        self._port = port
        self._credentials = credentials
        self._tls_context = tls_context
        self._tls = tls
        self._state = _State()
        # aiosmtpd reads pipelined commands in order but does not say so in its EHLO reply.
        self._handler = _Handler(self._state, pipelining=pipelining)
        self._controller: _Controller | None = None

    # lifecycle

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the relay has not been started yet, so it has no port")
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("the relay is already running")
        controller = _Controller(
            self._handler,
            state=self._state,
            hostname=self.host,
            port=self._port,
            **self._smtp_options(),
        )
        controller.start()
        self._port = controller.port
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and cut every open connection (like a relay that went away)."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        asyncio.run_coroutine_threadsafe(self._drop_all(controller), controller.loop).result(
            timeout=10
        )
        controller.stop()

    def __enter__(self) -> SmtpTestServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> SmtpTestServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # scripting

    def script(
        self,
        command: Command,
        reply: str | None = None,
        *,
        match: str | None = None,
        times: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
    ) -> Rule:
        """Add a rule; earlier rules win when several match."""
        rule = Rule(command, reply, match, times, delay, drop)
        with self._state.lock:
            self._state.rules.append(rule)
        return rule

    def refuse_recipient(
        self, address: str, reply: str = NO_SUCH_USER, *, times: int | None = None
    ) -> Rule:
        return self.script("RCPT", reply, match=address, times=times)

    def fail_data(
        self, reply: str = TRY_LATER, *, email_id: str | None = None, times: int | None = None
    ) -> Rule:
        return self.script("DATA", reply, match=email_id, times=times)

    def delay_data(
        self, seconds: float, *, email_id: str | None = None, times: int | None = None
    ) -> Rule:
        return self.script("DATA", match=email_id, times=times, delay=seconds)

    def drop_on(
        self, command: Command, *, match: str | None = None, times: int | None = None
    ) -> Rule:
        return self.script(command, match=match, times=times, drop=True)

    def clear_rules(self) -> None:
        with self._state.lock:
            self._state.rules.clear()

    def reset(self) -> None:
        """Forget rules, messages, commands and connection counts (not open connections)."""
        with self._state.lock:
            self._state.rules.clear()
            self._state.messages.clear()
            self._state.commands.clear()
            self._state.greeted = 0
            self._state.peak = self._state.open

    # observations

    @property
    def messages(self) -> list[Received]:
        with self._state.lock:
            return list(self._state.messages)

    @property
    def commands(self) -> list[tuple[int, str]]:
        """Every command seen, as (connection number, verb), in order."""
        with self._state.lock:
            return list(self._state.commands)

    @property
    def connections(self) -> int:
        """Connections that said EHLO or HELO (port checks and the like are not counted)."""
        with self._state.lock:
            return self._state.greeted

    @property
    def open_connections(self) -> int:
        with self._state.lock:
            return self._state.open

    @property
    def peak_connections(self) -> int:
        """The most greeted connections open at the same time."""
        with self._state.lock:
            return self._state.peak

    async def wait_for_messages(self, count: int, within: float = 5.0) -> list[Received]:
        """The messages, once at least ``count`` arrived; AssertionError after ``within`` s."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(count, loop, loop.create_future())
        with self._state.lock:
            if len(self._state.messages) >= count:
                return list(self._state.messages)
            self._state.waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter.future
        except TimeoutError:
            got = len(self.messages)
            raise AssertionError(
                f"expected {count} messages within {within} s, got {got}"
            ) from None
        finally:
            with self._state.lock, contextlib.suppress(ValueError):
                self._state.waiters.remove(waiter)
        return self.messages

    def wait_for_messages_sync(self, count: int, within: float = 5.0) -> list[Received]:
        """The same for code without an event loop (never call it from the test's loop)."""
        with self._state.arrived:
            if not self._state.arrived.wait_for(lambda: len(self._state.messages) >= count, within):
                got = len(self._state.messages)
                raise AssertionError(f"expected {count} messages within {within} s, got {got}")
            return list(self._state.messages)

    # internals

    def _smtp_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"auth_require_tls": False}
        if self._tls_context is not None:
            if self._tls == "implicit":
                options["ssl_context"] = self._tls_context
            else:
                options["tls_context"] = self._tls_context
                options["require_starttls"] = True
        if self._credentials is not None:
            options["auth_required"] = True
            options["authenticator"] = _Authenticator(self._credentials)
        return options

    async def _drop_all(self, controller: _Controller) -> None:
        # Stop listening first: a client connecting between the drop and the stop would
        # otherwise get a session on a server that is going away.
        if isinstance(controller.server, asyncio.Server):
            controller.server.close()
        with self._state.lock:
            live = list(self._state.live)
        for protocol in live:
            if isinstance(protocol.transport, asyncio.Transport):
                protocol.transport.abort()
        for _ in range(500):  # connection_lost runs on a later loop iteration
            with self._state.lock:
                if not self._state.live:
                    return
            await asyncio.sleep(0.01)


class _Protocol(SMTP):
    """aiosmtpd's SMTP session, plus bookkeeping of the connection it serves."""

    def __init__(self, handler: _Handler, *, state: _State, **options: Any) -> None:
        super().__init__(handler, **options)
        self.state = state
        self.number = 0  # given on EHLO/HELO
        self.counted_open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # called again after STARTTLS
        super().connection_made(transport)
        if first:
            with self.state.lock:
                self.state.live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        with self.state.lock:
            self.state.live.discard(self)
            if self.counted_open:
                self.counted_open = False
                self.state.open -= 1
        super().connection_lost(error)

    def greeted(self) -> None:
        with self.state.lock:
            if self.number == 0:
                self.state.greeted += 1
                self.number = self.state.greeted
                self.counted_open = True
                self.state.open += 1
                self.state.peak = max(self.state.peak, self.state.open)


class _Controller(Controller):
    def __init__(self, handler: _Handler, *, state: _State, **options: Any) -> None:
        self._state = state
        super().__init__(handler, **options)

    def factory(self) -> _Protocol:
        return _Protocol(self.handler, state=self._state, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # aiosmtpd connects to self.port to check the server is up: with port 0, learn the
        # port the kernel chose first.
        if self.port == 0:
            assert isinstance(self.server, asyncio.Server)
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class _Authenticator:
    def __init__(self, credentials: tuple[str, str]) -> None:
        self._login = credentials[0].encode()
        self._password = credentials[1].encode()

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == self._login
            and data.password == self._password
        )
        return AuthResult(success=ok, handled=False)


class _Handler:
    """aiosmtpd hooks: log each command, apply the first matching rule, record messages."""

    def __init__(self, state: _State, *, pipelining: bool = False) -> None:
        self._state = state
        self._pipelining = pipelining

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook names
        self,
        server: _Protocol,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        server.greeted()
        reply = await self._answer(server, "EHLO", None)
        if reply is not MISSING:
            return [reply]
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        if self._pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_HELO(  # noqa: N802 - aiosmtpd's hook names
        self, server: _Protocol, session: Session, envelope: Envelope, hostname: str
    ) -> Any:
        server.greeted()
        return await self._answer(server, "HELO", None)

    async def handle_AUTH(  # noqa: N802 - aiosmtpd's hook names
        self, server: _Protocol, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        return await self._answer(server, "AUTH", None)

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook names
        self,
        server: _Protocol,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> Any:
        return await self._answer(server, "MAIL", address)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook names
        self,
        server: _Protocol,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> Any:
        return await self._answer(server, "RCPT", address)

    async def handle_DATA(self, server: _Protocol, session: Session, envelope: Envelope) -> Any:  # noqa: N802 - aiosmtpd's hook names
        data: bytes = envelope.original_content or b""
        message = _PARSER.parsebytes(data)
        email_id = message.get("X-Email-Id")
        reply = await self._answer(server, "DATA", None if email_id is None else str(email_id))
        if reply is not MISSING:
            return reply
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            message=message,
            connection=server.number,
        )
        self._record(received)
        return "250 2.0.0 OK queued"

    async def handle_RSET(self, server: _Protocol, session: Session, envelope: Envelope) -> Any:  # noqa: N802 - aiosmtpd's hook names
        return await self._answer(server, "RSET", None)

    async def handle_NOOP(  # noqa: N802 - aiosmtpd's hook names
        self, server: _Protocol, session: Session, envelope: Envelope, arg: str
    ) -> Any:
        return await self._answer(server, "NOOP", None)

    async def handle_QUIT(self, server: _Protocol, session: Session, envelope: Envelope) -> Any:  # noqa: N802 - aiosmtpd's hook names
        return await self._answer(server, "QUIT", None)

    async def _answer(self, server: _Protocol, command: Command, key: str | None) -> Any:
        with self._state.lock:
            self._state.commands.append((server.number, command))
            rule = next((r for r in self._state.rules if r.applies(command, key)), None)
            if rule is not None:
                rule.hits += 1
        if rule is None:
            return MISSING
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.drop:
            if server.transport is not None:
                server.transport.close()
            # connection_lost cancels this session's task; wait here for that.
            await asyncio.get_running_loop().create_future()
        return MISSING if rule.reply is None else rule.reply

    def _record(self, received: Received) -> None:
        with self._state.lock:
            self._state.messages.append(received)
            self._state.arrived.notify_all()
            count = len(self._state.messages)
            ready = [w for w in self._state.waiters if count >= w.count]
        for waiter in ready:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
