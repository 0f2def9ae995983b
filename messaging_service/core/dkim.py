"""DKIM signatures (RFC 6376, relaxed/relaxed) with RSA-SHA256 or Ed25519-SHA256 (RFC 8463).

Pure: the key is loaded once at start; ``sign`` canonicalises the message we built ourselves
(so the parsing can stay lean) and signs with ``cryptography``, a fraction of a millisecond.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

MIN_RSA_BITS = 2048
# Signed whether present or not: a header listed but absent may not be added later (RFC 6376
# 5.4); Gmail shows one-click unsubscribe only when both List-Unsubscribe headers are signed.
REQUIRED_HEADERS = (
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
)
DEFAULT_HEADERS = (*REQUIRED_HEADERS, "reply-to", "x-email-id")

_FIELD_END = re.compile(rb"\r\n(?![ \t])")
_WSP_RUN = re.compile(rb"[ \t]+")
_LINE = 76

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(ValueError):
    """The private key cannot be used; the message never contains key material."""


def load_private_key(path: Path) -> PrivateKey:
    """An RSA (at least 2048 bits) or Ed25519 private key from a PEM file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The library's message can quote parts of the file: say only what kind of problem.
        raise DkimKeyError(
            f"{path} is not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"{path} is an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DkimKeyError(f"{path} is a {type(key).__name__}; use RSA (>= 2048 bits) or Ed25519")


def public_key_record(key: PrivateKey) -> str:
    """The DNS TXT record to publish at SELECTOR._domainkey.DOMAIN for ``key``."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


class DkimSigner:
    """Signs complete messages (CRLF line ends) for one domain and selector."""

    def __init__(
        self,
        *,
        domain: str,
        selector: str,
        key: PrivateKey,
        headers: Sequence[str] = DEFAULT_HEADERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._algorithm = (
            "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else ("rsa-sha256")
        )
        names = [name.strip().lower() for name in headers if name.strip()]
        names += [name for name in REQUIRED_HEADERS if name not in names]
        self._headers = tuple(dict.fromkeys(names))
        self._prefix = f"v=1; a={self._algorithm}; c=relaxed/relaxed; d={domain}; s={selector};"
        self._clock = clock

    def __repr__(self) -> str:  # never the key
        return f"DkimSigner({self._prefix!r})"

    def sign(self, message: bytes) -> bytes:
        """The ``DKIM-Signature:`` header field, CRLF-terminated, to put before ``message``."""
        split = message.find(b"\r\n\r\n")
        if split == -1:
            raise ValueError("a message needs a blank line between header and body")
        fields = _fields(message[: split + 2])
        body_hash = base64.b64encode(body_digest(message[split + 4 :]))
        signed = [name for name in self._headers if name in fields] + [
            name for name in self._headers if name not in fields
        ]
        tags = [
            *self._prefix.split(" "),
            f"t={int(self._clock())};",
            "h=" + ":".join(signed) + ";",
            "bh=" + body_hash.decode("ascii") + ";",
            "b=",
        ]
        unsigned = _fold(tags)
        data = (
            b"".join(canonical_header(name, fields[name]) for name in signed if name in fields)
            + canonical_header("dkim-signature", unsigned.encode("ascii"))[:-2]
        )
        signature = base64.b64encode(self._signature(data)).decode("ascii")
        header = "DKIM-Signature:" + unsigned
        column = len(header) - header.rfind("\n") - 1
        return (header + _fold_value(signature, column) + "\r\n").encode("ascii")

    def _signature(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            # RFC 8463: Ed25519 signs the SHA-256 hash of the data, not the data itself.
            return self._key.sign(hashlib.sha256(data).digest())
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _fields(head: bytes) -> dict[str, bytes]:
    """Lower-case name -> raw value (after the colon, folding kept) of each header field.

    The bottom-most occurrence wins, as verifiers pick them (ours occur once each).
    """
    fields: dict[str, bytes] = {}
    for field in _FIELD_END.split(head[:-2]):
        name, _, value = field.partition(b":")
        fields[name.decode("ascii").strip().lower()] = value
    return fields


def canonical_header(name: str, value: bytes) -> bytes:
    """RFC 6376 3.4.2 relaxed: lower-case name, unfolded, runs of WSP as one space, trimmed."""
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.encode("ascii") + b":" + value + b"\r\n"


def body_digest(body: bytes) -> bytes:
    """SHA-256 of the relaxed canonical body (RFC 6376 3.4.4).

    Bytes methods rather than regular expressions, which step through a 100 KiB attachment a
    character at a time; and only the part up to the line of the last space is rewritten:
    what follows (the base64 of the last attachments) has no whitespace to canonicalise.
    """
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    last = body.rfind(b" ")
    if last != -1:
        cut = body.find(b"\r\n", last)
        cut = len(body) if cut == -1 else cut + 2
        head = body[:cut]
        while b"  " in head:
            head = head.replace(b"  ", b" ")
        head = head.replace(b" \r\n", b"\r\n")
        if head.endswith(b" "):
            head = head[:-1]
        body = head + body[cut:] if cut < len(body) else head
    end = len(body)
    while end and body[end - 1] in (10, 13):  # empty lines at the end are ignored
        end -= 1
    digest = hashlib.sha256(memoryview(body)[:end])
    if end:
        digest.update(b"\r\n")
    return digest.digest()


def _fold(tags: list[str]) -> str:
    """The tags after ``DKIM-Signature:``, folded between tags (and between the names of
    ``h=``, where the grammar allows folding whitespace) to keep lines short."""
    tokens: list[tuple[str, str]] = []
    for tag in tags:
        if tag.startswith("h="):
            names = tag.split(":")
            tokens.append((" ", names[0] + ":"))
            tokens += [("", name + ":") for name in names[1:-1]]
            tokens.append(("", names[-1]))
        else:
            tokens.append((" ", tag))
    out: list[str] = []
    width = len("DKIM-Signature:")
    for glue, text in tokens:
        if width + len(glue) + len(text) > _LINE and out:
            out.append("\r\n ")
            width = 1
            glue = ""
        out.append(glue + text)
        width += len(glue) + len(text)
    return "".join(out)


def _fold_value(value: str, column: int) -> str:
    """``value`` continued from ``column``, broken into lines with folding whitespace.

    Folding whitespace may precede a tag value, so a value that would start near the end of
    a line starts on the next one.
    """
    lead = ""
    if column > _LINE - 16:
        lead, column = "\r\n ", 1
    first = _LINE - column
    pieces = [value[:first]]
    pieces += [value[i : i + _LINE - 1] for i in range(first, len(value), _LINE - 1)]
    return lead + "\r\n ".join(piece for piece in pieces if piece)
