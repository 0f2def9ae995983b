"""Parsing and validating one email address, optionally with a display name."""

from __future__ import annotations

from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

_FORBIDDEN = {"\r": "a carriage return", "\n": "a line feed", "\x00": "a NUL character"}


@dataclass(frozen=True, slots=True)
class Address:
    """A validated mailbox: ``addr_spec`` is ASCII and safe to put on the SMTP envelope."""

    addr_spec: str
    display_name: str = ""

    @property
    def domain(self) -> str:
        return self.addr_spec.rpartition("@")[2]


def parse_address(value: str, *, allow_special_use: bool = False) -> Address:
    """Parse ``bob@example.com`` or ``Bob <bob@example.com>``; raise ValueError with a reason.

    ``allow_special_use`` admits domains such as ``localhost`` (for the configured sender of a
    development setup); recipients at reserved domains are refused.
    """
    for char, name in _FORBIDDEN.items():
        if char in value:
            raise ValueError(f"address contains {name}")
    text = value.strip()
    display = ""
    if text.endswith(">") and "<" in text:
        cut = text.rindex("<")
        display = _unquote(text[:cut].strip())
        text = text[cut + 1 : -1].strip()
    if allow_special_use:
        return Address(addr_spec=_check_loose(text), display_name=display)
    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{text!r} is not a valid address: {exc}") from exc
    return Address(addr_spec=checked.ascii_email or checked.normalized, display_name=display)


def _check_loose(text: str) -> str:
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or c in "<>,;" for c in text):
        raise ValueError(f"{text!r} is not a valid address")
    if not text.isascii():
        raise ValueError(f"{text!r} must be ASCII")
    return text


def _unquote(display: str) -> str:
    if len(display) >= 2 and display[0] == display[-1] == '"':
        display = display[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return display


def normalise_domains(domains: tuple[str, ...]) -> tuple[str, ...]:
    """Lower-case ASCII (IDNA) domains without a leading '@' or '.' or a trailing '.'."""
    cleaned = []
    for domain in domains:
        name = domain.strip().lstrip("@").strip(".").lower()
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{domain!r} is not a domain name") from exc
        if not name or any(c.isspace() or c in "@,;<>" for c in name):
            raise ValueError(f"{domain!r} is not a domain name (e.g. example.com)")
        cleaned.append(name)
    return tuple(dict.fromkeys(cleaned))
