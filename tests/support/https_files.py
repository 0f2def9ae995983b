"""A local HTTPS file server (aiohttp, a trustme CA) for attachment URL tests: 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from types import TracebackType

import trustme
from aiohttp import web


class HttpsFiles:
    """Serves ``files`` at ``/NAME``, plus scripted answers; the CA's PEM is at ``ca_file``.

    ``/status/CODE`` answers CODE, ``/hang`` never answers, ``/redirect?to=URL`` answers 302,
    ``/stream/N`` streams N bytes without a Content-Length. ``hits`` counts requests by path.
    """

    def __init__(self, folder: Path, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.unavailable: dict[str, int] = {}
        """File name -> how many more requests for it answer 503 before it is served."""
        self.hits: dict[str, int] = {}
        self.ca = trustme.CA()
        self.ca_file = folder / "files-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._runner: web.AppRunner | None = None
        self._never = asyncio.Event()
        self.port = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/{path.lstrip('/')}"

    async def __aenter__(self) -> HttpsFiles:
        app = web.Application()
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/hang", self._hang)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/stream/{size}", self._stream)
        app.router.add_get("/{name}", self._file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._never.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        name = request.match_info["name"]
        if self.unavailable.get(name, 0) > 0:
            self.unavailable[name] -= 1
            raise web.HTTPServiceUnavailable()
        data = self.files.get(name)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        return web.Response(status=int(request.match_info["code"]), text="scripted")

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        await self._never.wait()
        return web.Response(text="late")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        raise web.HTTPFound(request.query["to"])

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        remaining = int(request.match_info["size"])
        while remaining > 0:
            step = min(remaining, 16_384)
            await response.write(b"s" * step)
            remaining -= step
        await response.write_eof()
        return response
