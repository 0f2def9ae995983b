"""A small, fast SMTP sink that answers the end of DATA after a fixed delay: the slow relay.

    python -m bench.delay_sink --port 2525 --delay 0.05 --log accepted.log

smtp-sink (Postfix) only takes whole seconds for its DATA delay, and aiosmtpd tops out around
350 messages/s on this machine, which would cap the 100-worker case (ideal 2,000/s). This is a
bare ``asyncio.Protocol`` with no parsing beyond what SMTP needs; it answers every command
at once except the end of a message, whose ``250`` it sends ``--delay`` seconds later without
holding anything but a timer. Each accepted message is logged as ``<unix time> <X-Email-Id>``
(one line, flushed every 0.1 s) so the bench can count acceptances and measure latency.
It advertises PIPELINING, as Postfix and smtp-sink do (it reads commands in order however
they arrive). With ``--fail-share 0.05`` it refuses 5 % of messages once, drawn at random,
with ``451`` (after the same delay); the same ``X-Email-Id`` is accepted the next time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from pathlib import Path
from typing import IO, cast

_EHLO = b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n"
_OK = b"250 2.0.0 Ok\r\n"
_QUEUED = b"250 2.0.0 Ok: queued\r\n"
_TRY_LATER = b"451 4.3.0 Try again later (bench)\r\n"
_GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_BYE = b"221 2.0.0 Bye\r\n"
_UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"
_END = b"\r\n.\r\n"
_ID_HEADER = b"\r\nX-Email-Id: "
_FLUSH_EVERY = 0.1


class AcceptLog:
    """Acceptances in memory, written out in batches so logging costs almost nothing."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._pending: list[str] = []

    def accepted(self, email_id: str) -> None:
        self._pending.append(f"{time.time():.6f} {email_id}\n")

    def flush(self) -> None:
        if self._pending:
            self._stream.write("".join(self._pending))
            self._pending.clear()
            self._stream.flush()


class FailOnce:
    """Which messages get a 451, each only the first time: a random ``share`` of them, or
    with ``every`` N, those whose id ends in ``-<index>`` with index divisible by N."""

    def __init__(self, share: float, *, every: int = 0) -> None:
        self._share = share
        self._every = every
        self._failed: set[str] = set()

    def refuse(self, email_id: str) -> bool:
        if email_id in self._failed or not self._picked(email_id):
            return False
        self._failed.add(email_id)
        return True

    def _picked(self, email_id: str) -> bool:
        if self._every:
            index = email_id.rpartition("-")[2]
            return index.isdigit() and int(index) % self._every == 0
        return bool(self._share) and random.random() < self._share


class _Session(asyncio.Protocol):
    def __init__(self, *, delay: float, jitter: float, log: AcceptLog, fail: FailOnce) -> None:
        self._delay = delay
        self._jitter = jitter
        self._log = log
        self._fail = fail
        self._buffer = bytearray()
        self._in_data = False
        self._scanned = 0  # bytes of the message already searched for the end marker
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(b"220 bench-sink ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        # Replies to pipelined commands go out in one write once the input is consumed, as
        # Postfix's smtpd flushes its output only when it has no more input to read.
        replies: list[bytes] = []
        while self._transport is not None:
            if self._in_data:
                if not self._end_of_message():
                    break
            else:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    break
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                if not self._command(line, replies):
                    break
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))
            if self._closing:
                self._transport.close()

    def _command(self, line: bytes, replies: list[bytes]) -> bool:
        """Answer one command into ``replies``; False once the session ends (QUIT)."""
        verb = line[:4].upper()
        if verb == b"EHLO":
            replies.append(_EHLO)
        elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            replies.append(_OK)
        elif verb == b"DATA":
            self._in_data = True
            self._scanned = 0
            replies.append(_GO_AHEAD)
        elif verb == b"QUIT":
            replies.append(_BYE)
            self._closing = True
            return False
        else:
            replies.append(_UNKNOWN)
        return True

    def _end_of_message(self) -> bool:
        """Consume one message if its end marker has arrived; False while it has not."""
        if self._buffer.startswith(b".\r\n"):  # an empty message
            message, rest = b"", 3
        else:
            end = self._buffer.find(_END, max(0, self._scanned - len(_END)))
            if end < 0:
                self._scanned = len(self._buffer)
                return False
            message, rest = bytes(self._buffer[: end + 2]), end + len(_END)
        del self._buffer[:rest]
        self._in_data = False
        email_id = _email_id(message)
        delay = self._delay
        if self._jitter:
            delay *= random.uniform(1 - self._jitter, 1 + self._jitter)
        answer = self._refuse if self._fail.refuse(email_id) else self._accept
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, answer, email_id)
        else:
            answer(email_id)
        return True

    def _accept(self, email_id: str) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_QUEUED)
            self._log.accepted(email_id)

    def _refuse(self, email_id: str) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_TRY_LATER)


def _email_id(message: bytes) -> str:
    start = message.find(_ID_HEADER)
    if start < 0:
        return "-"
    start += len(_ID_HEADER)
    end = message.find(b"\r\n", start)
    return message[start:end].decode("ascii", "replace").strip() or "-"


async def serve(
    *,
    host: str,
    port: int,
    delay: float,
    jitter: float = 0.0,
    fail_share: float = 0.0,
    fail_every: int = 0,
    log_path: Path,
) -> None:
    """Serve until SIGTERM or SIGINT; print ``ready <port>`` once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with log_path.open("a", encoding="ascii") as stream:
        log = AcceptLog(stream)
        fail = FailOnce(fail_share, every=fail_every)
        server = await loop.create_server(
            lambda: _Session(delay=delay, jitter=jitter, log=log, fail=fail),
            host,
            port,
            backlog=4096,
        )
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _FLUSH_EVERY)
                log.flush()
        finally:
            server.close()
            log.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before the 250")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="each delay is drawn from delay * (1 ± jitter)"
    )
    parser.add_argument(
        "--fail-share", type=float, default=0.0, help="refuse this share of messages once (451)"
    )
    parser.add_argument(
        "--fail-every", type=int, default=0, help="refuse ids ending in a multiple of N once"
    )
    parser.add_argument("--log", type=Path, required=True, help="accepted messages go here")
    args = parser.parse_args(argv)
    coroutine = serve(
        host=args.host,
        port=args.port,
        delay=args.delay,
        jitter=args.jitter,
        fail_share=args.fail_share,
        fail_every=args.fail_every,
        log_path=args.log,
    )
    try:
        import uvloop  # the bench extra has it: less CPU per message than asyncio's loop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)
    sys.exit(0)


if __name__ == "__main__":
    main()
