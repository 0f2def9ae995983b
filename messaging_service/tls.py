"""TLS client contexts for every connection the service makes (Kafka, SMTP, attachment URLs)."""

from __future__ import annotations

import ssl
from pathlib import Path


def tls_client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name.

    Trusts ``ca_file`` alone when given (a private CA), else the system's CAs. Raises
    ValueError saying why a CA file cannot be used.
    """
    try:
        return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except FileNotFoundError as exc:
        raise ValueError(f"{ca_file} does not exist") from exc
    except OSError as exc:  # unreadable; ssl.SSLError (not PEM certificates) is an OSError too
        raise ValueError(f"{ca_file} is not a readable PEM CA bundle: {exc}") from exc
