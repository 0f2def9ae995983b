"""Adapter fetching attachment URLs over HTTPS with aiohttp: bounded in time, size and hosts.

Translates every outcome once: a refusal (4xx, a redirect to another host, too big, a
certificate that does not verify) is AttachmentError, a failure that may pass (5xx, 408, 429,
a timeout, no connection) is AttachmentUnavailableError.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from messaging_service.core.attachments import check_url
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.errors import AttachmentError, AttachmentUnavailableError
from messaging_service.tls import tls_client_context

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Client errors that say "not now" rather than "never".
_TRANSIENT_4XX = frozenset({408, 429})
_CHUNK = 65_536


class HttpsAttachmentFetcher(ClosedOnExit):
    """Fetches from the allowed hosts only; one session, its connections reused."""

    def __init__(
        self, *, hosts: tuple[str, ...], ca_file: Path | None = None, timeout: float = 10.0
    ) -> None:
        self._hosts = hosts
        self._ca_file = ca_file
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpsAttachmentFetcher:
        connector = aiohttp.TCPConnector(ssl=tls_client_context(self._ca_file), limit=20)
        # No cookies, no proxy from the environment: each fetch stands alone.
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
        )
        return self

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        """The body of ``url``, following redirects on the same host, within the timeout."""
        if self._session is None:
            raise AttachmentUnavailableError("the attachment fetcher is closed")
        host = urlsplit(url).hostname
        try:
            async with asyncio.timeout(self._timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    check_url(url, self._hosts)
                    body, location = await self._get(self._session, url, max_bytes)
                    if location is None:
                        assert body is not None
                        return body
                    target = urljoin(url, location)
                    if urlsplit(target).hostname != host or not target.startswith("https://"):
                        raise AttachmentError(f"{url} redirects to another host: refused")
                    url = target
        except TimeoutError as exc:
            raise AttachmentUnavailableError(
                f"{url}: no answer within {self._timeout:g} s (EMAIL_ATTACHMENT_FETCH_TIMEOUT)"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise AttachmentError(f"{url}: TLS failed: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise AttachmentUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise AttachmentError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _get(
        self, session: aiohttp.ClientSession, url: str, max_bytes: int
    ) -> tuple[bytes | None, str | None]:
        """(body, None), or (None, Location) for a redirect."""
        async with session.get(url, allow_redirects=False) as response:
            status = response.status
            if status in _REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise AttachmentError(f"{url}: {status} without a Location")
                return None, location
            if status >= 500 or status in _TRANSIENT_4XX:
                raise AttachmentUnavailableError(f"{url}: HTTP {status}")
            if status != 200:
                raise AttachmentError(f"{url}: HTTP {status}")
            length = response.content_length
            if length is not None and length > max_bytes:
                raise _too_big(url, max_bytes)
            chunks = []
            size = 0
            async for chunk in response.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_big(url, max_bytes)
                chunks.append(chunk)
            return b"".join(chunks), None


def _too_big(url: str, max_bytes: int) -> AttachmentError:
    return AttachmentError(
        f"{url}: larger than the {max_bytes} bytes left of EMAIL_MAX_ATTACHMENT_BYTES"
    )
