"""Our DKIM signatures checked by a second independent verifier: OpenDKIM, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from messaging_service.core.attachments import AttachmentPart
from messaging_service.core.contract import EmailRequest
from messaging_service.core.dkim import DkimSigner, PrivateKey, public_key_record
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.values import RenderedEmail
from support.filters import OPENDKIM, opendkim_verify

pytestmark = pytest.mark.filters

DOMAIN = "shop.example.com"
SELECTOR = "s2026"


def signed(key: PrivateKey) -> bytes:
    request = EmailRequest.model_validate(
        {
            "id": "odk-1",
            "to": "Bob <bob@example.com>",
            "cc": "carol@example.com",
            "subject": "Grüße  aus Wien",
            "text": "Hallo Bob,  hier   ist die Rechnung.\n",
            "html": '<p>Hallo  Bob <img src="cid:logo"></p>',
            "headers": {"X-Campaign": "spring", "List-Id": "<news.shop.example.com>"},
            "list_unsubscribe": {"url": "https://shop.example.com/u/1", "mailto": "u@example.com"},
        }
    )
    signer = DkimSigner(domain=DOMAIN, selector=SELECTOR, key=key)
    builder = MessageBuilder("Shop <no-reply@shop.example.com>", signer=signer)
    attachments = (
        AttachmentPart("Rechnung März.pdf", "application/pdf", bytes(range(256)) * 100),
        AttachmentPart("logo.png", "image/png", b"\x89PNG" * 50, "logo"),
    )
    rendered = RenderedEmail(str(request.subject), request.text, request.html)
    return builder.build(request, rendered, attachments).message


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_opendkim_verifies_our_signature_and_refuses_a_changed_message(
    kind: str, tmp_path: Path
) -> None:
    if OPENDKIM is None:
        reason = "opendkim not installed (scripts/fetch-filters installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    key: PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    message = signed(key)
    where = {"dns_name": f"{SELECTOR}._domainkey.{DOMAIN}", "record": public_key_record(key)}
    assert opendkim_verify(message, folder=tmp_path, **where) == "pass"
    changed = message.replace(b"Hallo Bob", b"Hallo Eve", 1)
    assert opendkim_verify(changed, folder=tmp_path, **where) == "fail"
