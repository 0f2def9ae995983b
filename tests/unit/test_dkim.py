"""DKIM signatures checked by an independent verifier (dkimpy, with a DNS stub), both keys."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from messaging_service.core.attachments import AttachmentPart
from messaging_service.core.contract import EmailRequest
from messaging_service.core.dkim import (
    DkimKeyError,
    DkimSigner,
    PrivateKey,
    body_digest,
    load_private_key,
    public_key_record,
)
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.values import RenderedEmail

DOMAIN = "shop.example.com"
SELECTOR = "mail2026"


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


KEYS: dict[str, PrivateKey] = {"rsa": rsa_key(), "ed25519": ed25519.Ed25519PrivateKey.generate()}


def write_pem(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def dns_for(key: PrivateKey) -> Any:
    record = public_key_record(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return dnsfunc


def message(key: PrivateKey, **fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "id": "req-1",
        "to": "Bob <bob@example.com>",
        "cc": "carol@example.com",
        "subject": "Grüße  aus   Wien",
        "text": "Hi Bob,  two  spaces \t tab\n\n\n",
        "html": '<p>Hi  <img src="cid:logo"></p>',
        "list_unsubscribe": {"url": "https://shop.example.com/u/1", "mailto": "u@example.com"},
        "headers": {"X-Campaign": "spring   sale"},
    }
    payload.update(fields)
    request = EmailRequest.model_validate(payload)
    signer = DkimSigner(domain=DOMAIN, selector=SELECTOR, key=key)
    builder = MessageBuilder("Shop <no-reply@shop.example.com>", signer=signer)
    rendered = RenderedEmail(str(request.subject), request.text, request.html)
    logo = AttachmentPart("logo.png", "image/png", b"\x89PNG" * 100, "logo")
    pdf = AttachmentPart("Rechnung März.pdf", "application/pdf", bytes(range(256)) * 400)
    return builder.build(request, rendered, (logo, pdf)).message


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkimpy_verifies_our_signature(kind: str) -> None:
    key = KEYS[kind]
    signed = message(key)
    assert signed.startswith(b"DKIM-Signature:")
    assert dkimpy.verify(signed, dnsfunc=dns_for(key))
    head = signed.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_a_changed_message_fails_verification(kind: str) -> None:
    key = KEYS[kind]
    signed = message(key)
    assert not dkimpy.verify(signed.replace(b"bob@", b"eve@", 1), dnsfunc=dns_for(key))
    assert not dkimpy.verify(signed.replace(b"Hi Bob", b"Hi Eve", 1), dnsfunc=dns_for(key))


def test_signed_headers_include_the_required_set_even_when_absent() -> None:
    signed = message(KEYS["ed25519"], cc=[], list_unsubscribe=None)
    tags = dict(
        tag.strip().split("=", 1)
        for tag in signed.split(b"\r\n\r\n")[0].decode().split("DKIM-Signature:")[1].split(";")
        if "=" in tag
    )
    signed_names = {name.strip() for name in tags["h"].split(":")}
    assert {
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "list-unsubscribe",
        "list-unsubscribe-post",
    } <= signed_names
    assert tags["c"] == "relaxed/relaxed"
    assert tags["a"] == "ed25519-sha256"
    assert dkimpy.verify(signed, dnsfunc=dns_for(KEYS["ed25519"]))


def test_adding_an_absent_signed_header_breaks_the_signature() -> None:
    key = KEYS["rsa"]
    signed = message(key, cc=[])
    forged = signed.replace(b"\r\nSubject:", b"\r\nCc: eve@example.com\r\nSubject:", 1)
    assert not dkimpy.verify(forged, dnsfunc=dns_for(key))


def test_keys_load_and_bad_keys_are_refused_without_echoing_them(tmp_path: Path) -> None:
    assert isinstance(
        load_private_key(write_pem(tmp_path / "r.pem", KEYS["rsa"])), rsa.RSAPrivateKey
    )
    ed = load_private_key(write_pem(tmp_path / "e.pem", KEYS["ed25519"]))
    assert isinstance(ed, ed25519.Ed25519PrivateKey)
    with pytest.raises(DkimKeyError, match="1024 bits"):
        load_private_key(write_pem(tmp_path / "small.pem", rsa_key(1024)))
    with pytest.raises(DkimKeyError, match="RSA"):
        load_private_key(write_pem(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(DkimKeyError, match="cannot be read"):
        load_private_key(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    secret = base64.b64encode(b"very secret bytes" * 4).decode()
    garbage.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimKeyError) as caught:
        load_private_key(garbage)
    assert secret[:20] not in str(caught.value)


def test_signer_repr_has_no_key() -> None:
    signer = DkimSigner(domain=DOMAIN, selector=SELECTOR, key=KEYS["rsa"])
    assert "PRIVATE" not in repr(signer)
    assert DOMAIN in repr(signer)


@given(
    st.lists(st.text(alphabet=" \tab=-", max_size=12).map(str.encode), max_size=8).map(
        lambda lines: b"".join(line + b"\r\n" for line in lines)
    )
)
def test_body_hash_matches_dkimpy_relaxed_canonicalisation(body: bytes) -> None:
    """Our bodies always end with CRLF, which is where the RFC's rules are unambiguous."""
    expected = hashlib.sha256(Relaxed.canonicalize_body(body)).digest()
    assert body_digest(body) == expected
