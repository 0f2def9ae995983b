"""``run --processes N``: N service processes in one consumer group behind one HTTP port.

The supervisor starts each child as ``python -m messaging_service run`` with its index in the
environment, restarts one that exits (backoff 1 s doubling to 30 s, back to 1 s after a minute
of running), forwards SIGTERM/SIGINT as SIGTERM to every child and waits for each to drain and
commit. Children ask the kernel for SIGTERM when the supervisor dies (``child.py``), so none
outlives it. ``/metrics`` sums every child (``telemetry/shared_metrics.py``); ``/healthz`` and
``/readyz`` ask every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from messaging_service.child import ChildRole
from messaging_service.config import Settings
from messaging_service.telemetry.http import HttpServer
from messaging_service.telemetry.shared_metrics import (
    SupervisorCollector,
    aggregate_registry,
    forget_process,
)

log = structlog.get_logger(__name__)

_FIRST_BACKOFF = 1.0
_MAX_BACKOFF = 30.0
_HEALTHY_RUN = 60.0  # a child that ran this long starts its backoff again at 1 s
_PROBE_TIMEOUT = 2.0
_KILL_GRACE = 10.0  # beyond SHUTDOWN_TIMEOUT, before a child that does not exit is killed


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def process_count(setting: int | str) -> int:
    return usable_cpus() if setting == "auto" else int(setting)


def instance_base(settings: Settings) -> str:
    """The stable part of each child's group.instance.id: a name that survives restarts."""
    return (
        settings.kafka.group_instance_id
        or settings.runtime.service_instance_name
        or socket.gethostname()
    )


class ChildState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "restarting"
    STOPPING = "stopping"
    EXITED = "exited"


@dataclass(slots=True)
class _Child:
    index: int
    role: ChildRole
    state: ChildState = ChildState.STARTING
    pid: int | None = None
    port: int | None = None
    restarts: int = 0
    failures: int = 0
    exit_code: int | None = None
    started_at: float = field(default_factory=time.monotonic)

    def http_port(self) -> int | None:
        if self.port is None and self.state is ChildState.RUNNING:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.port = int(self.role.port_file.read_text(encoding="ascii"))
        return self.port


class Supervisor:
    def __init__(
        self, settings: Settings, processes: int, *, environ: Mapping[str, str], workdir: Path
    ) -> None:
        self._settings = settings
        self._environ = dict(environ)
        self._metrics_dir = workdir / "metrics"
        self._metrics_dir.mkdir()
        pid = os.getpid()
        self._children = [
            _Child(i, ChildRole(i, pid, workdir / f"child-{i}.port")) for i in range(processes)
        ]
        self._base = instance_base(settings)
        self.registry: CollectorRegistry = aggregate_registry(
            self._metrics_dir,
            SupervisorCollector(
                wanted=processes,
                running=lambda: sum(c.state is ChildState.RUNNING for c in self._children),
                restarts=lambda: [c.restarts for c in self._children],
            ),
        )

    async def run(self, stop: asyncio.Event) -> int:
        """Run every child until ``stop``; 0 if every child then exited 0."""
        http = self._settings.http
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT)) as client,
            HttpServer(self._app(client), host=http.host, port=http.port) as server,
        ):
            log.info(
                "supervisor_started",
                processes=len(self._children),
                http_port=server.port,
                group=self._settings.kafka.group_id,
                group_instance_base=self._base,
            )
            codes = await asyncio.gather(*(self._keep(child, stop) for child in self._children))
        failed = [i for i, code in enumerate(codes) if code != 0]
        log.info("supervisor_stopped", failed_children=failed)
        return 0 if not failed else 1

    async def _keep(self, child: _Child, stop: asyncio.Event) -> int:
        """Run one child, restarting it until ``stop``; its last exit code."""
        while True:
            process = await self._spawn(child)
            code = await _wait_or_stop(process, stop, self._settings.runtime.shutdown_timeout)
            self._exited(child, process.pid, code)
            if stop.is_set():
                return code
            delay = self._backoff(child)
            child.restarts += 1
            child.state = ChildState.BACKOFF
            log.warning(
                "service_process_exited",
                child=child.index,
                pid=process.pid,
                exit_code=code,
                restart_in=delay,
                restarts=child.restarts,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                child.state = ChildState.EXITED
                return 0
            log.info("service_process_restarting", child=child.index, restarts=child.restarts)

    async def _spawn(self, child: _Child) -> asyncio.subprocess.Process:
        child.role.port_file.unlink(missing_ok=True)
        child.port = None
        env = {
            **self._environ,
            **child.role.environment(self._metrics_dir),
            "SERVICE_PROCESSES": "1",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
        }
        if self._settings.runtime.service_static_membership:
            env["KAFKA_GROUP_INSTANCE_ID"] = f"{self._base}-{child.index}"
        else:
            env.pop("KAFKA_GROUP_INSTANCE_ID", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "messaging_service", "run", env=env, process_group=0
        )
        child.pid = process.pid
        child.state = ChildState.RUNNING
        child.started_at = time.monotonic()
        log.info("service_process_started", child=child.index, pid=process.pid)
        return process

    def _exited(self, child: _Child, pid: int, code: int) -> None:
        child.exit_code = code
        child.state = ChildState.EXITED
        child.port = None
        forget_process(self._metrics_dir, pid)

    def _backoff(self, child: _Child) -> float:
        if time.monotonic() - child.started_at >= _HEALTHY_RUN:
            child.failures = 0
        child.failures += 1
        return min(_MAX_BACKOFF, _FIRST_BACKOFF * 2.0 ** (child.failures - 1))

    def _app(self, client: aiohttp.ClientSession) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_: web.Request) -> web.Response:
            # A child in its restart backoff is being taken care of; one that does not answer
            # its /healthz (or answers 503) is stuck, and so is the whole.
            answers = await self._ask(client, "/healthz")
            ok = all(status in (200, None) for _, (status, _) in answers)
            return self._answer(answers, ok, ("ok", "stuck"))

        async def readyz(_: web.Request) -> web.Response:
            answers = await self._ask(client, "/readyz")
            ok = all(status == 200 for _, (status, _) in answers)
            return self._answer(answers, ok, ("ready", "not ready"))

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app

    def _answer(
        self,
        answers: list[tuple[_Child, tuple[int | None, object]]],
        ok: bool,
        words: tuple[str, str],
    ) -> web.Response:
        children = [
            {
                "child": child.index,
                "pid": child.pid,
                "state": child.state.value,
                "restarts": child.restarts,
                "status": status,
                "body": body,
            }
            for child, (status, body) in answers
        ]
        return web.json_response(
            {"status": words[0] if ok else words[1], "children": children},
            status=200 if ok else 503,
        )

    async def _ask(
        self, client: aiohttp.ClientSession, path: str
    ) -> list[tuple[_Child, tuple[int | None, object]]]:
        """Each child's (status, JSON body) for ``path``; status None while it is restarting.

        A child that is running but has not answered yet (still starting) or does not answer
        counts as 503.
        """
        results = await asyncio.gather(*(self._ask_one(client, c, path) for c in self._children))
        return list(zip(self._children, results, strict=True))

    @staticmethod
    async def _ask_one(
        client: aiohttp.ClientSession, child: _Child, path: str
    ) -> tuple[int | None, object]:
        if child.state is ChildState.BACKOFF:
            return None, None
        port = child.http_port()
        if port is None:
            return 503, {"status": "starting"}
        try:
            async with client.get(f"http://127.0.0.1:{port}{path}") as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 503, {"status": "no answer", "error": type(exc).__name__}


async def _wait_or_stop(
    process: asyncio.subprocess.Process, stop: asyncio.Event, shutdown_timeout: float
) -> int:
    """Wait for the child to exit; on ``stop``, SIGTERM it and wait for its drain."""
    exited = asyncio.ensure_future(process.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not exited.done():
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(shutdown_timeout + _KILL_GRACE):
                await asyncio.shield(exited)
        except TimeoutError:
            log.error("service_process_killed", pid=process.pid, reason="drain_too_long")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await exited


def run_supervisor(settings: Settings, processes: int) -> int:
    """Run the supervisor in the foreground until SIGTERM or SIGINT; its exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="messaging-service-"))
    try:
        return asyncio.run(_main(settings, processes, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _main(settings: Settings, processes: int, workdir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    supervisor = Supervisor(settings, processes, environ=os.environ, workdir=workdir)
    return await supervisor.run(stop)
