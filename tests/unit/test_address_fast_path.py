"""The fast path for plain addresses answers exactly what email_validator answers."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from messaging_service.core.addresses import parse_address

_CASES = [
    "bob@example.com",
    "Bob.Smith+tag@Example.COM",
    "customer123@example.com",
    "o'brien@example.co.uk",
    "a!#$%&'*+/=?^_`{|}~-z@example.com",
    "postmaster@example.com",
    "Abuse@example.com",
    "bob..smith@example.com",
    ".bob@example.com",
    "bob.@example.com",
    '"quoted"@example.com',
    "bob@localhost",
    "bob@example",
    "bob@example.invalid",
    "bob@-example.com",
    "bob@example..com",
    "bob@ex ample.com",
    "bob@bücher.example.com",
    "bøb@example.com",
    "@example.com",
    "bob@",
    "bob@@example.com",
    "a" * 64 + "@example.com",
    "a" * 65 + "@example.com",
    "b@" + ".".join(["d" * 60] * 4) + ".com",
    "b" * 60 + "@" + ".".join(["d" * 60] * 3) + ".com",
    "bob@[127.0.0.1]",
    "bob@xn--bcher-kva.example.com",
]


def _library(text: str) -> str | None:
    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return checked.ascii_email or checked.normalized


def _ours(text: str) -> str | None:
    try:
        return parse_address(text).addr_spec
    except ValueError:
        return None


@pytest.mark.parametrize("text", _CASES)
def test_parse_address_agrees_with_email_validator(text: str) -> None:
    assert _ours(text) == _library(text)


@pytest.mark.parametrize("text", _CASES)
def test_agrees_again_once_the_domain_is_remembered(text: str) -> None:
    _ours(text)
    assert _ours(text) == _library(text)
