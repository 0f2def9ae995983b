"""A real redis-server (Debian's build, from scripts/fetch-tools) on a free port, for tests.

with RedisServer(tmp_path) as redis:                 # or password="...", persistent=True
    url = redis.url
    redis.stop(); redis.start()                      # outage; same port again
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from messaging_service.dev.process import ProcessExitedError, ProcessNotReadyError, ServerProcess
from support.kafka import free_port
from support.tools import redis_server

_START_TIMEOUT = 30.0


class RedisServer:
    """redis-server in ``directory``; ``stop``/``start`` keep the port (and the directory).

    Without persistence (the default) a restart forgets every key. ``persistent=True`` keeps
    Redis's own default snapshotting, as the compose stack's Redis does: ``stop()`` (SIGTERM)
    writes ``dump.rdb`` in ``directory`` and the next ``start()`` loads it.
    """

    def __init__(
        self, directory: Path, *, password: str | None = None, persistent: bool = False
    ) -> None:
        self.directory = directory
        self.password = password
        self.persistent = persistent
        self.port = free_port()
        self._program = redis_server()
        # SIGTERM: Redis writes its snapshot (with persistence) before it exits.
        self._process = ServerProcess(stop_signal=signal.SIGTERM, stop_timeout=30)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self._process.started:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            str(self._program),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "3600 1 300 100 60 10000" if self.persistent else "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self._process.start(command)  # its output goes to its --logfile
        self._wait_listening()

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_listening(self) -> None:
        try:
            self._process.wait_ready(self._answers_ping, timeout=_START_TIMEOUT)
        except ProcessExitedError:
            raise AssertionError(f"redis-server exited at start:\n{self.log_tail()}") from None
        except ProcessNotReadyError:
            raise AssertionError(f"redis-server not listening within {_START_TIMEOUT} s") from None

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))
