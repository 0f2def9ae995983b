"""The operational HTTP endpoints: /metrics, /healthz, /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.service.health import Health


def build_app(
    registry: CollectorRegistry, health: Health, *, live: Callable[[], bool]
) -> web.Application:
    """``live`` answers whether the process can still make progress (for /healthz)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop is running.
        alive = live()
        uptime = round(time.monotonic() - health.started_at, 1)
        return web.json_response(
            {"status": "ok" if alive else "stuck", "uptime_seconds": uptime},
            status=200 if alive else 503,
        )

    async def readyz(_: web.Request) -> web.Response:
        checks = health.readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer(ClosedOnExit):
    """Serves an aiohttp application; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self._host = host
        self._requested_port = port
        self.port = port
        self._started = False

    async def __aenter__(self) -> HttpServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        self._started = True
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._runner.cleanup()
