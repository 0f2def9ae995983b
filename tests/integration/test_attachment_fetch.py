"""Attachment URLs fetched over HTTPS from a local server: hosts, redirects, sizes, failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from messaging_service.adapters.attachment_fetch import HttpsAttachmentFetcher
from messaging_service.errors import AttachmentError, AttachmentUnavailableError
from support.https_files import HttpsFiles

pytestmark = pytest.mark.integration

TERMS = b"%PDF-1.4 terms " * 1000


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[HttpsFiles]:
    async with HttpsFiles(tmp_path, {"terms.pdf": TERMS}) as server:
        yield server


@pytest.fixture
async def fetcher(files: HttpsFiles) -> AsyncIterator[HttpsAttachmentFetcher]:
    async with HttpsAttachmentFetcher(
        hosts=("127.0.0.1",), ca_file=files.ca_file, timeout=0.5
    ) as subject:
        yield subject


async def test_fetches_a_file(files: HttpsFiles, fetcher: HttpsAttachmentFetcher) -> None:
    assert await fetcher.fetch(files.url("terms.pdf"), max_bytes=1 << 20) == TERMS


async def test_redirect_on_the_same_host_is_followed(
    files: HttpsFiles, fetcher: HttpsAttachmentFetcher
) -> None:
    url = files.url("redirect?to=/terms.pdf")
    assert await fetcher.fetch(url, max_bytes=1 << 20) == TERMS


async def test_redirect_to_another_host_is_refused(
    files: HttpsFiles, fetcher: HttpsAttachmentFetcher
) -> None:
    url = files.url(f"redirect?to={files.url('terms.pdf', host='localhost')}")
    with pytest.raises(AttachmentError, match="another host"):
        await fetcher.fetch(url, max_bytes=1 << 20)
    assert files.hits.get("/terms.pdf") is None


@pytest.mark.parametrize("code", [400, 403, 404, 410])
async def test_4xx_is_an_attachment_error(
    files: HttpsFiles, fetcher: HttpsAttachmentFetcher, code: int
) -> None:
    with pytest.raises(AttachmentError, match=f"HTTP {code}"):
        await fetcher.fetch(files.url(f"status/{code}"), max_bytes=1 << 20)


@pytest.mark.parametrize("code", [500, 502, 503, 429])
async def test_5xx_is_transient(
    files: HttpsFiles, fetcher: HttpsAttachmentFetcher, code: int
) -> None:
    with pytest.raises(AttachmentUnavailableError, match=f"HTTP {code}"):
        await fetcher.fetch(files.url(f"status/{code}"), max_bytes=1 << 20)


async def test_no_answer_within_the_timeout_is_transient(
    files: HttpsFiles, fetcher: HttpsAttachmentFetcher
) -> None:
    with pytest.raises(AttachmentUnavailableError, match="EMAIL_ATTACHMENT_FETCH_TIMEOUT"):
        await fetcher.fetch(files.url("hang"), max_bytes=1 << 20)


async def test_size_is_capped_by_content_length_and_while_streaming(
    files: HttpsFiles, fetcher: HttpsAttachmentFetcher
) -> None:
    with pytest.raises(AttachmentError, match="EMAIL_MAX_ATTACHMENT_BYTES"):
        await fetcher.fetch(files.url("terms.pdf"), max_bytes=len(TERMS) - 1)
    with pytest.raises(AttachmentError, match="EMAIL_MAX_ATTACHMENT_BYTES"):
        await fetcher.fetch(files.url("stream/200000"), max_bytes=100_000)
    assert len(await fetcher.fetch(files.url("stream/50000"), max_bytes=100_000)) == 50_000


async def test_host_not_allowed_is_refused_without_a_request(files: HttpsFiles) -> None:
    async with HttpsAttachmentFetcher(hosts=("files.example.com",), ca_file=files.ca_file) as other:
        with pytest.raises(AttachmentError, match="not in EMAIL_ATTACHMENT_URL_HOSTS"):
            await other.fetch(files.url("terms.pdf"), max_bytes=1 << 20)
    assert files.hits == {}


async def test_a_certificate_from_another_ca_is_refused(files: HttpsFiles, tmp_path: Path) -> None:
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    async with HttpsAttachmentFetcher(hosts=("127.0.0.1",), ca_file=other_ca) as untrusting:
        with pytest.raises(AttachmentError, match="TLS"):
            await untrusting.fetch(files.url("terms.pdf"), max_bytes=1 << 20)
