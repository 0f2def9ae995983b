"""Attachments, inline images, headers, unsubscribe, locales and DKIM through the running
service to a real SMTP server, the received bytes parsed back and verified."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from messaging_service.core.dkim import PrivateKey, public_key_record
from support.https_files import HttpsFiles
from support.kafka import Broker, Topics, produce, read_all
from support.service import headers_of, in_process, request_payload, settings_for
from support.smtp_server import TRY_LATER, SmtpTestServer

pytestmark = pytest.mark.integration

INVOICE = b"%PDF-1.4 invoice " + bytes(range(256)) * 64
TERMS = b"%PDF-1.4 terms " + bytes(range(255, -1, -1)) * 32
LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
DOMAIN = "shop.example.com"
SELECTOR = "s2026"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_file(folder: Path, key: PrivateKey) -> Path:
    path = folder / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[HttpsFiles]:
    async with HttpsFiles(tmp_path, {"terms.pdf": TERMS}) as server:
        yield server


def full_request(files: HttpsFiles) -> bytes:
    return request_payload(
        "full",
        locale="de-AT",
        template=None,
        subject="Ihre Rechnung",
        text="Hallo Ada,\n\nIhre Rechnung liegt bei.\n",
        html='<html><body><img src="cid:logo" alt="Shop"><p>Hallo Ada,</p></body></html>',
        attachments=[
            {"filename": "Rechnung März.pdf", "content": b64(INVOICE)},
            {"filename": "terms.pdf", "url": files.url("terms.pdf")},
            {"filename": "logo.png", "content": b64(LOGO), "content_id": "logo"},
        ],
        headers={"X-Campaign": "spring-sale", "List-Id": "Shop news <news.shop.example.com>"},
        list_unsubscribe={
            "url": "https://shop.example.com/u/123",
            "mailto": "unsubscribe@shop.example.com",
        },
        tags=["invoice"],
        metadata={"order_id": "A-1"},
    )


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
async def test_attachments_headers_and_signature_arrive_intact(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    files: HttpsFiles,
    tmp_path: Path,
    kind: str,
) -> None:
    key: PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    # The URL answers 503 once (a transient failure, retried), and the relay then answers
    # 451 once: the retry of the send must not fetch the URL again.
    files.unavailable["terms.pdf"] = 1
    relay.fail_data(TRY_LATER, email_id="full", times=1)
    await produce(
        broker.bootstrap,
        topics.requests,
        [
            full_request(files),
            request_payload("templated", locale="de-AT", tags=["welcome"]),
        ],
    )
    settings = settings_for(
        broker,
        topics,
        relay.port,
        retry_delays="0.1",
        email={
            "attachment_url_hosts": "127.0.0.1",
            "attachment_ca_file": files.ca_file,
        },
        dkim={
            "domain": DOMAIN,
            "selector": SELECTOR,
            "private_key_file": key_file(tmp_path, key),
        },
    )
    async with in_process(settings) as service:
        received = await relay.wait_for_messages(2, within=30)
        assert service.metric("email_retries_total") == 2
    assert files.hits["/terms.pdf"] == 2  # the 503, then once: not again for the 451 retry

    by_id = {message.email_id: message for message in received}
    full = by_id["full"]
    message = full.message
    for part in message.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert attachments["Rechnung März.pdf"].get_content() == INVOICE
    assert attachments["terms.pdf"].get_content() == TERMS
    assert attachments["terms.pdf"].get_content_type() == "application/pdf"
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    html, image = list(related.iter_parts())
    assert 'src="cid:logo"' in html.get_content()
    assert image["Content-ID"] == "<logo>"
    assert image.get_content() == LOGO
    assert message["X-Campaign"] == "spring-sale"
    assert message["List-Id"] == "Shop news <news.shop.example.com>"
    assert message["List-Unsubscribe"] == (
        "<https://shop.example.com/u/123>, <mailto:unsubscribe@shop.example.com>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert b"A-1" not in full.data  # metadata and tags are never sent
    assert b'invoice"' not in full.data

    record = public_key_record(key).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    for received_message in received:
        raw = received_message.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert dkimpy.verify(raw, dnsfunc=dns), received_message.email_id
    signature = str(message["DKIM-Signature"])
    assert "list-unsubscribe:list-unsubscribe-post" in signature.replace(" ", "").replace("\t", "")

    templated = by_id["templated"].message
    assert templated["Subject"] == "Willkommen, User templated!"


async def test_attachment_problems_are_dead_lettered_attachment_error(
    broker: Broker, topics: Topics, relay: SmtpTestServer, files: HttpsFiles
) -> None:
    originals: dict[str, dict[str, Any]] = {
        "blocked": {"attachments": [{"filename": "setup.exe", "content": b64(b"MZ")}]},
        "bad-base64": {"attachments": [{"filename": "a.pdf", "content": "%%%"}]},
        "host": {"attachments": [{"filename": "a.pdf", "url": "https://other.example.com/a"}]},
        "missing": {"attachments": [{"filename": "a.pdf", "url": files.url("gone.pdf")}]},
        "bad-header": {"headers": {"Subject": "injected"}},
    }
    await produce(
        broker.bootstrap,
        topics.requests,
        [request_payload(name, **fields) for name, fields in originals.items()],
        keys=[name.encode() for name in originals],
    )
    settings = settings_for(
        broker,
        topics,
        relay.port,
        email={"attachment_url_hosts": "127.0.0.1", "attachment_ca_file": files.ca_file},
    )
    async with in_process(settings) as service:
        letters = await read_all(broker.bootstrap, topics.dlq, expected=5, timeout=30)
        assert service.metric("email_dead_letters_total", reason="attachment_error") == 4
    reasons = {
        letter.key.decode(): headers_of(letter)["email-failure-reason"].decode()
        for letter in letters
    }
    assert reasons == {
        "blocked": "attachment_error",
        "bad-base64": "attachment_error",
        "host": "attachment_error",
        "missing": "attachment_error",
        "bad-header": "invalid_payload",
    }
    assert relay.messages == []
