"""Masking secrets in text that is shown or logged (settings, URLs)."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/@:\s]*:)[^/@\s]*(?=@)")


def redact_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` masked."""
    return _URL_PASSWORD.sub(lambda match: match.group("head") + "**********", text)
