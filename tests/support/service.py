"""Running the real service against the test broker and relay: in-process or as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from messaging_service.app import Running, run_service
from messaging_service.config import Settings, load_settings
from support.kafka import Broker, Topics, free_port, group_timeouts, wait_for
from support.samples import sample_sum


def settings_for(
    broker: Broker,
    topics: Topics,
    smtp_port: int,
    *,
    workers: int = 4,
    buffer: int = 100,
    retry_delays: str = "0.2",
    max_retries: int = 3,
    shutdown_timeout: float = 15.0,
    commit_interval_ms: int = 200,
    max_in_flight: int | None = None,
    smtp_timeout: float = 5,
    runtime: Mapping[str, Any] | None = None,
    redis_url: str | None = None,
    email: Mapping[str, Any] | None = None,
    dkim: Mapping[str, Any] | None = None,
    events_topic: str = "",
    suppression: bool = True,
    kafka: Mapping[str, Any] | None = None,
    dedup: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings for one test: its own topics and group, the group timeouts ``broker`` takes.

    Outcome events are off unless a test gives its own ``events_topic``.
    """
    return load_settings(
        env_file=None,
        kafka={
            "bootstrap_servers": broker.bootstrap,
            "topic": topics.requests,
            "dlq_topic": topics.dlq,
            "events_topic": events_topic,
            "group_id": topics.group,
            "commit_interval_ms": commit_interval_ms,
            **group_timeouts(broker),
            **(kafka or {}),
        },
        smtp={"host": "127.0.0.1", "port": smtp_port, "timeout": smtp_timeout},
        email={
            "sender": "Shop <shop@example.com>",
            "worker_count": workers,
            "worker_buffer": buffer,
            "max_in_flight": max_in_flight or max(1000, workers + buffer),
            "retry_delays": retry_delays,
            "max_retries": max_retries,
            **(email or {}),
            "suppression": suppression,
            "suppression_key_prefix": f"{topics.group}:suppressed:",
        },
        http={"host": "127.0.0.1", "port": 0},
        runtime={"shutdown_timeout": shutdown_timeout, **(runtime or {})},
        dedup={"redis_url": redis_url, "key_prefix": f"{topics.group}:sent:", **(dedup or {})},
        dkim=dict(dkim or {}),
    )


def environment_for(settings: Settings, *, http_port: int) -> dict[str, str]:
    """The same settings as environment variables, for running ``messaging-service run``."""
    kafka, email = settings.kafka, settings.email
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_", "DEDUP_", "DKIM_"))
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_TOPIC": kafka.topic,
            "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
            "KAFKA_EVENTS_TOPIC": kafka.events_topic,
            "KAFKA_GROUP_ID": kafka.group_id,
            "KAFKA_COMMIT_INTERVAL_MS": str(kafka.commit_interval_ms),
            "KAFKA_SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "KAFKA_HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            "KAFKA_REBALANCE_TIMEOUT_MS": str(kafka.rebalance_timeout_ms),
            "KAFKA_REVOCATION_TIMEOUT_MS": str(kafka.revocation_timeout_ms),
            "SMTP_HOST": settings.smtp.host,
            "SMTP_PORT": str(settings.smtp.port),
            "SMTP_TIMEOUT": str(settings.smtp.timeout),
            "EMAIL_FROM": email.sender,
            "EMAIL_WORKER_COUNT": str(email.worker_count),
            "EMAIL_WORKER_BUFFER": str(email.worker_buffer),
            "EMAIL_MAX_IN_FLIGHT": str(email.max_in_flight),
            "EMAIL_MAX_RETRIES": str(email.max_retries),
            "EMAIL_RETRY_DELAYS": ",".join(str(d) for d in email.retry_delays),
            "EMAIL_SUPPRESSION": "on" if email.suppression else "off",
            "EMAIL_SUPPRESSION_TTL": str(email.suppression_ttl),
            "EMAIL_SUPPRESSION_KEY_PREFIX": email.suppression_key_prefix,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(http_port),
            "LOG_FORMAT": "json",
            "SHUTDOWN_TIMEOUT": str(settings.runtime.shutdown_timeout),
            "WATCHDOG_TIMEOUT": str(settings.runtime.watchdog_timeout),
            "DEDUP_KEY_PREFIX": settings.dedup.key_prefix,
            "DEDUP_CLAIM_TTL": str(settings.dedup.claim_ttl),
        }
    )
    if kafka.priority_topic is not None:
        env["KAFKA_PRIORITY_TOPIC"] = kafka.priority_topic
        env["EMAIL_PRIORITY_SHARE"] = str(email.priority_share)
    if settings.dedup.redis_url is not None:
        env["DEDUP_REDIS_URL"] = settings.dedup.redis_url.get_secret_value()
    return env


@dataclass
class InProcessService:
    settings: Settings
    running: Running
    stop: asyncio.Event
    task: asyncio.Task[bool]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` that carry ``labels`` (and any others, e.g. lane)."""
        return sample_sum(self.running.registry, name, **labels)

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.running.http_port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()

    async def shutdown(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a bound of its own is the point
        self.stop.set()
        async with asyncio.timeout(timeout):
            await self.task


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[InProcessService]:
    """Start the service in this event loop; yields once it has joined its group."""
    stop = asyncio.Event()
    started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_service(settings, stop, on_started=started.set_result))
    try:
        waiting: set[asyncio.Future[Any]] = {started, task}
        done, _ = await asyncio.wait(waiting, timeout=30, return_when="FIRST_COMPLETED")
        if task in done:
            task.result()  # raises the start-up error
        if started not in done:
            raise AssertionError("the service did not start within 30 s")
        service = InProcessService(settings, started.result(), stop, task)
        await wait_for(
            lambda: service.running.health.joined_group, 30, message="service joined its group"
        )
        yield service
    finally:
        stop.set()
        if not task.done():
            async with asyncio.timeout(60):
                await task


class ServiceProcess:
    """``python -m messaging_service run`` as a child process, logs captured to a file."""

    def __init__(
        self, settings: Settings, log_path: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.http_port = free_port()
        self._env = {**environment_for(settings, http_port=self.http_port), **(env or {})}
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "messaging_service", "run"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("not started")
        return self._process

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a bound of its own is the point
        async def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log_tail()}")
            try:
                status, body = await self.get("/readyz")
            except aiohttp.ClientError:
                return False
            return status == 200 and json.loads(body)["status"] == "ready"

        await wait_for(ready, timeout, interval=0.1, message="service ready")

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
        ):
            return response.status, await response.text()

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``/metrics`` as {(sample name, sorted labels): value}."""
        status, body = await self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }

    async def sample(self, name: str) -> float:
        """The first sample called ``name`` on ``/metrics`` (an unlabelled counter or gauge)."""
        _, text = await self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise AssertionError(f"{name} not exported")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 60.0) -> int:  # noqa: ASYNC109 - a bound of its own is the point
        await wait_for(lambda: self.process.poll() is not None, timeout, message="exit")
        return self.process.returncode

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line the process wrote."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found


def request_payload(id_: str, **fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "id": id_,
        "template": "welcome",
        "to": f"{id_}@example.com",
        "data": {"name": f"User {id_}"},
    }
    payload.update(fields)
    return json.dumps(payload).encode()


def headers_of(record: Any) -> Mapping[str, bytes]:
    return dict(record.headers)
