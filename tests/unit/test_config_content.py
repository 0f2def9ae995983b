"""Settings for attachments and DKIM: defaults, parsing, and keys that stop the start."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from messaging_service.app import dkim_signer
from messaging_service.config import ConfigError, load_settings


def pem(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_attachment_defaults_refuse_urls() -> None:
    email = load_settings(env_file=None).email
    assert email.max_attachment_bytes == 10 * 1024 * 1024
    assert email.attachment_url_hosts == ()
    assert email.attachment_ca_file is None
    assert email.attachment_fetch_timeout == 10


def test_attachment_hosts_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_ATTACHMENT_URL_HOSTS", "Files.Example.com, cdn.example.com")
    hosts = load_settings(env_file=None).email.attachment_url_hosts
    assert hosts == ("files.example.com", "cdn.example.com")


def test_dkim_is_off_by_default() -> None:
    assert dkim_signer(load_settings(env_file=None).dkim) is None


@pytest.mark.parametrize(
    "key", [rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()]
)
def test_dkim_on_with_a_good_key(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> None:
    monkeypatch.setenv("DKIM_DOMAIN", "shop.example.com")
    monkeypatch.setenv("DKIM_SELECTOR", "s1")
    monkeypatch.setenv("DKIM_PRIVATE_KEY_FILE", str(pem(tmp_path / "k.pem", key)))
    monkeypatch.setenv("DKIM_HEADERS", "X-Campaign")
    assert dkim_signer(load_settings(env_file=None).dkim) is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key", "DKIM_PRIVATE_KEY_FILE: .*not an unencrypted PEM private key"),
        (None, "DKIM_PRIVATE_KEY_FILE: .*1024 bits"),
    ],
)
def test_a_key_that_does_not_load_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "k.pem"
    if content is None:
        pem(path, rsa.generate_private_key(65537, 1024))
    else:
        path.write_bytes(content)
    monkeypatch.setenv("DKIM_DOMAIN", "shop.example.com")
    monkeypatch.setenv("DKIM_SELECTOR", "s1")
    monkeypatch.setenv("DKIM_PRIVATE_KEY_FILE", str(path))
    with pytest.raises(ConfigError, match=message):
        load_settings(env_file=None)


def test_dkim_needs_all_three(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKIM_DOMAIN", "shop.example.com")
    with pytest.raises(ConfigError, match="set all three"):
        load_settings(env_file=None)
