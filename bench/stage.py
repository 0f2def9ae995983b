"""One benchmark run's stage: its topics, the delay sink and the services started against them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from support.kafka import create_topic

from .service import ServiceConfig, ServiceProcess
from .sinks import DelaySink


class Stage:
    """Topics named after ``run_id``, a delay sink, and the service processes sent to it.

    ``close`` kills every service still running (nothing is drained) and stops the sink.
    """

    def __init__(
        self,
        bootstrap: str,
        work_dir: Path,
        run_id: str,
        *,
        sink: DelaySink,
        workers: int,
        env: Mapping[str, str] | None = None,
        label: str = "run",
    ) -> None:
        self.bootstrap = bootstrap
        self.work_dir = work_dir
        self.run_id = run_id
        self.sink = sink
        self.label = label
        self.topic = f"{run_id}-requests"
        self.config = ServiceConfig(
            bootstrap=bootstrap,
            topic=self.topic,
            dlq_topic=f"{run_id}-dlq",
            group=f"{run_id}-group",
            smtp_port=sink.port,
            workers=workers,
            extra_env=tuple((env or {}).items()),
        )
        self.services: list[ServiceProcess] = []

    async def create_topics(self, partitions: int, *single: str) -> None:
        """The requests topic with ``partitions``; ``single`` topics and the DLQ with one."""
        await create_topic(self.bootstrap, self.topic, partitions)
        for name in (*single, self.config.dlq_topic):
            await create_topic(self.bootstrap, name, 1)

    def start(self) -> ServiceProcess:
        service = ServiceProcess(self.config, self.work_dir)
        self.services.append(service)
        return service

    async def until(
        self, what: str, check: Callable[[], bool], *, limit: float, alive: ServiceProcess
    ) -> None:
        """Until ``check`` holds; raises if ``alive`` exits or ``limit`` seconds pass."""
        deadline = time.monotonic() + limit
        while not check():
            alive.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: {what} not reached within {limit:.0f} s")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        for service in self.services:
            service.kill()
        self.sink.stop()
